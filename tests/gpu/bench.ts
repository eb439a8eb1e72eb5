// GPU benchmark (not a test): prefill and decode throughput of the forward pass on a model
// directory, batch-1 decode against the memory-bandwidth roofline, the f16 matmul's weight
// bandwidth at m = 1 to 64 (no cliff past the gemv's m = 8), and optionally Hugging Face
// transformers `generate` on the same weights. Prints Markdown tables for an issue note.
//
//   deno run -A tests/gpu/bench.ts --model /tmp/l1b [--backend cuda] [--hf]
//       [--prefill-tokens 2048] [--context 512] [--decode-steps 32] [--batches 1,16,64]
import { parseArgs } from "node:util";
import { tensorBytes } from "../../ffi/formats.ts";
import { type DevicePtr, DType, NativeBackend } from "../../ffi/native.ts";
import { LocalExecutor } from "../../src/engine/executor.ts";
import type { ForwardBatch } from "../../src/engine/forward_batch.ts";
import { KvCache } from "../../src/kv/kv_cache.ts";
import { loadModel } from "../../src/model/load.ts";
import type { DeviceMatrix, Projection } from "../../src/model/weights.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    backend: { type: "string", default: "cuda" },
    hf: { type: "boolean", default: false },
    "prefill-tokens": { type: "string", default: "2048" },
    context: { type: "string", default: "512" },
    "decode-steps": { type: "string", default: "32" },
    batches: { type: "string", default: "1,16,64" },
  },
});
if (v.model === undefined) {
  console.error("usage: bench.ts --model DIR [--backend cuda|cpu] [--hf] ...");
  Deno.exit(2);
}
const backendName = v.backend as "cpu" | "cuda";
const prefillTokens = Number(v["prefill-tokens"]);
const context = Number(v.context);
const decodeSteps = Number(v["decode-steps"]);
const batches = v.batches!.split(",").map(Number);
const BLOCK_SIZE = 16;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const backend = NativeBackend.open({ backend: backendName });
const loaded = await loadModel(backend, v.model, { showProgress: false });
const config = loaded.config;
const model = loaded.model;
const maxBatch = Math.max(...batches);
const blocksPerSeq = Math.ceil(Math.max(prefillTokens, context + decodeSteps + 8) / BLOCK_SIZE);
const kv = new KvCache(backend, config, {
  blockSize: BLOCK_SIZE,
  numBlocks: blocksPerSeq * maxBatch + 1,
  dtype: DType.BF16,
});
// Below the scheduler: hand-made batches straight into the executor the engine uses.
const executor = new LocalExecutor(backend, { model, kvCache: kv }, {
  maxNumTokens: Math.max(prefillTokens, maxBatch),
  maxNumSeqs: maxBatch,
  maxBlocksPerSeq: blocksPerSeq,
  blockSize: BLOCK_SIZE,
});

/** Sequence s owns blocks [1 + s * blocksPerSeq, ...): block 0 stays the null block. */
function blockTable(seq: number): Int32Array {
  return Int32Array.from({ length: blocksPerSeq }, (_, j) => 1 + seq * blocksPerSeq + j);
}

function randomTokens(n: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s % config.vocabSize;
  });
}

/** One forward pass, timed to the returned logits (which wait for the device). */
function timeForward(batch: ForwardBatch): number {
  const started = performance.now();
  executor.execute(batch);
  return performance.now() - started;
}

// --- Device-to-device copy bandwidth (the roofline's memory speed), through the ABI's convert.

function copyBandwidth(): number {
  const bytes = 1 << 30;
  const src: DevicePtr = backend.alloc(bytes);
  const dst: DevicePtr = backend.alloc(bytes);
  try {
    const n = bytes / 4;
    backend.convert(dst, DType.F32, src, DType.F32, n);
    backend.synchronize();
    const reps = 10;
    const started = performance.now();
    for (let i = 0; i < reps; i++) backend.convert(dst, DType.F32, src, DType.F32, n);
    backend.synchronize();
    const seconds = (performance.now() - started) / 1000;
    return (2 * bytes * reps) / seconds; // read + write
  } finally {
    backend.free(src);
    backend.free(dst);
  }
}

// --- The f16 matmul at decode batch sizes: weight bytes per second on a 4096 x 4096 matrix. The
// gemv takes m <= 8 and the small-m WMMA kernel 8 < m <= 64; both should stream the weights near
// the copy bandwidth (a bandwidth-bound matmul reads each weight byte once whatever m).

