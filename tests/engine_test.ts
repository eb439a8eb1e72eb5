// Batch invariance of the serving engine on stories260K: many concurrent greedy requests produce
// exactly the tokens each produces alone — with chunked prefill, under preemption, with prefix
// caching, with n > 1 forks, in static mode — and every KV block is free afterwards.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import type { EngineConfig } from "../src/engine/engine.ts";
import { LLM } from "../src/engine/llm.ts";
import type { KvCacheDtype } from "../src/engine/local_engine.ts";
import { type RequestOutput, type RequestParams, sampleSeed } from "../src/engine/request.ts";
import { RequestTooLongError } from "../src/engine/scheduler.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY, Rng } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const backend = NativeBackend.open({ numThreads: 2 });
const loaded: LoadedModel = await loadModel(backend, MODEL, { showProgress: false });
const config = loaded.config;

interface Job {
  id: string;
  promptIds: number[];
  params: RequestParams;
}

/** Prompts of varied length (BOS + story text or random tokens), outputs of varied length. */
function makeJobs(count: number, seed: number, sharedPrefix: number[] = [], idPrefix = "r"): Job[] {
  const rng = new Rng(seed);
  const texts = ["Once upon a time", "One day, a little", "The cat sat on", "Lily and Tom went to"];
  return Array.from({ length: count }, (_, i) => {
    const base = loaded.tokenizer.encode(texts[i % texts.length]);
    const extra = Array.from(
      { length: Math.floor(rng.next() * 40) },
      () => 3 + Math.floor(rng.next() * (config.vocabSize - 3)),
    );
    const promptIds = sharedPrefix.length ? [...sharedPrefix, ...extra.slice(0, 10)] : [
      ...base,
      ...extra,
    ];
    return {
      id: `${idPrefix}${i}`,
      promptIds,
      params: { maxTokens: 1 + Math.floor(rng.next() * 48), sampling: GREEDY },
    };
  });
}

/** Each job's tokens generated alone: the only request in an engine of one sequence. */
function alone(job: Job, kvCacheDtype: KvCacheDtype = "f32"): number[] {
  const llm = LLM.over(backend, loaded, {
    blockSize: 16,
    numKvBlocks: 32,
    kvCacheDtype,
    maxNumSeqs: 1,
  });
  try {
    const result = llm.generate({
      promptIds: job.promptIds,
      maxTokens: job.params.maxTokens,
      sampling: job.params.sampling,
    });
    return result.tokenIds;
  } finally {
    llm.release();
  }
}

/** Runs all jobs concurrently to completion; returns tokens per id (index suffix for n > 1). */
function runTogether(
  jobs: Job[],
  engineConfig: Partial<EngineConfig>,
  cache: { blockSize: number; numBlocks: number; dtype?: KvCacheDtype },
) {
  const llm = LLM.over(backend, loaded, {
    maxNumBatchedTokens: 256,
    maxNumSeqs: 64,
    maxModelLen: config.maxPositionEmbeddings,
    ...engineConfig,
    blockSize: cache.blockSize,
    numKvBlocks: cache.numBlocks,
    kvCacheDtype: cache.dtype,
  });
  const engine = llm.engine;
  try {
    for (const job of jobs) engine.addRequest(job.id, job.promptIds, job.params);
    const tokens = new Map<string, number[]>();
    const outputs: RequestOutput[] = [];
    let steps = 0;
    while (engine.hasWork) {
      for (const out of engine.step()) {
        const key = out.index === 0 ? out.requestId : `${out.requestId}#${out.index}`;
        tokens.set(key, [...(tokens.get(key) ?? []), ...out.newTokenIds]);
        outputs.push(out);
      }
      assert.ok(++steps < 10000, "the engine must finish");
    }
    const stats = engine.stats();
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks, "every block is back in the pool");
    assert.equal(stats.numRunning, 0);
    return { tokens, stats, outputs };
  } finally {
    llm.release();
  }
}

const jobs = makeJobs(32, 1);
const expected = new Map(jobs.map((j) => [j.id, alone(j)]));

function assertSameAsAlone(tokens: Map<string, number[]>, list: Job[] = jobs) {
  for (const job of list) {
    assert.deepEqual(tokens.get(job.id), expected.get(job.id) ?? alone(job), `request ${job.id}`);
  }
}

Deno.test("32 concurrent greedy requests equal each request alone", () => {
  const { tokens, stats } = runTogether(jobs, {}, { blockSize: 16, numBlocks: 200 });
  assertSameAsAlone(tokens);
  assert.equal(stats.numPreemptions, 0);
});

Deno.test("the same with chunked prefill forced small", () => {
  const { tokens, stats } = runTogether(jobs, { maxNumBatchedTokens: 7 }, {
    blockSize: 16,
    numBlocks: 200,
  });
  assertSameAsAlone(tokens);
  assert.ok(stats.numSteps > 100);
});

Deno.test("the same with a KV budget so tight that requests are preempted", () => {
  const { tokens, stats } = runTogether(jobs, {}, { blockSize: 4, numBlocks: 40 });
  assertSameAsAlone(tokens);
  assert.ok(stats.numPreemptions > 0, `expected preemptions, got ${stats.numPreemptions}`);
  console.log(`preemptions: ${stats.numPreemptions}`);
});

