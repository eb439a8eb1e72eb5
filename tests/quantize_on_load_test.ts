// --quantization on load: the accepted names, which tensors it quantizes and into which format,
// the errors for already quantized models and unfitting rows, and (with the quantized kernels)
// that a quantized stories260K and a random untied model stay close to their F32 logits.
import assert from "node:assert/strict";
import { formatByName, matrixBytes } from "../ffi/formats.ts";
import { DType, NativeBackend, NativeError } from "../ffi/native.ts";
import { engineOptions } from "../src/cli/engine_flags.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { UsageError } from "../src/errors.ts";
import { ModelFormatError } from "../src/formats/errors.ts";
import type { TensorInfo } from "../src/formats/tensor.ts";
import {
  checkFits,
  checkNotQuantized,
  fallbackChain,
  fittingFormat,
  isQuantizedWeight,
  parseQuantization,
  quantizationNames,
  type QuantizationSummary,
} from "../src/model/quantize.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";
import { getPreset } from "../tools/random_model/presets.ts";

const STORIES = new URL("../../shared/models/stories260K/", import.meta.url).pathname;

/** Why the quantized kernels cannot run in this build, or null when they can. */
function kernelsMissing(): string | null {
  const backend = NativeBackend.open({ numThreads: 1 });
  const probe = (fn: () => void) => {
    try {
      fn();
      return null;
    } catch (error) {
      if (error instanceof NativeError && (error.status === 3 || error.status === 5)) {
        return error.message;
      }
      throw error;
    }
  };
  try {
    const x = backend.alloc(128 * 4);
    const w = backend.alloc(matrixBytes(DType.INT8, 2, 128));
    const out = backend.alloc(2 * 4);
    return probe(() =>
      backend.quantize({ dst: w, dstDtype: DType.INT8, src: x, rows: 1, cols: 128 })
    ) ??
      probe(() => backend.matmul({ out, x, w, wDtype: DType.INT8, m: 1, n: 2, k: 128 }));
  } finally {
    backend.close();
  }
}

function info(name: string, dtype: string, shape: number[]): TensorInfo {
  return { name, dtype, shape, file: "m.gguf", byteOffset: 0, byteLength: 0 } as TensorInfo;
}

Deno.test("--quantization names", async (t) => {
  await t.step("int8, int4 and GGUF block formats in any case", () => {
    assert.equal(parseQuantization("int8").name, "int8");
    assert.equal(parseQuantization("INT4").name, "int4");
    assert.equal(parseQuantization("Q4_K").name, "q4_k");
    assert.equal(parseQuantization(" q8_0 ").name, "q8_0");
  });
  await t.step("plain formats, Q8_K and unknown names are refused with the list", () => {
    for (const bad of ["f16", "q8_k", "int3", ""]) {
      assert.throws(() => parseQuantization(bad), (e: Error) => {
        assert.ok(e instanceof RangeError);
        assert.match(e.message, /one of int8, int4, q4_0/);
        assert.ok(e.message.includes(JSON.stringify(bad)));
        return true;
      });
    }
    assert.ok(!quantizationNames().includes("q8_k"));
  });
  await t.step("engine flags carry the format's name; a bad one is a UsageError", () => {
    assert.equal(engineOptions({ model: "m", quantization: "INT4" }).quantization, "int4");
    assert.equal(engineOptions({ model: "m" }).quantization, undefined);
    assert.throws(() => engineOptions({ model: "m", quantization: "fp8" }), UsageError);
  });
});