const SWEEP_N = 4096, SWEEP_K = 4096, SWEEP_MS = [1, 8, 16, 32, 64];

function matmulSweep(): { m: number; us: number; gbs: number }[] {
  const x = backend.alloc(64 * SWEEP_K * 4), out = backend.alloc(64 * SWEEP_N * 4);
  const w = backend.alloc(SWEEP_N * SWEEP_K * 2); // zeros: the speed does not depend on values
  try {
    return SWEEP_MS.map((m) => {
      const call = () =>
        backend.matmul({ out, x, w, wDtype: DType.F16, m, n: SWEEP_N, k: SWEEP_K });
      call();
      backend.synchronize();
      const runs: number[] = [];
      for (let r = 0; r < 3; r++) {
        const started = performance.now();
        for (let i = 0; i < 50; i++) call();
        backend.synchronize();
        runs.push((performance.now() - started) / 1000 / 50);
      }
      const seconds = median(runs);
      return { m, us: seconds * 1e6, gbs: (SWEEP_N * SWEEP_K * 2) / seconds };
    });
  } finally {
    backend.free(x);
    backend.free(out);
    backend.free(w);
  }
}

// --- Prefill: one sequence of prefillTokens tokens.

function prefill(): number {
  const n = prefillTokens;
  const table = blockTable(0);
  const batch: ForwardBatch = {
    tokenIds: randomTokens(n, 1),
    positions: Int32Array.from({ length: n }, (_, i) => i),
    slotMapping: Int32Array.from(
      { length: n },
      (_, i) => table[Math.floor(i / BLOCK_SIZE)] * BLOCK_SIZE + i % BLOCK_SIZE,
    ),
    seqLens: Int32Array.of(n),
    queryStart: Int32Array.of(0, n),
    blockTables: table,
    maxBlocksPerSeq: blocksPerSeq,
    logitRows: Int32Array.of(n - 1),
    blockCopies: new Int32Array(0),
  };
  timeForward(batch); // warm-up: scratch allocation, kernel loading
  const times = [0, 1, 2].map(() => timeForward(batch));
  return n / (median(times) / 1000);
}

// --- Decode: `batch` sequences with `context` cached tokens each, one new token per step. The
// cache holds whatever the prefill left (timing does not depend on the values).

function decode(batch: number): { tokPerS: number; stepMs: number } {
  const tables = new Int32Array(batch * blocksPerSeq);
  for (let s = 0; s < batch; s++) tables.set(blockTable(s), s * blocksPerSeq);
  const step = (i: number): ForwardBatch => {
    const position = context + i;
    const slot = (s: number) =>
      tables[s * blocksPerSeq + Math.floor(position / BLOCK_SIZE)] * BLOCK_SIZE +
      position % BLOCK_SIZE;
    return {
      tokenIds: randomTokens(batch, 100 + i),
      positions: new Int32Array(batch).fill(position),
      slotMapping: Int32Array.from({ length: batch }, (_, s) => slot(s)),
      seqLens: new Int32Array(batch).fill(position + 1),
      queryStart: Int32Array.from({ length: batch + 1 }, (_, s) => s),
      blockTables: tables,
      maxBlocksPerSeq: blocksPerSeq,
      logitRows: Int32Array.from({ length: batch }, (_, s) => s),
      blockCopies: new Int32Array(0),
    };
  };
  for (let i = 0; i < 3; i++) timeForward(step(i));
  const times: number[] = [];
  for (let i = 0; i < decodeSteps; i++) times.push(timeForward(step(3 + i)));
  const stepMs = median(times);
  return { tokPerS: batch / (stepMs / 1000), stepMs };
}

// --- Bytes a batch-1 decode step must read: every weight matrix once, norms, and the KV cache.

function matrixBytes(m: DeviceMatrix | Projection): number {
  if ("parts" in m) return m.parts.reduce((sum, part) => sum + matrixBytes(part), 0);
  return tensorBytes(m.dtype, m.rows * m.cols);
}

function decodeBytes(contextLen: number): number {
  const w = model.weights;
  let bytes = matrixBytes(w.lmHead) + tensorBytes(w.embed.dtype, config.hiddenSize);
  for (const layer of w.layers) {
    bytes += matrixBytes(layer.qkv) + matrixBytes(layer.o) + matrixBytes(layer.gateUp) +
      matrixBytes(layer.down) + 2 * config.hiddenSize * 4;
  }
  const kvBytes = 2 * config.numLayers *
    tensorBytes(kv.dtype, contextLen * config.numKvHeads * config.headDim);
  return bytes + kvBytes;
}

