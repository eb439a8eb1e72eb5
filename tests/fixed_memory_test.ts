// Fixed device memory: once an engine is built, its steps allocate and free nothing, through
// chunked prefill, mixed prefill/decode steps, n > 1 copy-on-write, preemption and cancellation;
// and a step larger than the reservation is refused with a message that names the flag.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LocalExecutor } from "../src/engine/executor.ts";
import { LLM } from "../src/engine/llm.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY, Rng } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;

/** Counts the backend's allocation calls from TypeScript and copy-on-write kernel calls. */
function instrument(backend: NativeBackend) {
  const counts = { allocs: 0, frees: 0, copyBlocks: 0 };
  const { alloc, free, copyBlocks } = backend;
  backend.alloc = (size) => (counts.allocs++, alloc.call(backend, size));
  backend.free = (ptr) => (counts.frees++, free.call(backend, ptr));
  backend.copyBlocks = (args) => (counts.copyBlocks++, copyBlocks.call(backend, args));
  return counts;
}

Deno.test("engine steps allocate nothing after start-up", async () => {
  const backend = NativeBackend.open({ numThreads: 2 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const counts = instrument(backend);
  const llm = LLM.over(backend, loaded, {
    blockSize: 4,
    numKvBlocks: 48,
    maxNumBatchedTokens: 48,
    maxNumSeqs: 8,
    maxModelLen: 160,
  });
  try {
    assert.ok(counts.allocs > 0, "start-up reserves its buffers");
    assert.ok(llm.local.reservedBytes > 0);
    const atStart = { ...counts };
    const native = backend.memoryStats();
    const engine = llm.engine;
    const rng = new Rng(3);
    const randomPrompt = () =>
      Array.from(
        { length: 1 + Math.floor(rng.next() * 70) },
        () => 3 + Math.floor(rng.next() * 400),
      );
    let numSubmitted = 0;
    const submit = () => {
      const n = rng.next() < 0.25 ? 2 : 1; // n > 1 shares blocks and copies on write
      engine.addRequest(`r${numSubmitted++}`, [1, ...randomPrompt()], {
        maxTokens: 1 + Math.floor(rng.next() * 60),
        sampling: n > 1 ? { ...GREEDY, temperature: 0.8, seed: numSubmitted } : GREEDY,
        ignoreEos: true,
        n,
      });
    };
    for (let i = 0; i < 6; i++) submit();
    let numSteps = 0;
    let numMixedSteps = 0;
    while (engine.hasWork) {
      engine.step();
      numSteps++;
      const stats = engine.stats();
      if (stats.lastStepPrefillTokens > 0 && stats.lastStepDecodeTokens > 0) numMixedSteps++;
      // Arrivals and cancellations between steps, as the worker sees them.
      if (numSubmitted < 40 && rng.next() < 0.3) submit();
      if (rng.next() < 0.03) engine.abort(`r${Math.floor(rng.next() * numSubmitted)}`);
      assert.ok(numSteps < 20_000, "the engine must finish");
    }
    const stats = engine.stats();
    assert.ok(numSteps > 100, `expected many steps, got ${numSteps}`);
    assert.ok(numMixedSteps > 10, `expected mixed prefill/decode steps, got ${numMixedSteps}`);
    assert.ok(stats.numPreemptions > 0, "the KV budget is tight enough to preempt");
    assert.ok(counts.copyBlocks > atStart.copyBlocks, "n > 1 samples copied blocks on write");
    assert.equal(counts.allocs, atStart.allocs, "no device allocation in the steady state");
    assert.equal(counts.frees, atStart.frees, "no device free in the steady state");
    const after = backend.memoryStats();
    assert.equal(after.numAllocs, native.numAllocs, "no native allocation either");
    assert.equal(after.numWorkspaceGrowths, native.numWorkspaceGrowths, "no workspace growth");
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks);
    console.log(
      `${numSteps} steps (${numMixedSteps} mixed), ${stats.numPreemptions} preemptions, ` +
        `${counts.copyBlocks - atStart.copyBlocks} copy-on-write calls, 0 allocations; ` +
        `${llm.local.reservedBytes} bytes reserved for steps`,
    );
  } finally {
    llm.release();
    loaded.release();
    backend.close();
  }
});

Deno.test("a step larger than the reservation is refused, naming the flag", async () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const kvCache = new KvCache(backend, loaded.config, { blockSize: 4, numBlocks: 8 });
  const executor = new LocalExecutor(backend, { model: loaded.model, kvCache }, {
    maxNumTokens: 4,
    maxNumSeqs: 2,
    maxBlocksPerSeq: 2,
    blockSize: 4,
  });
  const batch = (n: number, width: number) => ({
    tokenIds: new Int32Array(n).fill(1),
    positions: Int32Array.from({ length: n }, (_, i) => i),
    slotMapping: Int32Array.from({ length: n }, (_, i) => 4 + i),
    seqLens: Int32Array.of(n),
    queryStart: Int32Array.of(0, n),
    blockTables: Int32Array.from({ length: width }, (_, i) => 1 + i),
    maxBlocksPerSeq: width,
    logitRows: Int32Array.of(n - 1),
    blockCopies: new Int32Array(0),
  });
  try {
    assert.equal(executor.execute(batch(4, 1)).length, loaded.config.vocabSize);
    assert.throws(() => executor.execute(batch(5, 2)), /5 tokens.*--max-num-batched-tokens/);
    assert.throws(() => executor.execute(batch(3, 3)), /3 blocks per sequence.*--max-model-len/);
  } finally {
    executor.release();
    kvCache.release();
    loaded.release();
    backend.close();
  }
});

Deno.test("prompt logprobs: chunked to the reserved logit rows, no allocation", async () => {
  const backend = NativeBackend.open({ numThreads: 2 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const counts = instrument(backend);
  // 4 sequences, 6 logit rows: a 70-token prompt's logprobs take many steps beside decodes.
  const llm = LLM.over(backend, loaded, {
    blockSize: 4,
    numKvBlocks: 64,
    maxNumBatchedTokens: 32,
    maxNumSeqs: 4,
    maxNumLogitRows: 6,
    maxModelLen: 160,
  });
  try {
    const atStart = { ...counts };
    const engine = llm.engine;
    const prompt = (
      seed: number,
      length: number,
    ) => [1, ...Array.from({ length }, (_, i) => 3 + ((i * 31 + seed * 7) % 400))];
    engine.addRequest("decode", prompt(0, 5), { maxTokens: 60, sampling: GREEDY, ignoreEos: true });
    for (let i = 0; i < 3; i++) {
      engine.addRequest(`lp${i}`, prompt(i + 1, 70), {
        maxTokens: i,
        sampling: GREEDY,
        ignoreEos: true,
        promptLogprobs: 1,
      });
    }
    const numPromptLogprobs = new Map<string, number>();
    let numSteps = 0;
    while (engine.hasWork) {
      for (const out of engine.step()) {
        if (out.promptLogprobs) numPromptLogprobs.set(out.requestId, out.promptLogprobs.length);
      }
      assert.ok(++numSteps < 1000);
    }
    assert.deepEqual([...numPromptLogprobs].sort(), [["lp0", 70], ["lp1", 70], ["lp2", 70]]);
    assert.equal(counts.allocs, atStart.allocs, "no device allocation in the steady state");
    assert.equal(counts.frees, atStart.frees);
  } finally {
    llm.release();
    loaded.release();
    backend.close();
  }
});
