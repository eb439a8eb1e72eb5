// CUDA graphs (ffi/denollm.h "Graphs") on the CUDA build: a captured kernel sequence replays
// what eager calls compute, reading the fixed buffers' contents at replay time; calls illegal in a
// capture fail and leave the context usable; bad metadata met in a replay is reported; and the
// engine's decode graphs give the same greedy tokens as --enforce-eager, one capture per bucket.
//
// Not picked up by `deno task test`; tests/gpu/emu.sh runs it on the CPU through the dl_emu shim
// (DENOLLM_GPU_TEST_LIBRARY), tests/gpu/run.sh on a GPU host.
import assert from "node:assert/strict";
import { type DevicePtr, DType, NativeBackend } from "../../ffi/native.ts";
import { graphBuckets, type GraphStats, isDecodeShaped } from "../../src/engine/decode_graphs.ts";
import { LocalExecutor } from "../../src/engine/executor.ts";
import type { ForwardBatch } from "../../src/engine/forward_batch.ts";
import { LLM } from "../../src/engine/llm.ts";
import { loadModel } from "../../src/model/load.ts";
import { GREEDY, Rng } from "../../src/sampling.ts";

const MODEL_DIR = `${
  Deno.env.get("DENOLLM_STORIES260K") ??
    new URL("../../../shared/models/stories260K", import.meta.url).pathname
}/hf`;
const gpu = NativeBackend.open({
  backend: "cuda",
  libraryPath: Deno.env.get("DENOLLM_GPU_TEST_LIBRARY"),
});
globalThis.addEventListener("unload", () => gpu.close());
if (!gpu.replaysGraphs) {
  throw new Error(`${gpu.libraryPath} does not replay graphs: not a CUDA build`);
}

const ILLEGAL = /not allowed while a graph is being captured/;

/** A few kernels over fixed buffers: embedding, rmsnorm, matmul (gemv), add, a D2D copy. */
function smallStep(b: NativeBackend, sizes: { T: number; V: number; D: number; N: number }) {
  const { T, V, D, N } = sizes;
  const owned: DevicePtr[] = [];
  const alloc = (bytes: number) => {
    const p = b.alloc(bytes);
    owned.push(p);
    return p;
  };
  const buf = {
    ids: alloc(T * 4),
    table: alloc(V * D * 4),
    norm: alloc(D * 4),
    w: alloc(N * D * 4),
    x: alloc(T * D * 4),
    h: alloc(T * D * 4),
    out: alloc(T * N * 4),
    sum: alloc(T * N * 4),
    copy: alloc(T * N * 4),
  };
  const enqueue = () => {
    b.embedding({
      out: buf.x,
      table: buf.table,
      tableDtype: DType.F32,
      tokenIds: buf.ids,
      numTokens: T,
      vocabSize: V,
      dim: D,
    });
    b.rmsnorm({ out: buf.h, x: buf.x, weight: buf.norm, numTokens: T, dim: D, eps: 1e-5 });
    b.matmul({ out: buf.out, x: buf.h, w: buf.w, wDtype: DType.F32, m: T, n: N, k: D });
    b.add({ out: buf.sum, a: buf.out, b: buf.x, numElements: T * Math.min(N, D) });
    b.convert(buf.copy, DType.F32, buf.sum, DType.F32, T * N); // same dtype: a D2D memcpy
  };
  const read = () => {
    b.synchronize();
    const out = new Float32Array(T * N);
    b.download(out, buf.copy);
    return out;
  };
  const release = () => owned.forEach((p) => b.free(p));
  return { buf, enqueue, read, release };
}

Deno.test("graph: a captured kernel sequence replays what eager calls compute, reading data at replay", () => {
  const sizes = { T: 3, V: 37, D: 45, N: 29 };
  const rng = new Rng(11);
  const random = (n: number) => Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
  const step = smallStep(gpu, sizes);
  const { buf } = step;
  try {
    gpu.upload(buf.norm, random(sizes.D));
    gpu.upload(buf.w, random(sizes.N * sizes.D));
    gpu.upload(buf.table, random(sizes.V * sizes.D));
    gpu.upload(buf.ids, Int32Array.of(1, 2, 3));
    gpu.upload(buf.copy, new Float32Array(sizes.T * sizes.N).fill(-7));
    gpu.graphBegin();
    step.enqueue();
    const id = gpu.graphEnd();
    assert.ok(step.read().every((v) => v === -7), "a capture records; nothing ran yet");
    const cases = [
      { ids: Int32Array.of(5, 0, 36), table: null },
      { ids: Int32Array.of(36, 36, 2), table: null },
      { ids: Int32Array.of(5, 0, 36), table: random(sizes.V * sizes.D) },
    ];
    for (const [i, c] of cases.entries()) {
      if (c.table !== null) gpu.upload(buf.table, c.table);
      gpu.upload(buf.ids, c.ids);
      step.enqueue();
      const eager = step.read();
      gpu.upload(buf.copy, new Float32Array(sizes.T * sizes.N).fill(-7));
      gpu.graphLaunch(id);
      const replayed = step.read();
      assert.deepEqual(replayed, eager, `case ${i}: the replay equals the eager calls`);
    }
    gpu.graphDestroy(id);
    assert.throws(() => gpu.graphLaunch(id), /is not a live graph/);
  } finally {
    step.release();
  }
});

