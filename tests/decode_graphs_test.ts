// Decode graphs on the CPU build: the dl_graph_* calls keep the header's contract (bad ids and
// calls illegal in a capture fail, a spoiled capture leaves the context usable), the buckets and
// padding are what src/engine/decode_graphs.ts says, and padding rows change nothing: the KV cache
// and the real rows' logits are bit-identical with and without them.
import assert from "node:assert/strict";
import { dtypeSize, NativeBackend } from "../ffi/native.ts";
import {
  DecodeGraphs,
  graphBuckets,
  isDecodeShaped,
  padDecodeBatch,
} from "../src/engine/decode_graphs.ts";
import { engineOptions } from "../src/cli/engine_flags.ts";
import { LocalExecutor } from "../src/engine/executor.ts";
import type { ForwardBatch } from "../src/engine/forward_batch.ts";
import { LLM } from "../src/engine/llm.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const ILLEGAL = /not allowed while a graph is being captured/;

Deno.test("dl_graph_*: ids, nesting and calls illegal in a capture fail; the context stays usable", () => {
  const b = NativeBackend.open({ numThreads: 1 });
  const n = 7;
  const x = b.alloc(n * 4);
  const y = b.alloc(n * 4);
  try {
    assert.equal(b.replaysGraphs, false, "the CPU build runs captures eagerly");
    assert.throws(() => b.graphEnd(), /no capture is open/);
    for (const id of [0, -1, 12345]) {
      assert.throws(() => b.graphLaunch(id), new RegExp(`graph id ${id} is not a live graph`));
      assert.throws(() => b.graphDestroy(id), new RegExp(`graph id ${id} is not a live graph`));
    }

    b.upload(x, Float32Array.from({ length: n }, (_, i) => i + 0.5));
    b.graphBegin();
    assert.throws(() => b.graphBegin(), /already open/);
    b.add({ out: y, a: x, b: x, numElements: n }); // a kernel call: legal, and eager here
    const id = b.graphEnd();
    assert.ok(id >= 0);
    const out = new Float32Array(n);
    b.download(out, y);
    assert.deepEqual([...out], Array.from({ length: n }, (_, i) => 2 * (i + 0.5)));
    b.graphLaunch(id);
    b.graphLaunch(id);
    b.graphDestroy(id);
    assert.throws(() => b.graphLaunch(id), /is not a live graph/);
    assert.throws(() => b.graphDestroy(id), /is not a live graph/);

    // Each illegal call fails, spoils the capture (dl_graph_end fails naming it) and ends it.
    const illegal: [string, () => void][] = [
      ["dl_synchronize", () => b.synchronize()],
      ["dl_copy_to_host", () => b.download(out, y)],
      ["dl_copy_to_device", () => b.upload(x, out)],
      ["dl_alloc", () => b.alloc(64)],
      ["dl_free", () => b.free(y)],
      ["dl_graph_launch", () => b.graphLaunch(0)],
    ];
    for (const [fn, call] of illegal) {
      b.graphBegin();
      assert.throws(call, ILLEGAL, fn);
      assert.throws(() => b.graphEnd(), new RegExp(`spoiled by a call to ${fn}`), fn);
      b.synchronize(); // usable again
    }
    // While a graph lives, the kernel workspace (whose address graphs hold) cannot move.
    const shape = {
      maxNumTokens: 4,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 8,
      blockSize: 4,
      maxBlocksPerSeq: 2,
      maxMatmulK: 16,
    };
    const reserved = b.reserveWorkspace(shape);
    b.graphBegin();
    const live = b.graphEnd();
    assert.equal(b.reserveWorkspace(shape), reserved, "the same reservation moves nothing");
    const larger = { ...shape, maxNumTokens: 4096 };
    assert.throws(() => b.reserveWorkspace(larger), /cannot grow while 1 graphs/);
    b.graphDestroy(live);
    assert.ok(b.reserveWorkspace(larger) > reserved);
    // A freed slot is handed out again.
    b.graphBegin();
    const again = b.graphEnd();
    assert.equal(again, id);
    b.graphDestroy(again);
  } finally {
    b.free(x);
    b.free(y);
    b.close();
  }
});