Deno.test("which tensors --quantization quantizes", async (t) => {
  await t.step("projections and the head; embeddings only when untied; never norms", () => {
    const untied = { isTied: false };
    for (
      const name of [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.11.self_attn.o_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
        "lm_head.weight",
        "model.embed_tokens.weight",
      ]
    ) assert.ok(isQuantizedWeight(name, untied), name);
    assert.ok(!isQuantizedWeight("model.embed_tokens.weight", { isTied: true }));
    assert.ok(!isQuantizedWeight("model.layers.0.input_layernorm.weight", untied));
    assert.ok(!isQuantizedWeight("model.layers.0.self_attn.q_proj.bias", untied));
    assert.ok(!isQuantizedWeight("model.norm.weight", untied));
  });
  await t.step("rows that do not fit fall back: INT4 to INT8, K formats to legacy ones", () => {
    const names = (f: string) => fallbackChain(formatByName(f)!).map((x) => x.name);
    assert.deepEqual(names("int4"), ["int4", "int8"]);
    assert.deepEqual(names("q4_k"), ["q4_k", "q5_0"]);
    assert.deepEqual(names("q6_k"), ["q6_k", "q8_0"]);
    assert.deepEqual(names("q4_0"), ["q4_0"]);
    assert.equal(fittingFormat(formatByName("int4")!, 384)?.name, "int4");
    assert.equal(fittingFormat(formatByName("int4")!, 64)?.name, "int8");
    assert.equal(fittingFormat(formatByName("q4_k")!, 64)?.name, "q5_0");
    assert.equal(fittingFormat(formatByName("q4_k")!, 172), undefined);
  });
  await t.step("an unfitting row names the tensor, its shape, the format and block length", () => {
    assert.throws(
      () => checkFits("m.gguf", "blk.0.ffn_down.weight", [64, 172], formatByName("int4")!),
      (e: Error) => {
        assert.ok(e instanceof ModelFormatError);
        for (const part of ["blk.0.ffn_down.weight", "[64, 172]", "INT4", "block length 128"]) {
          assert.ok(e.message.includes(part), `${part} in ${e.message}`);
        }
        return true;
      },
    );
    checkFits("m.gguf", "x", [3, 256], formatByName("q4_k")!);
  });
});

Deno.test("--quantization on an already quantized model", async (t) => {
  const mixed = new Map([
    ["a", info("a", "Q4_K", [8, 256])],
    ["b", info("b", "Q6_K", [8, 256])],
    ["c", info("c", "Q4_K", [8, 256])],
    ["n", info("n", "F32", [256])],
  ]);
  await t.step("a different target is refused, naming what the file holds", () => {
    assert.throws(() => checkNotQuantized("m.gguf", mixed, formatByName("q4_k")!), (e: Error) => {
      assert.ok(e instanceof ModelFormatError);
      assert.match(e.message, /already quantized: it holds Q4_K \(2 tensors\), Q6_K \(1 tensors\)/);
      assert.match(e.message, /--quantization q4_k/);
      return true;
    });
  });
  await t.step("the target it already has is accepted, as are unquantized files", () => {
    const q8 = new Map([["a", info("a", "Q8_0", [8, 64])], ["n", info("n", "F32", [64])]]);
    checkNotQuantized("m.gguf", q8, formatByName("q8_0")!);
    assert.throws(() => checkNotQuantized("m.gguf", q8, formatByName("int8")!), ModelFormatError);
    checkNotQuantized("m.gguf", new Map([["n", info("n", "F16", [8, 64])]]), formatByName("int4")!);
  });
});

const missing = kernelsMissing();
if (missing !== null) console.log(`quantized load tests skipped: ${missing}`);

/** Mean KL(F32 || quantized) over the prompt-logprob rows of one prompt, and both weight sizes. */
async function klAgainstF32(
  modelPath: string,
  quantization: string,
): Promise<{ kl: number; sizes: number[]; summary?: QuantizationSummary }> {
  const promptIds = [1, ...Array.from({ length: 47 }, (_, i) => 3 + ((i * 37) % 400))];
  const rows: Map<number, number>[][] = [];
  const sizes: number[] = [];
  let summary: QuantizationSummary | undefined;
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    for (const q of [undefined, quantization]) {
      const loaded = await loadModel(
        backend,
        modelPath,
        q === undefined ? {} : { quantization: q },
      );
      const llm = LLM.over(backend, loaded, { maxModelLen: 64, maxNumSeqs: 1, numKvBlocks: 8 });
      try {
        const got: Map<number, number>[] = [];
        for (
          const out of llm.stream(promptIds, {
            maxTokens: 0,
            sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 },
            promptLogprobs: loaded.config.vocabSize,
          })
        ) {
          for (const e of out.promptLogprobs ?? []) {
            got.push(new Map(e.top.map((x) => [x.tokenId, x.logprob])));
          }
        }
        rows.push(got);
        sizes.push(loaded.model.weights.sizeBytes);
        summary ??= loaded.quantization;
      } finally {
        llm.release();
        loaded.release();
      }
    }
  } finally {
    backend.close();
  }
  assert.equal(rows[1].length, promptIds.length - 1);
  let kl = 0;
  rows[0].forEach((p, r) => {
    for (const [id, lp] of p) kl += Math.exp(lp) * (lp - rows[1][r].get(id)!);
  });
  return { kl: kl / rows[0].length, sizes, summary };
}