Deno.test("graph: illegal calls fail and spoil the capture; bad metadata in a replay is reported", () => {
  const sizes = { T: 2, V: 8, D: 16, N: 8 };
  const step = smallStep(gpu, sizes);
  try {
    const out = new Float32Array(4);
    const illegal: [string, () => void][] = [
      ["dl_synchronize", () => gpu.synchronize()],
      ["dl_copy_to_host", () => gpu.download(out, step.buf.copy)],
      ["dl_copy_to_device", () => gpu.upload(step.buf.ids, Int32Array.of(0, 1))],
      ["dl_alloc", () => gpu.alloc(64)],
      ["dl_graph_launch", () => gpu.graphLaunch(0)],
    ];
    for (const [fn, call] of illegal) {
      gpu.graphBegin();
      step.enqueue();
      assert.throws(call, ILLEGAL, fn);
      assert.throws(() => gpu.graphEnd(), new RegExp(`spoiled by a call to ${fn}`), fn);
      gpu.synchronize(); // the stream is out of capture and usable
    }
    // A kernel that fails its argument checks is left out; the capture itself still ends.
    gpu.graphBegin();
    assert.throws(() =>
      gpu.add({ out: step.buf.sum, a: step.buf.x, b: step.buf.x, numElements: -1 })
    );
    gpu.graphDestroy(gpu.graphEnd());

    // Token id 99 is outside the vocabulary: reported at the synchronize after the replay.
    gpu.upload(step.buf.ids, Int32Array.of(0, 1));
    gpu.graphBegin();
    step.enqueue();
    const id = gpu.graphEnd();
    gpu.graphLaunch(id);
    gpu.synchronize();
    gpu.upload(step.buf.ids, Int32Array.of(0, 99));
    gpu.graphLaunch(id);
    assert.throws(() => gpu.synchronize(), /token_ids\[1\] = 99/);
    // The live graph holds the kernel workspace's address: growing it is refused.
    const shape = { numHeads: 8, numKvHeads: 1, headDim: 64, blockSize: 16, maxMatmulK: 64 };
    assert.throws(
      () => gpu.reserveWorkspace({ ...shape, maxNumTokens: 64, maxBlocksPerSeq: 1 << 14 }),
      /cannot grow while 1 graphs/,
    );
    gpu.graphDestroy(id);
    gpu.synchronize();
  } finally {
    step.release();
  }
});

/** Greedy tokens per request through the engine, and the graph buckets its decode steps used. */
async function runEngine(
  prompts: number[][],
  maxTokens: number[],
  enforceEager: boolean,
): Promise<{ tokens: number[][]; buckets: Set<number>; stats: GraphStats | null }> {
  const loaded = await loadModel(gpu, MODEL_DIR, { showProgress: false });
  const maxNumSeqs = 8;
  const llm = LLM.over(gpu, loaded, {
    blockSize: 4,
    numKvBlocks: 120,
    maxNumBatchedTokens: 48,
    maxNumSeqs,
    enforceEager,
  });
  const buckets = new Set<number>();
  // Steps come through execute (logits to the host) or executeSampled (device sampling, the
  // CUDA build's default); both are watched.
  const proto = LocalExecutor.prototype;
  const { execute, executeSampled } = proto;
  const watch = (batch: ForwardBatch) => {
    if (isDecodeShaped(batch)) {
      buckets.add(graphBuckets(maxNumSeqs).find((b) => b >= batch.seqLens.length)!);
    }
  };
  proto.execute = function (this: LocalExecutor, batch: ForwardBatch) {
    watch(batch);
    return execute.call(this, batch);
  };
  proto.executeSampled = function (this: LocalExecutor, batch, sampling) {
    watch(batch);
    return executeSampled.call(this, batch, sampling);
  };
  try {
    const engine = llm.engine;
    const tokens = prompts.map(() => [] as number[]);
    prompts.forEach((p, i) =>
      engine.addRequest(`r${i}`, p, { maxTokens: maxTokens[i], sampling: GREEDY, ignoreEos: true })
    );
    while (engine.hasWork) {
      for (const out of engine.step()) {
        tokens[Number(out.requestId.slice(1))].push(...out.newTokenIds);
      }
    }
    return { tokens, buckets, stats: llm.local.graphStats!() };
  } finally {
    proto.execute = execute;
    proto.executeSampled = executeSampled;
    llm.release();
    loaded.release();
  }
}