Deno.test("buckets and padding rows", () => {
  assert.deepEqual(graphBuckets(1), [1]);
  assert.deepEqual(graphBuckets(8), [1, 2, 4, 8]);
  assert.deepEqual(graphBuckets(12), [1, 2, 4, 8, 12]);
  assert.throws(() => graphBuckets(0), RangeError);
  const decode = decodeBatch([5, 9, 2], 4, 3);
  assert.equal(isDecodeShaped(decode), true);
  assert.equal(isDecodeShaped({ ...decode, numLmHeadRows: 2 }), false);
  assert.equal(isDecodeShaped({ ...decode, logitRows: Int32Array.of(0, 2, 1) }), false);
  const prefill = { ...decode, tokenIds: new Int32Array(4), queryStart: Int32Array.of(0, 2, 3, 4) };
  assert.equal(isDecodeShaped(prefill), false);
  const p = padDecodeBatch(decode, 4);
  assert.deepEqual([...p.seqLens], [...decode.seqLens, 0]);
  assert.deepEqual([...p.slotMapping], [...decode.slotMapping, -1]);
  assert.deepEqual([...p.tokenIds], [...decode.tokenIds, 0]);
  assert.deepEqual([...p.positions], [...decode.positions, 0]);
  assert.deepEqual([...p.queryStart], [0, 1, 2, 3, 4]);
  assert.deepEqual([...p.logitRows], [0, 1, 2, 3]);
  assert.equal(p.numLmHeadRows, 4);
  assert.deepEqual([...p.blockTables], [...decode.blockTables, 0, 0, 0]);
  assert.equal(isDecodeShaped(p), true);
  assert.throws(() => padDecodeBatch(decode, 2), RangeError);
});

/** A decode step: sequence i has seqLens[i] - 1 tokens cached in its own blocks from firstBlock. */
function decodeBatch(seqLens: number[], blockSize: number, width: number): ForwardBatch {
  const n = seqLens.length;
  const blockTables = new Int32Array(n * width);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < width; j++) blockTables[i * width + j] = 1 + i * width + j;
  }
  const positions = Int32Array.from(seqLens, (len) => len - 1);
  return {
    tokenIds: Int32Array.from(seqLens, (len, i) => 3 + ((len * 7 + i) % 400)),
    positions,
    slotMapping: Int32Array.from(
      positions,
      (pos, i) =>
        blockTables[i * width + Math.floor(pos / blockSize)] * blockSize + pos % blockSize,
    ),
    seqLens: Int32Array.from(seqLens),
    queryStart: Int32Array.from({ length: n + 1 }, (_, i) => i),
    blockTables,
    maxBlocksPerSeq: width,
    logitRows: Int32Array.from({ length: n }, (_, i) => i),
    blockCopies: new Int32Array(0),
  };
}

/** The prefill of sequence lengths seqLens minus their last token, in the decode batch's blocks. */
function prefillBatch(seqLens: number[], blockSize: number, width: number): ForwardBatch {
  const d = decodeBatch(seqLens, blockSize, width);
  const lens = seqLens.map((len) => len - 1);
  const numTokens = lens.reduce((a, c) => a + c, 0);
  const tokenIds = new Int32Array(numTokens);
  const positions = new Int32Array(numTokens);
  const slotMapping = new Int32Array(numTokens);
  const queryStart = new Int32Array(lens.length + 1);
  let row = 0;
  lens.forEach((len, i) => {
    for (let p = 0; p < len; p++, row++) {
      tokenIds[row] = 3 + ((p * 13 + i * 5) % 400);
      positions[row] = p;
      slotMapping[row] = d.blockTables[i * width + Math.floor(p / blockSize)] * blockSize +
        p % blockSize;
    }
    queryStart[i + 1] = row;
  });
  return {
    tokenIds,
    positions,
    slotMapping,
    seqLens: Int32Array.from(lens),
    queryStart,
    blockTables: d.blockTables,
    maxBlocksPerSeq: width,
    logitRows: Int32Array.from(lens, (_, i) => queryStart[i + 1] - 1),
    blockCopies: new Int32Array(0),
  };
}