Deno.test({
  name: "--quantization on load keeps the logits close to F32",
  ignore: missing !== null,
  fn: async (t) => {
    await t.step(
      "stories260K int8: 35 projections quantized, tied embeddings stay F32",
      async () => {
        const { kl, sizes, summary } = await klAgainstF32(`${STORIES}stories260K-f32.gguf`, "int8");
        assert.ok(kl < 0.01, `KL ${kl}`);
        assert.equal(summary?.numQuantized, 35);
        assert.deepEqual(summary?.fallbacks, []);
        // 512 x 64 embeddings stay f32; the layers shrink about 4x.
        assert.ok(sizes[1] < sizes[0] * 0.6, `sizes ${sizes}`);
      },
    );
    await t.step("stories260K int4: every row (k = 64, 172) falls back to INT8", async () => {
      const { kl, summary } = await klAgainstF32(`${STORIES}stories260K-f32.gguf`, "int4");
      assert.ok(kl < 0.01, `KL ${kl}`);
      assert.equal(summary?.fallbacks.length, 35);
      assert.ok(summary!.fallbacks.every((f) => f.target === "INT4" && f.format === "INT8"));
      assert.deepEqual(
        summary!.fallbacks.find((f) => f.name === "model.layers.0.mlp.down_proj.weight")?.shape,
        [64, 172],
      );
    });
    await t.step("a random untied model (k = 256): int4 quantizes the embeddings too", async () => {
      const dir = await Deno.makeTempDir({ prefix: "denollm-qload-" });
      try {
        // Rows of 256 and 512: INT4's groups of 128 fit every projection.
        const preset = getPreset("tiny-llama-untied", { vocabSize: 512 });
        Object.assign(preset.config, {
          hidden_size: 256,
          intermediate_size: 512,
          head_dim: 64,
          num_attention_heads: 4,
          num_key_value_heads: 2,
        });
        const made = await generateRandomModel(preset, {
          outDir: dir,
          seed: 3,
          dtype: "F16",
          formats: ["gguf"],
        });
        const int8 = await klAgainstF32(made.ggufPath!, "int8");
        const int4 = await klAgainstF32(made.ggufPath!, "int4");
        // Random weights make every 4-bit format lose a lot here (measured: int4 1.38, ggml's
        // Q4_0 1.06, Q4_1 0.79), so INT4 is judged against Q4_1, the same asymmetric 4-bit idea
        // with groups of 32 instead of 128: coarser groups may cost up to twice its KL, no more.
        const q4_1 = await klAgainstF32(made.ggufPath!, "q4_1");
        assert.ok(int8.kl < int4.kl, `int8 ${int8.kl} < int4 ${int4.kl}`);
        assert.deepEqual(int4.summary?.fallbacks, []);
        // Every projection, the head and the untied embeddings.
        assert.equal(int4.summary?.numQuantized, 7 * preset.config.num_hidden_layers + 2);
        assert.ok(int4.sizes[1] < int8.sizes[1], `int4 ${int4.sizes} int8 ${int8.sizes}`);
        assert.ok(int4.kl < 2 * q4_1.kl, `int4 KL ${int4.kl}, q4_1 KL ${q4_1.kl}`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  },
});
