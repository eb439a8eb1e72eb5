// Scheduler policy without a model: the token budget, running-first order, chunking, priority
// admission, preemption order (lowest priority, then newest) and static batches.
import assert from "node:assert/strict";
import { BlockPool } from "../src/engine/block_pool.ts";
import { KvCacheManager } from "../src/engine/kv_cache_manager.ts";
import { EngineRequest, type RequestParams } from "../src/engine/request.ts";
import { Scheduler, type SchedulerConfig, type SchedulerOutput } from "../src/engine/scheduler.ts";
import { GREEDY } from "../src/sampling.ts";
import type { TextTokenizer } from "../src/tokenizer/tokenizer.ts";

const tokenizer = {
  eosIds: [],
  tokenBytes: () => new Uint8Array([120]),
  stripLeadingSpace: false,
} as unknown as TextTokenizer;

let arrivals = 0;
function request(
  id: string,
  promptLen: number,
  params: Partial<RequestParams> = {},
): EngineRequest {
  return new EngineRequest(
    { id, submissionId: id, index: 0, arrival: arrivals++ },
    Array.from({ length: promptLen }, (_, i) => i + 1),
    { maxTokens: 8, sampling: GREEDY, ...params },
    tokenizer,
  );
}

function setup(numBlocks: number, config: Partial<SchedulerConfig> = {}) {
  const kv = new KvCacheManager(new BlockPool(numBlocks, { enablePrefixCaching: false }), 4);
  const scheduler = new Scheduler(
    { maxNumBatchedTokens: 16, maxNumSeqs: 8, maxModelLen: 64, ...config },
    kv,
  );
  return { kv, scheduler };
}

/** Commits a step and appends one sampled token to every request that sampled. */
function finishStep(scheduler: Scheduler, out: SchedulerOutput): void {
  scheduler.commit(out);
  for (const s of out.scheduled) {
    if (s.sample) scheduler.runningRequest(s.requestId).appendToken(7);
  }
}

const summary = (out: SchedulerOutput) =>
  out.scheduled.map((s) => `${s.requestId}:${s.start}+${s.numNewTokens}${s.sample ? "*" : ""}`);

Deno.test("the budget is shared: running decodes first, then waiting prompts in chunks", () => {
  const { scheduler } = setup(64);
  const a = request("a", 10);
  const b = request("b", 30);
  scheduler.add(a);
  scheduler.add(b);
  let out = scheduler.schedule();
  assert.deepEqual(summary(out), ["a:0+10*", "b:0+6"]);
  finishStep(scheduler, out);
  out = scheduler.schedule();
  // a decodes one token; b's prompt continues with the rest of the budget.
  assert.deepEqual(summary(out), ["a:10+1*", "b:6+15"]);
  finishStep(scheduler, out);
  out = scheduler.schedule();
  assert.deepEqual(summary(out), ["a:11+1*", "b:21+9*"]);
});

Deno.test("priority policy admits the lowest value first, FCFS among equals", () => {
  const { scheduler } = setup(64, { policy: "priority", maxNumSeqs: 1 });
  scheduler.add(request("late-low", 4, { priority: 5 }));
  scheduler.add(request("urgent", 4, { priority: -1 }));
  scheduler.add(request("normal", 4));
  assert.deepEqual(summary(scheduler.schedule()), ["urgent:0+4*"]);
});

