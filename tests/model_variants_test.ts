// The same stories260K weights stored other ways (sharded safetensors, F16, BF16) load and run:
// sharded F32 gives bit-identical logits, half-precision weights logits within rounding error.
import assert from "node:assert/strict";
import { DType, NativeBackend } from "../ffi/native.ts";
import { readSafetensorsDir, writeSafetensorsSharded } from "../src/formats/safetensors.ts";
import { readTensorBytes } from "../src/formats/tensor.ts";
import { LocalExecutor } from "../src/engine/executor.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";

const HF_DIR = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const PROMPT = [1, 403, 407, 261, 378];

/** Logits of every prompt position, from one prefill pass. */
async function promptLogits(backend: NativeBackend, path: string): Promise<Float32Array> {
  const loaded = await loadModel(backend, path, { showProgress: false });
  const kv = new KvCache(backend, loaded.config, { blockSize: 16, numBlocks: 1 });
  const n = PROMPT.length;
  // Below the scheduler: one hand-made batch straight into the executor.
  const executor = new LocalExecutor(backend, { model: loaded.model, kvCache: kv }, {
    maxNumTokens: n,
    maxNumSeqs: n,
    maxBlocksPerSeq: 1,
    blockSize: 16,
  });
  try {
    return executor.execute({
      tokenIds: Int32Array.from(PROMPT),
      positions: Int32Array.from(PROMPT.keys()),
      slotMapping: Int32Array.from(PROMPT.keys()),
      seqLens: Int32Array.of(n),
      queryStart: Int32Array.of(0, n),
      blockTables: Int32Array.of(0),
      maxBlocksPerSeq: 1,
      logitRows: Int32Array.from(PROMPT.keys()),
      blockCopies: new Int32Array(0),
    }).slice();
  } finally {
    executor.release();
    kv.release();
    loaded.release();
  }
}

type StoredDType = "F32" | "F16" | "BF16";

/**
 * Writes stories260K as sharded safetensors, each tensor in `dtypeOf(name)` (one dtype for all, or
 * per tensor), converting with the native kernel.
 */
async function writeVariant(
  backend: NativeBackend,
  dtypeOf: StoredDType | ((name: string) => StoredDType),
) {
  const dir = await Deno.makeTempDir({ prefix: "denollm-variant-" });
  for (const name of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${HF_DIR}/${name}`, `${dir}/${name}`);
  }
  const tensors = [];
  for (const info of (await readSafetensorsDir(HF_DIR)).values()) {
    const dtype = typeof dtypeOf === "string" ? dtypeOf : dtypeOf(info.name);
    const f32 = new Uint8Array(info.byteLength);
    await readTensorBytes(info, f32);
    let data = f32;
    if (dtype !== "F32") {
      const n = info.byteLength / 4;
      const src = backend.alloc(info.byteLength);
      const dst = backend.alloc(n * 2);
      backend.upload(src, f32);
      backend.convert(dst, DType[dtype], src, DType.F32, n);
      data = new Uint8Array(n * 2);
      backend.download(data, dst);
      backend.free(src);
      backend.free(dst);
    }
    tensors.push({ name: info.name, dtype, shape: info.shape, data });
  }
  const shards = await writeSafetensorsSharded(dir, tensors, { maxShardBytes: 300_000 });
  assert.ok(shards.length >= 2, `expected several shards, got ${shards.length}`);
  return dir;
}

Deno.test("sharded and half-precision checkpoints give the same logits", async (t) => {
  const backend = NativeBackend.open({ numThreads: 2 });
  const dirs: string[] = [];
  try {
    const reference = await promptLogits(backend, HF_DIR);
    await t.step("sharded F32 is bit-identical", async () => {
      const dir = await writeVariant(backend, "F32");
      dirs.push(dir);
      assert.deepEqual(await promptLogits(backend, dir), reference);
    });
    // Logits here span about ±15; half-precision weights move them by rounding noise only.
    for (const [dtype, tolerance] of [["F16", 0.05], ["BF16", 0.4]] as const) {
      await t.step(`${dtype} weights stay within ${tolerance}`, async () => {
        const dir = await writeVariant(backend, dtype);
        dirs.push(dir);
        const logits = await promptLogits(backend, dir);
        let maxDiff = 0;
        for (let i = 0; i < logits.length; i++) {
          maxDiff = Math.max(maxDiff, Math.abs(logits[i] - reference[i]));
        }
        console.log(`${dtype}: max |logit diff| ${maxDiff.toFixed(4)}`);
        assert.ok(maxDiff < tolerance, `max |diff| ${maxDiff}`);
        assert.ok(maxDiff > 0, "half precision should not be bit-identical to F32");
      });
    }
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
    backend.close();
  }
});

// Q, K, V (and gate, up) in different formats: each run of one format becomes its own part of
// the fused projection, kept in its format, never widened to f32.
const MIXED: Record<string, StoredDType> = {
  "self_attn.q_proj.weight": "F16",
  "self_attn.k_proj.weight": "BF16",
  "self_attn.v_proj.weight": "F32",
  "mlp.gate_proj.weight": "F32",
  "mlp.up_proj.weight": "F16",
};

Deno.test("a fused projection of mixed formats loads as one part per format run", async () => {
  const backend = NativeBackend.open({ numThreads: 2 });
  let dir: string | undefined;
  try {
    const reference = await promptLogits(backend, HF_DIR);
    dir = await writeVariant(
      backend,
      (name) => MIXED[name.replace(/^model\.layers\.\d+\./, "")] ?? "F32",
    );
    const loaded = await loadModel(backend, dir, { showProgress: false });
    try {
      const c = loaded.config;
      const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
      for (const layer of loaded.model.weights.layers) {
        const shape = (p: { parts: { dtype: number; rows: number; cols: number }[] }) =>
          p.parts.map(({ dtype, rows, cols }) => ({ dtype, rows, cols }));
        assert.deepEqual(shape(layer.qkv), [
          { dtype: DType.F16, rows: qDim, cols: c.hiddenSize },
          { dtype: DType.BF16, rows: kvDim, cols: c.hiddenSize },
          { dtype: DType.F32, rows: kvDim, cols: c.hiddenSize },
        ]);
        assert.equal(layer.qkv.rows, qDim + 2 * kvDim);
        assert.equal(layer.qkv.cols, c.hiddenSize);
        assert.deepEqual(shape(layer.gateUp), [
          { dtype: DType.F32, rows: c.intermediateSize, cols: c.hiddenSize },
          { dtype: DType.F16, rows: c.intermediateSize, cols: c.hiddenSize },
        ]);
        assert.equal(layer.o.dtype, DType.F32);
      }
    } finally {
      loaded.release();
    }
    // The forward pass runs the parts into their columns of one output row.
    const logits = await promptLogits(backend, dir);
    let maxDiff = 0;
    for (let i = 0; i < logits.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(logits[i] - reference[i]));
    }
    assert.ok(maxDiff < 0.4, `max |diff| ${maxDiff}`);
    assert.ok(maxDiff > 0, "half-precision parts should not be bit-identical to F32");
  } finally {
    if (dir !== undefined) await Deno.remove(dir, { recursive: true });
    backend.close();
  }
});