Deno.test("the same under preemption with mixed priorities", () => {
  const prioritized = jobs.map((job, i) => ({
    ...job,
    params: { ...job.params, priority: (i * 7) % 3 },
  }));
  const { tokens, stats } = runTogether(prioritized, { policy: "priority" }, {
    blockSize: 4,
    numBlocks: 40,
  });
  assertSameAsAlone(tokens, prioritized);
  assert.ok(stats.numPreemptions > 0, `expected preemptions, got ${stats.numPreemptions}`);
});

Deno.test("the same with prefix caching and a shared prompt prefix", () => {
  const prefix = loaded.tokenizer.encode(
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
  );
  const shared = makeJobs(16, 2, prefix, "shared");
  const { tokens, stats } = runTogether(shared, { maxNumSeqs: 4 }, {
    blockSize: 4,
    numBlocks: 200,
  });
  assertSameAsAlone(tokens, shared);
  assert.ok(stats.prefixCacheHits > 0, `expected prefix-cache hits, got ${stats.prefixCacheHits}`);
  console.log(`prefix cache: ${stats.prefixCacheHits} of ${stats.prefixCacheQueries} tokens hit`);

  const off = runTogether(shared, { maxNumSeqs: 4, enablePrefixCaching: false }, {
    blockSize: 4,
    numBlocks: 200,
  });
  assertSameAsAlone(off.tokens, shared);
  assert.equal(off.stats.prefixCacheHits, 0);
});

Deno.test("the same with a half-precision (f16) KV cache", () => {
  const { tokens } = runTogether(jobs, { maxNumBatchedTokens: 32 }, {
    blockSize: 16,
    numBlocks: 200,
    dtype: "f16",
  });
  for (const job of jobs) assert.deepEqual(tokens.get(job.id), alone(job, "f16"), job.id);
});

Deno.test("the same in static-batching mode", () => {
  const { tokens } = runTogether(jobs, { mode: "static", maxNumSeqs: 8 }, {
    blockSize: 16,
    numBlocks: 200,
  });
  assertSameAsAlone(tokens);
});

Deno.test("n > 1 samples share the prompt's blocks and equal separate runs", () => {
  // A 6-token prompt leaves a partial block that the samples must copy on write.
  const promptIds = loaded.tokenizer.encode("Once upon a time there");
  const greedy: Job = { id: "g", promptIds, params: { maxTokens: 20, sampling: GREEDY, n: 3 } };
  const sampling = { temperature: 1, topK: 0, topP: 0.95, minP: 0, seed: 5 };
  const sampled: Job = { id: "s", promptIds, params: { maxTokens: 20, sampling, n: 3 } };
  const { tokens } = runTogether([greedy, sampled], {}, { blockSize: 4, numBlocks: 60 });
  const single = alone({ ...greedy, params: { ...greedy.params, n: 1 } });
  for (const key of ["g", "g#1", "g#2"]) assert.deepEqual(tokens.get(key), single, key);
  for (let i = 0; i < 3; i++) {
    const want = alone({
      id: "x",
      promptIds,
      params: { maxTokens: 20, sampling: { ...sampling, seed: sampleSeed(sampling.seed, i) } },
    });
    assert.deepEqual(tokens.get(i === 0 ? "s" : `s#${i}`), want, `sample ${i}`);
  }
});

Deno.test("cancelling frees blocks at once, whether waiting, prefilling or decoding", () => {
  const llm = LLM.over(backend, loaded, {
    blockSize: 4,
    numKvBlocks: 100,
    ...{ maxNumBatchedTokens: 8, maxNumSeqs: 2, maxModelLen: 512 },
  });
  const engine = llm.engine;
  try {
    const long = Array.from({ length: 30 }, (_, i) => 3 + i);
    engine.addRequest("decoding", [1, 403, 407], { maxTokens: 100, sampling: GREEDY });
    engine.addRequest("prefilling", [1, ...long], { maxTokens: 100, sampling: GREEDY });
    engine.addRequest("waiting", [1, 403], { maxTokens: 100, sampling: GREEDY });
    for (let i = 0; i < 3; i++) engine.step();
    const before = engine.stats().numFreeKvBlocks;
    for (const id of ["waiting", "prefilling", "decoding"]) {
      const [out] = engine.abort(id);
      assert.equal(out.finished, true);
      assert.equal(out.finishReason, "abort");
    }
    const stats = engine.stats();
    assert.ok(before < stats.numKvBlocks);
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks);
    assert.equal(engine.hasWork, false);
  } finally {
    llm.release();
  }
});

Deno.test("a request that can never fit is rejected at admission", () => {
  const llm = LLM.over(backend, loaded, {
    blockSize: 4,
    numKvBlocks: 10,
    ...{ maxNumBatchedTokens: 64, maxNumSeqs: 4, maxModelLen: 512 },
  });
  const engine = llm.engine;
  try {
    assert.throws(
      () => engine.addRequest("big", [1, 2, 3], { maxTokens: 600, sampling: GREEDY }),
      (e) => e instanceof RequestTooLongError && /603 tokens.*512/.test(e.message),
    );
    assert.throws(
      () => engine.addRequest("kv", [1, 2, 3], { maxTokens: 60, sampling: GREEDY }),
      (e) => e instanceof RequestTooLongError && /KV blocks/.test(e.message),
    );
    assert.equal(engine.hasWork, false);
  } finally {
    llm.release();
  }
});

Deno.test("teardown", () => {
  loaded.release();
  backend.close();
});