Deno.test("out of blocks, the lowest-priority then newest request is preempted and requeued", () => {
  const { kv, scheduler } = setup(8, { maxNumBatchedTokens: 32 }); // 7 usable blocks of 4 tokens
  const old = request("old", 6, { priority: 0 });
  const vip = request("vip", 6, { priority: -5 });
  const young = request("young", 6, { priority: 0 });
  for (const r of [old, vip, young]) scheduler.add(r);
  let out = scheduler.schedule();
  assert.deepEqual(summary(out), ["old:0+6*", "vip:0+6*", "young:0+6*"]);
  finishStep(scheduler, out);
  // Positions 6 and 7 still fit each request's second block.
  for (let position = 6; position < 8; position++) {
    out = scheduler.schedule();
    assert.deepEqual(summary(out), [
      `old:${position}+1*`,
      `vip:${position}+1*`,
      `young:${position}+1*`,
    ]);
    finishStep(scheduler, out);
  }
  assert.equal(kv.numFreeBlocks, 1);
  // Position 8 needs a third block each: old takes the last one; for vip, young (same priority
  // as old but newer, lower priority than vip) is preempted.
  out = scheduler.schedule();
  assert.deepEqual(out.preemptedIds, ["young"]);
  assert.deepEqual(summary(out), ["old:8+1*", "vip:8+1*"]);
  assert.equal(young.numComputedTokens, 0);
  assert.equal(young.status, "waiting");
  assert.equal(young.numTokens, 9, "a preempted request keeps its tokens for recompute");
  assert.equal(scheduler.numPreemptions, 1);
});

Deno.test("a victim already scheduled in this step loses its share of the step", () => {
  const { kv, scheduler } = setup(6, { maxNumBatchedTokens: 32 }); // 5 usable blocks of 4 tokens
  const low = request("low", 6, { priority: 9 }); // older, lower priority
  const vip = request("vip", 6, { priority: 0 });
  for (const r of [low, vip]) scheduler.add(r);
  let out = scheduler.schedule();
  assert.deepEqual(summary(out), ["low:0+6*", "vip:0+6*"]);
  finishStep(scheduler, out);
  for (let position = 6; position < 8; position++) {
    out = scheduler.schedule();
    finishStep(scheduler, out);
  }
  assert.equal(kv.numFreeBlocks, 1);
  // Both need a third block: low (older) is served first and takes the free one; vip then finds
  // none, and the victim is low, already scheduled: it must leave this step with its blocks.
  out = scheduler.schedule();
  assert.deepEqual(out.preemptedIds, ["low"]);
  assert.deepEqual(summary(out), ["vip:8+1*"]);
  assert.equal(kv.has("low"), false);
  assert.equal(low.numComputedTokens, 0);
});

Deno.test("static mode reserves maxModelLen per request and admits only between batches", () => {
  const { kv, scheduler } = setup(41, { mode: "static", maxModelLen: 64 }); // 40 usable blocks
  for (const id of ["a", "b", "c"]) scheduler.add(request(id, 4, { maxTokens: 2 }));
  let out = scheduler.schedule();
  // 64 tokens = 16 blocks each: only two fit.
  assert.deepEqual(summary(out), ["a:0+4*", "b:0+4*"]);
  assert.equal(kv.numFreeBlocks, 40 - 32);
  finishStep(scheduler, out);
  out = scheduler.schedule();
  assert.deepEqual(summary(out), ["a:4+1*", "b:4+1*"]);
  finishStep(scheduler, out);
  // a and b reached max_tokens: the batch is done, c starts alone.
  for (const r of out.scheduled.map((s) => scheduler.runningRequest(s.requestId))) {
    assert.equal(r.isFinished, true);
    scheduler.finish(r);
  }
  assert.deepEqual(summary(scheduler.schedule()), ["c:0+4*"]);
  assert.throws(
    () => setup(8, { mode: "static", maxModelLen: 64 }),
    /reserves maxModelLen \(64\) tokens per request/,
  );
});

Deno.test("without chunked prefill a prompt waits for a step with room for all of it", () => {
  const { scheduler } = setup(64, {
    enableChunkedPrefill: false,
    maxNumBatchedTokens: 64,
    maxModelLen: 64,
  });
  scheduler.add(request("a", 40));
  scheduler.add(request("b", 40));
  const out = scheduler.schedule();
  assert.deepEqual(summary(out), ["a:0+40*"]);
  assert.throws(
    () => setup(64, { enableChunkedPrefill: false, maxNumBatchedTokens: 16 }),
    /must be at least maxModelLen/,
  );
});
