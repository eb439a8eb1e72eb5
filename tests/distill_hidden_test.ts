// distill-export --hidden-layers on stories260K: each exported layer's rows equal what the model
// computes as its output. Layer l's output, put through the final norm, is the final-norm hidden
// state of the same model cut after layer l; that state comes from a plain forward pass of the
// cut model (executor.hiddenRows, what /v1/embeddings pools), every position at once.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { parseHiddenLayers } from "../src/cli/distill_export.ts";
import { teacherParams, teacherTopK } from "../src/distill/distill_export.ts";
import { LocalExecutor } from "../src/engine/executor.ts";
import { LLM } from "../src/engine/llm.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { LlamaModel } from "../src/model/llama.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { ropeInvFreq } from "../src/model/rope.ts";
import { MODEL } from "./api_helpers.ts";
import { readExport } from "./distill_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/**
 * The export and the cut model run the same f32 kernels on the same rows; the final norm here is
 * done in f64 from the exported f32 rows, so they differ by f32 rounding of values of size ~1-10
 * (measured: about 1e-6). Batch composition does not change a row (the batch-invariance tests).
 */
const TOLERANCE = 2e-5;

const TEXTS = [
  "Once upon a time, there was a little girl named Lily. She loved to play outside.",
  "The dog ran to the park",
  "Hi",
];

/** Final-norm hidden states of every position of `ids` through the first numLayers layers. */
function cutModelHidden(
  backend: NativeBackend,
  loaded: LoadedModel,
  numLayers: number,
  ids: number[],
): Float32Array {
  const c = loaded.config;
  const config = { ...c, numLayers };
  const weights = {
    ...loaded.model.weights,
    layers: loaded.model.weights.layers.slice(0, numLayers),
  };
  const model = new LlamaModel(backend, config, weights, ropeInvFreq(c, c.headDim));
  const blockSize = 16;
  const numBlocks = Math.ceil(ids.length / blockSize);
  const kvCache = new KvCache(backend, config, { blockSize, numBlocks: numBlocks + 1 });
  const n = ids.length;
  const executor = new LocalExecutor(backend, { model, kvCache }, {
    maxNumTokens: n,
    maxNumSeqs: 1,
    maxNumLogitRows: n,
    maxBlocksPerSeq: numBlocks,
    blockSize,
  });
  try {
    executor.execute({
      tokenIds: Int32Array.from(ids),
      positions: Int32Array.from({ length: n }, (_, i) => i),
      slotMapping: Int32Array.from({ length: n }, (_, i) => blockSize + i),
      seqLens: Int32Array.of(n),
      queryStart: Int32Array.of(0, n),
      blockTables: Int32Array.from({ length: numBlocks }, (_, i) => 1 + i),
      maxBlocksPerSeq: numBlocks,
      logitRows: Int32Array.from({ length: n }, (_, i) => i),
      blockCopies: new Int32Array(0),
    });
    return executor.hiddenRows(n).slice();
  } finally {
    executor.release();
    kvCache.release();
    model.release();
  }
}

/** RMSNorm of each row with the model's final-norm weight, in f64. */
function finalNorm(rows: Float32Array, weight: Float32Array, eps: number): Float64Array {
  const dim = weight.length;
  const out = new Float64Array(rows.length);
  for (let r = 0; r < rows.length / dim; r++) {
    let sum = 0;
    for (let i = 0; i < dim; i++) sum += rows[r * dim + i] ** 2;
    const scale = 1 / Math.sqrt(sum / dim + eps);
    for (let i = 0; i < dim; i++) out[r * dim + i] = rows[r * dim + i] * scale * weight[i];
  }
  return out;
}

Deno.test("--hidden-layers: indices, negatives from the end, errors", () => {
  assert.deepEqual(parseHiddenLayers("0,2,-1", 5), [0, 2, 4]);
  assert.deepEqual(parseHiddenLayers(" -5 ", 5), [0]);
  assert.throws(() => parseHiddenLayers("5", 5), /expected .* from -5 to 4 .* got "5"/);
  assert.throws(() => parseHiddenLayers("-6", 5), /got "-6"/);
  assert.throws(() => parseHiddenLayers("1,,2", 5), /got ""/);
  assert.throws(() => parseHiddenLayers("1.5", 5), /got "1.5"/);
  assert.throws(() => parseHiddenLayers("4,-1", 5), /names a layer twice/);
});