Deno.test("padding rows leave the KV cache and the other rows' logits bit-identical", async () => {
  const backend = NativeBackend.open({ numThreads: 2 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const blockSize = 4;
  const width = 6;
  const seqLens = [5, 11, 18];
  const kvCache = new KvCache(backend, loaded.config, { blockSize, numBlocks: 1 + 8 * width });
  const executor = new LocalExecutor(backend, { model: loaded.model, kvCache }, {
    maxNumTokens: 64,
    maxNumSeqs: 8,
    maxBlocksPerSeq: width,
    blockSize,
  });
  const layerBytes = kvCache.numBlocks * kvCache.numKvHeads * blockSize * kvCache.headDim *
    dtypeSize(kvCache.dtype);
  const snapshot = () =>
    kvCache.layers.flatMap(({ k, v }) =>
      [k, v].map((ptr) => {
        const bytes = new Uint8Array(layerBytes);
        backend.download(bytes, ptr);
        return bytes;
      })
    );
  const restore = (saved: Uint8Array[]) =>
    kvCache.layers.forEach(({ k, v }, l) => {
      backend.upload(k, saved[2 * l]);
      backend.upload(v, saved[2 * l + 1]);
    });
  try {
    executor.execute(prefillBatch(seqLens, blockSize, width));
    const before = snapshot();
    const decode = decodeBatch(seqLens, blockSize, width);
    const eager = executor.execute(decode).slice();
    const eagerKv = snapshot();
    assert.notDeepEqual(eagerKv, before, "the decode step wrote its K/V");
    for (const rows of [4, 8]) {
      restore(before);
      const padded = executor.execute(padDecodeBatch(decode, rows));
      const vocab = loaded.config.vocabSize;
      assert.equal(padded.length, rows * vocab);
      assert.deepEqual(padded.subarray(0, seqLens.length * vocab), eager, `${rows} rows`);
      assert.deepEqual(snapshot(), eagerKv, `${rows} rows: the padding rows wrote no K/V`);
    }
    assert.equal(executor.graphStats, null, "the CPU build runs every step eagerly");
  } finally {
    executor.release();
    kvCache.release();
    loaded.release();
    backend.close();
  }
});

Deno.test("DecodeGraphs: a capture that fails ends, leaves no graph, and keeps the error", () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    const graphs = new DecodeGraphs(backend, 4);
    assert.throws(() => graphs.run(2, () => backend.synchronize()), ILLEGAL);
    assert.throws(() =>
      graphs.run(2, () => {
        throw new RangeError("planted");
      }), /planted/);
    assert.deepEqual(graphs.stats, { numCaptures: 0, numReplays: 0, buckets: [] });
    let calls = 0;
    graphs.run(2, () => calls++);
    graphs.run(2, () => calls++);
    graphs.run(4, () => calls++);
    assert.equal(calls, 2, "a bucket is captured once, then replayed");
    assert.deepEqual(graphs.stats, { numCaptures: 2, numReplays: 1, buckets: [2, 4] });
    graphs.release();
    backend.synchronize();
  } finally {
    backend.close();
  }
});

Deno.test("--enforce-eager reaches the engine options", () => {
  assert.equal(engineOptions({ model: "m", "enforce-eager": true }).enforceEager, true);
  assert.equal(engineOptions({ model: "m" }).enforceEager, undefined);
});

Deno.test("the CPU engine never captures: graphStats is null", async () => {
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const llm = LLM.over(backend, loaded, { blockSize: 4, numKvBlocks: 40 });
  try {
    llm.generate({ promptIds: [1, 403, 407], maxTokens: 4, sampling: GREEDY, ignoreEos: true });
    assert.equal(llm.local.graphStats?.(), null);
  } finally {
    llm.release();
    loaded.release();
    backend.close();
  }
});