Deno.test("engine: decode graphs give --enforce-eager's greedy tokens, one capture per bucket", async (t) => {
  const rng = new Rng(7);
  const prompt = (
    n: number,
  ) => [1, ...Array.from({ length: n }, () => 3 + Math.floor(rng.next() * 500))];
  const cases = [
    { name: "one request", prompts: [prompt(6)], maxTokens: [24] },
    {
      name: "7 concurrent requests ending at different steps",
      prompts: Array.from({ length: 7 }, (_, i) => prompt(2 + 3 * i)),
      maxTokens: [3, 20, 9, 14, 5, 17, 11],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const eager = await runEngine(c.prompts, c.maxTokens, true);
      const graphs = await runEngine(c.prompts, c.maxTokens, false);
      assert.equal(eager.stats, null, "--enforce-eager captures nothing");
      assert.deepEqual(graphs.tokens, eager.tokens);
      assert.deepEqual(eager.tokens.map((ids) => ids.length), c.maxTokens);
      assert.ok(graphs.stats !== null);
      assert.deepEqual(graphs.stats.buckets, [...graphs.buckets].sort((a, b) => a - b));
      assert.equal(graphs.stats.numCaptures, graphs.buckets.size, "one capture per bucket used");
      assert.ok(graphs.stats.numReplays > 0, "later decode steps replay");
      console.log(
        `  ${c.name}: buckets ${graphs.stats.buckets.join(",")}, ${graphs.stats.numCaptures} ` +
          `captures, ${graphs.stats.numReplays} replays`,
      );
    });
  }
});

Deno.test("attention: a padding sequence (seq_len 0) gets zero rows and is no error; other rows match the CPU build", () => {
  const cpu = NativeBackend.open({ backend: "cpu", numThreads: 1 });
  const rng = new Rng(3);
  const random = (n: number) => Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
  const H = 4, KVH = 2, HD = 40, BS = 16, WIDTH = 40, NB = 1 + 3 * WIDTH;
  const cache = [random(NB * KVH * BS * HD), random(NB * KVH * BS * HD)];
  // Decode (one token per sequence; contexts over one 256-position partition) and flash (a
  // sequence with 3 new tokens) batches, each with and without padding sequences among them.
  const batches = [
    { lens: [300, 0, 17, 0], numNew: [1, 1, 1, 1] },
    { lens: [9, 0, 600], numNew: [3, 1, 1] },
  ];
  try {
    for (const { lens, numNew } of batches) {
      const T = numNew.reduce((a, c) => a + c, 0);
      const q = random(T * H * HD);
      const tables = Int32Array.from(
        { length: lens.length * WIDTH },
        (_, i) => lens[Math.floor(i / WIDTH)] === 0 ? 0 : 1 + i,
      );
      const queryStart = new Int32Array(lens.length + 1);
      numNew.forEach((n, s) => queryStart[s + 1] = queryStart[s] + n);
      const results = [cpu, gpu].map((b) => {
        const owned: DevicePtr[] = [];
        const from = (a: Float32Array | Int32Array) => {
          const p = b.alloc(a.byteLength);
          owned.push(p);
          b.upload(p, a);
          return p;
        };
        const out = from(new Float32Array(T * H * HD).fill(5));
        b.pagedAttention({
          out,
          q: from(q),
          kCache: from(cache[0]),
          vCache: from(cache[1]),
          cacheDtype: DType.F32,
          blockTables: from(tables),
          seqLens: from(Int32Array.from(lens)),
          queryStart: from(queryStart),
          numSeqs: lens.length,
          numTokens: T,
          numHeads: H,
          numKvHeads: KVH,
          headDim: HD,
          qRowStride: H * HD,
          blockSize: BS,
          maxBlocksPerSeq: WIDTH,
          numBlocks: NB,
          scale: 0.125,
        });
        b.synchronize(); // no bad-metadata report for the padding rows
        const host = new Float32Array(T * H * HD);
        b.download(host, out);
        owned.forEach((p) => b.free(p));
        return host;
      });
      const row = H * HD;
      lens.forEach((len, s) => {
        for (let t = queryStart[s]; t < queryStart[s + 1]; t++) {
          for (const [i, r] of results.entries()) {
            const values = r.subarray(t * row, (t + 1) * row);
            if (len === 0) {
              assert.ok(values.every((v) => v === 0), `build ${i}: padding row ${t} is zeros`);
            } else assert.ok(values.some((v) => v !== 0), `build ${i}: row ${t} is attended`);
          }
          for (let j = t * row; j < (t + 1) * row; j++) {
            const [c, g] = [results[0][j], results[1][j]];
            assert.ok(
              Math.abs(c - g) <= 2e-5 * Math.abs(c) + 2e-5,
              `row ${t}: cpu ${c}, device ${g}`,
            );
          }
        }
      });
    }
  } finally {
    cpu.close();
  }
});