Deno.test("distill-export --hidden-layers: exported rows are the model's layer outputs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_distill_hidden_" });
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  try {
    const input = `${dir}/texts.jsonl`;
    await Deno.writeTextFile(input, TEXTS.map((text) => JSON.stringify({ text })).join("\n"));
    const out = `${dir}/teacher.safetensors`;
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        "--allow-ffi",
        MAIN,
        "distill-export",
        "--model",
        MODEL,
        "--input",
        input,
        "--top-k",
        "3",
        "--out",
        out,
        // parseArgs takes a value starting with "-" only after "=".
        "--hidden-layers=-1,0,2",
        "--threads",
        "1",
        "--kv-cache-memory",
        "8M",
        "--max-model-len",
        "512",
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    const { metadata, tensors } = await readExport(out);
    const c = loaded.config;
    assert.equal(c.numLayers, 5);
    assert.deepEqual(JSON.parse(metadata.hidden_layers), [4, 0, 2]);
    assert.equal(metadata.hidden_size, String(c.hiddenSize));

    const weight = new Float32Array(c.hiddenSize);
    backend.download(weight, loaded.model.weights.finalNorm);
    let maxDiff = 0;
    for (const [i] of TEXTS.entries()) {
      const ids = Array.from(tensors.get(`t${i}.token_ids`)!.data);
      const n = ids.length;
      for (const layer of [4, 0, 2]) {
        const t = tensors.get(`t${i}.hidden.${layer}`)!;
        assert.equal(t.dtype, "F32");
        assert.deepEqual(t.shape, [n, c.hiddenSize]);
        const ours = finalNorm(t.data as Float32Array, weight, c.rmsNormEps);
        const expected = cutModelHidden(backend, loaded, layer + 1, ids);
        for (let k = 0; k < ours.length; k++) {
          const diff = Math.abs(ours[k] - expected[k]);
          maxDiff = Math.max(maxDiff, diff);
          assert.ok(
            diff <= TOLERANCE,
            `text ${i} layer ${layer} element ${k}: ${ours[k]} vs ${expected[k]}`,
          );
        }
      }
    }
    console.log(
      `largest difference from the cut model's final-norm state: ${maxDiff.toExponential(2)}`,
    );
  } finally {
    loaded.release();
    backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hidden states in the engine: chunked and batched texts, errors", async (t) => {
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const texts = TEXTS.map((text) => loaded.tokenizer.encode(text));
  const dim = loaded.config.hiddenSize;
  try {
    // One text alone, in one step: the reference rows.
    const alone = LLM.over(backend, loaded, { numKvBlocks: 64, captureLayers: [3, 1] });
    const reference = texts.map((ids) =>
      teacherTopK(alone.engine, [ids], { topK: 2, maxInFlight: 1, hiddenLayers: [3, 1] })[0]
    );
    await t.step("an engine without captured layers refuses the request", () => {
      assert.throws(
        () =>
          alone.engine.addRequest("x", texts[0], {
            ...teacherParams(2, true),
            promptLogprobs: undefined,
          }),
        /need prompt logprobs/,
      );
      alone.release();
      const plain = LLM.over(backend, loaded, { numKvBlocks: 64 });
      try {
        assert.throws(
          () => teacherTopK(plain.engine, texts, { topK: 2, maxInFlight: 2, hiddenLayers: [0] }),
          /need an engine that captures layers/,
        );
      } finally {
        plain.release();
      }
    });
    await t.step("chunked and batched with other texts: the same rows", () => {
      // 8-token steps chunk the longer prompts and batch chunks of several texts together.
      const tight = LLM.over(backend, loaded, {
        numKvBlocks: 16,
        blockSize: 16,
        maxNumBatchedTokens: 8,
        maxNumSeqs: 4,
        maxModelLen: 64,
        captureLayers: [3, 1],
      });
      try {
        const got = teacherTopK(tight.engine, [...texts, ...texts], {
          topK: 2,
          maxInFlight: 6,
          hiddenLayers: [3, 1],
        });
        let maxDiff = 0;
        got.forEach((target, i) => {
          const ref = reference[i % texts.length];
          assert.equal(target.hidden!.length, 2);
          for (const k of [0, 1]) {
            assert.equal(target.hidden![k].length, ref.tokenIds.length * dim);
            target.hidden![k].forEach((x, e) => {
              maxDiff = Math.max(maxDiff, Math.abs(x - ref.hidden![k][e]));
              assert.ok(Math.abs(x - ref.hidden![k][e]) <= TOLERANCE, `text ${i} slot ${k} ${e}`);
            });
          }
        });
        console.log(`largest difference from one text alone: ${maxDiff.toExponential(2)}`);
      } finally {
        tight.release();
      }
    });
  } finally {
    loaded.release();
    backend.close();
  }
});
