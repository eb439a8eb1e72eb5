// --sparsity 2:4 and the W8A8 flags on load: an already pruned checkpoint is detected and stored as
// it is (the same model as pruning at load), Wanda needs and uses the calibration, and every
// combination without kernels is refused at start-up with a message naming it.
import assert from "node:assert/strict";
import { LLM } from "../src/engine/llm.ts";
import { calibrate, writePrunedModel } from "../tools/calibrate.ts";
import type { EngineOptions } from "../src/engine/local_engine.ts";
import { is2of4, prune2of4 } from "../src/model/sparsity.ts";
import { NativeBackend } from "../ffi/native.ts";
import { quantizeGguf } from "../tools/quantize/quantize_gguf.ts";
import { quantPreset } from "../tools/quantize/recipe.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MODEL = `${ROOT}../shared/models/stories260K/stories260K-f32.gguf`;
const TEXT = `${ROOT}bench/fixtures/aesop.txt`;
const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0 };

async function run(options: Partial<EngineOptions>, modelPath = MODEL) {
  const llm = await LLM.load({
    modelPath,
    numThreads: 1,
    maxNumSeqs: 1,
    maxModelLen: 128,
    numKvBlocks: 12,
    ...options,
  });
  try {
    const r = llm.generate({ promptIds: [1, 400, 300, 200], maxTokens: 24, sampling: GREEDY });
    const loaded = (llm.local as unknown as { loaded: { compression?: string } }).loaded;
    return { tokens: r.tokenIds, compression: loaded.compression ?? "" };
  } finally {
    llm.release();
  }
}

Deno.test("prune2of4 keeps the 2 largest of every 4 (by |w|, or |w| * norm for Wanda)", () => {
  const w = Float32Array.of(1, -3, 2, 0.5, 4, 3, 2, 1);
  prune2of4(w, 8);
  assert.deepEqual([...w], [0, -3, 2, 0, 4, 3, 0, 0]);
  assert.ok(is2of4(w, 8));
  const v = Float32Array.of(1, -3, 2, 0.5);
  prune2of4(v, 4, Float32Array.of(10, 1, 1, 10));
  assert.deepEqual([...v], [1, 0, 0, 0.5]); // scores 10, 3, 2, 5
  assert.equal(is2of4(Float32Array.of(1, 1, 1, 0), 4), false);
});

Deno.test("a 2:4 checkpoint is detected, not pruned again, and is the model pruning at load gives", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm-sparse-" });
  try {
    const pruned = `${dir}/pruned.gguf`;
    await writePrunedModel(MODEL, pruned);
    const atLoad = await run({ sparsity: "2:4-magnitude" });
    const detected = await run({ sparsity: "2:4" }, pruned);
    assert.match(atLoad.compression, /35 pruned, 0 already 2:4/);
    assert.match(detected.compression, /0 pruned, 35 already 2:4/);
    assert.deepEqual(detected.tokens, atLoad.tokens);
    // Combined rows: the same pruned model with INT8 and W8A8 weights loads and runs.
    for (const q of ["int8", "w8a8", "int4"]) {
      const r = await run({ sparsity: "2:4", quantization: q }, pruned);
      assert.match(r.compression, /int8_2_4|w8a8_2_4/, q);
      assert.equal(r.tokens.length, 24);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Wanda uses the calibration's activation norms", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm-wanda-" });
  try {
    const cal = `${dir}/cal.json`;
    await Deno.writeTextFile(
      cal,
      JSON.stringify(await calibrate({ modelPath: MODEL, textPath: TEXT, alpha: 0.5 })),
    );
    const wanda = await run({ sparsity: "2:4", calibration: cal });
    assert.match(wanda.compression, /2:4 wanda: 35 pruned/);
    const magnitude = await run({ sparsity: "2:4-magnitude" });
    assert.notDeepEqual(wanda.tokens, magnitude.tokens, "a different pruning, a different model");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unsupported combinations fail at start-up, naming the problem", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm-refuse-" });
  try {
    const badCal = `${dir}/bad.json`;
    await Deno.writeTextFile(badCal, JSON.stringify({ format: "denollm-calibration", version: 1 }));
    // A checkpoint whose projections are already quantized (Q8_0) has nothing to compress from.
    const q8 = `${dir}/q8_0.gguf`;
    const backend = NativeBackend.open({ numThreads: 1 });
    try {
      await quantizeGguf(backend, { inPath: MODEL, outPath: q8 }, quantPreset("q8_0"));
    } finally {
      backend.close();
    }
    await assert.rejects(
      () => run({ quantization: "w8a8" }, q8),
      /expects F32, F16 or BF16 layer weights, but .* is Q8_0/,
    );
    const cases: [Partial<EngineOptions>, RegExp][] = [
      [{ quantization: "w8a8-mixed" }, /w8a8-mixed needs --calibration FILE/],
      [{ sparsity: "2:4-wanda" }, /2:4-wanda needs --calibration FILE/],
      [
        { sparsity: "2:4", quantization: "q4_k" },
        /combines with --quantization int8, int4 or w8a8/,
      ],
      [{ sparsity: "3:4" }, /Expected --sparsity to be 2:4/],
      [{ quantization: "w8a8", calibration: badCal }, /does not fit the model: expected 5 layers/],
      [{ calibration: badCal }, /--calibration is read by --quantization w8a8/],
      [{ quantization: "w8a8", calibration: `${dir}/missing.json` }, /Expected --calibration/],
    ];
    for (const [options, message] of cases) {
      await t.step(JSON.stringify(options), async () => {
        await assert.rejects(() => run(options), message);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