// --- Hugging Face transformers on the same weights (python3 with torch + transformers).

interface HfResult {
  prefillTokPerS: number;
  decode: Record<string, number>;
  device: string;
  versions: string;
}

async function runHf(): Promise<HfResult | string> {
  const script = new URL("./hf_bench.py", import.meta.url).pathname;
  try {
    const out = await new Deno.Command("python3", {
      args: [
        script,
        "--model",
        v.model!,
        "--prefill-tokens",
        String(prefillTokens),
        "--context",
        String(context),
        "--decode-steps",
        String(decodeSteps),
        "--batches",
        v.batches!,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (out.code !== 0) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
      return `python3 hf_bench.py failed (exit ${out.code}): ${err}`;
    }
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    return JSON.parse(lines[lines.length - 1]) as HfResult;
  } catch (error) {
    return `python3 could not run: ${(error as Error).message}`;
  }
}

const bandwidth = copyBandwidth();
const sweep = matmulSweep();
const prefillTokPerS = prefill();
const decodes = new Map(batches.map((b) => [b, decode(b)]));
executor.release();
kv.release();
loaded.release();
backend.close();
const hf = v.hf ? await runHf() : null;

const b1 = decodes.get(1);
const gb = (x: number) => (x / 1e9).toFixed(1);
console.log(
  `\nmodel ${v.model}: ${config.numLayers} layers, hidden ${config.hiddenSize}, ` +
    `heads ${config.numHeads}/${config.numKvHeads}, vocab ${config.vocabSize}, ` +
    `weights ${gb(model.weights.sizeBytes)} GB; backend ${backendName}, KV cache bf16, ` +
    `block ${BLOCK_SIZE}; decode at context ${context}, median of ${decodeSteps} steps ` +
    `(each step includes the logits download)`,
);
console.log(`device-to-device copy bandwidth: ${gb(bandwidth)} GB/s (read + write)`);
console.log("");
console.log(`| f16 matmul ${SWEEP_N}x${SWEEP_K}, m | us per call | weight GB/s | % of copy |`);
console.log("| --- | --- | --- | --- |");
for (const r of sweep) {
  console.log(
    `| ${r.m} | ${r.us.toFixed(1)} | ${gb(r.gbs)} | ${(100 * r.gbs / bandwidth).toFixed(1)}% |`,
  );
}
const at = (m: number) => sweep.find((r) => r.m === m)!.gbs;
console.log(
  `f16 matmul weight bandwidth at m = 64: ${(100 * at(64) / at(8)).toFixed(0)}% of m = 8's ` +
    `(m = 16: ${(100 * at(16) / at(8)).toFixed(0)}%; 100% = no cliff past the gemv)`,
);
console.log("");
console.log("| metric | denollm | HF transformers | denollm / HF |");
console.log("| --- | --- | --- | --- |");
const hfOk = hf !== null && typeof hf !== "string";
const row = (name: string, ours: number, theirs: number | undefined) =>
  console.log(
    `| ${name} | ${ours.toFixed(1)} tok/s | ${
      theirs === undefined ? "-" : `${theirs.toFixed(1)} tok/s`
    } | ${theirs === undefined ? "-" : (ours / theirs).toFixed(2)} |`,
  );
row(`prefill ${prefillTokens} tokens`, prefillTokPerS, hfOk ? hf.prefillTokPerS : undefined);
for (const [batch, d] of decodes) {
  row(
    `decode batch ${batch} (${d.stepMs.toFixed(2)} ms/step)`,
    d.tokPerS,
    hfOk ? hf.decode[String(batch)] : undefined,
  );
}
if (b1 !== undefined) {
  const bytes = decodeBytes(context);
  const achieved = bytes / (b1.stepMs / 1000);
  console.log(
    `\nbatch-1 decode: ${gb(bytes)} GB per step (weights + KV) in ${b1.stepMs.toFixed(2)} ms = ` +
      `${gb(achieved)} GB/s = ${(100 * achieved / bandwidth).toFixed(1)}% of the copy bandwidth ` +
      `roofline (${(bandwidth / bytes).toFixed(0)} tok/s at roofline)`,
  );
}
if (hfOk) console.log(`HF: ${hf.versions} on ${hf.device}`);
else if (typeof hf === "string") console.log(`HF comparison skipped: ${hf}`);
