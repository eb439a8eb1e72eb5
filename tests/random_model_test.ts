// Tests for the random-model generator: determinism, HF/GGUF agreement, config round trips.

import assert from "node:assert/strict";
import { readGguf } from "../src/formats/gguf.ts";
import { readSafetensorsDir } from "../src/formats/safetensors.ts";
import { TensorFileReader, type TensorInfo } from "../src/formats/tensor.ts";
import { configFromHf, readHfConfig } from "../src/model/config.ts";
import { configFromGguf, hfTensorNames } from "../src/model/gguf_model.ts";
import { openModelSource } from "../src/model/load.ts";
import { getPreset, presetNames } from "../src/random_model/presets.ts";
import {
  f32ToBf16Bits,
  f32ToF16Bits,
  fillRandomNormal,
  generateRandomModel,
  llama3RopeFactors,
  permuteForGguf,
  unpermuteFromGguf,
} from "../src/random_model/random_model.ts";
import { ropeInvFreq } from "../src/model/rope.ts";

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "denollm-random-model-" });
}

async function readAll(tensors: Map<string, TensorInfo>): Promise<Map<string, Uint8Array>> {
  using reader = new TensorFileReader();
  const out = new Map<string, Uint8Array>();
  for (const [name, info] of tensors) {
    const bytes = new Uint8Array(info.byteLength);
    await reader.read(info, bytes);
    out.set(name, bytes);
  }
  return out;
}

function widen(bytes: Uint8Array, dtype: TensorInfo["dtype"]): Float32Array {
  if (dtype === "F32") return new Float32Array(bytes.slice().buffer);
  const half = new Uint16Array(bytes.slice().buffer);
  if (dtype === "F16") return Float32Array.from(new Float16Array(half.buffer));
  return new Float32Array(Uint32Array.from(half, (h) => h << 16).buffer);
}

Deno.test("dtype conversion", async (t) => {
  await t.step("f16 matches Float16Array on random bit patterns and edge values", () => {
    const values = new Float32Array(1 << 18);
    const bits = new Uint32Array(values.buffer);
    // Half random bit patterns, half a sweep over the whole f16 range and beyond (subnormals,
    // rounding ties, overflow), both deterministic.
    let state = 0x2545f491;
    for (let i = 0; i < bits.length; i += 2) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      bits[i] = state;
      bits[i + 1] = 0x33000000 + (i >>> 1) * 0xa81;
    }
    const edges = [
      0,
      -0,
      1,
      65504,
      65519.99,
      65520,
      1e9,
      Infinity,
      -Infinity,
      2 ** -14,
      2 ** -24,
      2 ** -25,
      1.5 * 2 ** -25,
      2 ** -26,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
    ];
    values.set(edges);
    const ours = new Uint16Array(values.length);
    f32ToF16Bits(values, ours);
    const native = new Uint16Array(new Float16Array(values).buffer);
    for (let i = 0; i < values.length; i++) {
      if (Number.isNaN(values[i])) {
        assert.ok((ours[i] & 0x7c00) === 0x7c00 && (ours[i] & 0x3ff) !== 0, "NaN stays NaN");
      } else if (ours[i] !== native[i]) {
        assert.fail(
          `f16(${values[i]}) = ${ours[i].toString(16)}, expected ${native[i].toString(16)}`,
        );
      }
    }
  });

  await t.step("bf16 rounds to nearest even", () => {
    const values = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, NaN]);
    const out = new Uint16Array(values.length);
    f32ToBf16Bits(values, out);
    assert.deepEqual([...out.subarray(0, 4)], [0x3f80, 0x3f80, 0x3f82, 0x3f81]);
    assert.ok(Number.isNaN(widen(new Uint8Array(out.buffer), "BF16")[4]));
  });
});

Deno.test("random normal fill has the requested moments", () => {
  const values = new Float32Array(200_000);
  fillRandomNormal(values, 12345, 0.5, 2);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
  assert.ok(Math.abs(mean - 0.5) < 0.02, `mean ${mean}`);
  assert.ok(Math.abs(Math.sqrt(variance) - 2) < 0.02, `std ${Math.sqrt(variance)}`);
});

Deno.test("Q/K permutation matches llama.cpp's LlamaModel.permute", () => {
  // One head of 4 rows: reshape(1, 2, 2, cols).swapaxes(1, 2) takes rows [0, 1, 2, 3] to [0, 2, 1, 3].
  const rows = Uint8Array.from([0, 0, 1, 1, 2, 2, 3, 3]);
  assert.deepEqual([...permuteForGguf(rows, [4, 2], 1, 1)], [0, 0, 2, 2, 1, 1, 3, 3]);
  // Two heads of 6 rows each, 1-D (a bias): within each head [a0 a1 a2 b0 b1 b2] → [a0 b0 a1 b1 ...].
  const bias = Uint8Array.from({ length: 12 }, (_, i) => i);
  const permuted = permuteForGguf(bias, [12], 2, 1);
  assert.deepEqual([...permuted], [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
  assert.deepEqual(unpermuteFromGguf(permuted, [12], 2, 1), bias);
});

Deno.test("llama3 rope_freqs reproduce HF rope scaling", () => {
  const preset = getPreset("llama-3.2-1b");
  const factors = llama3RopeFactors(preset.config);
  assert.ok(factors !== null);
  assert.equal(factors.length, 32);
  assert.equal(factors[0], 1); // highest frequency untouched
  assert.equal(factors[31], 32); // lowest divided by the factor
  const config = configFromHf(preset.config, "config.json");
  const expected = ropeInvFreq(config, 64);
  const viaFactors = ropeInvFreq({ ...config, ropeScaling: null }, 64, factors);
  for (let i = 0; i < 32; i++) {
    assert.ok(
      Math.abs(viaFactors[i] - expected[i]) <= 1e-6 * expected[i],
      `inv_freq[${i}]: ${viaFactors[i]} vs ${expected[i]}`,
    );
  }
  assert.equal(llama3RopeFactors(getPreset("smollm-135m").config), null);
});

Deno.test("presets", async (t) => {
  await t.step("real shapes are kept verbatim", () => {
    assert.deepEqual(presetNames(), [
      "stories15m",
      "smollm-135m",
      "qwen2.5-0.5b",
      "llama-3.2-1b",
      "tiny-qwen2",
      "tiny-llama-untied",
    ]);
    const qwen = configFromHf(getPreset("qwen2.5-0.5b").config, "config.json");
    assert.equal(qwen.numKvHeads, 2);
    assert.equal(qwen.headDim, 64);
    assert.equal(qwen.attentionBias, true);
    assert.equal(qwen.ropeTheta, 1e6);
    const llama = configFromHf(getPreset("llama-3.2-1b").config, "config.json");
    assert.deepEqual(llama.ropeScaling, {
      type: "llama3",
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
  });

  await t.step("overrides and bad names", () => {
    const small = getPreset("qwen2.5-0.5b", { numLayers: 2, vocabSize: 4096 });
    assert.equal(small.config.num_hidden_layers, 2);
    assert.equal(small.config.vocab_size, 4096);
    assert.equal(getPreset("qwen2.5-0.5b").config.num_hidden_layers, 24, "presets are copies");
    assert.throws(() => getPreset("gpt-5"), RangeError);
    assert.throws(() => getPreset("tiny-qwen2", { numLayers: 0 }), RangeError);
    assert.throws(() => getPreset("tiny-qwen2", { vocabSize: 10 }), RangeError);
  });
});

Deno.test("generated tiny models", async (t) => {
  const root = await tempDir();
  try {
    for (const [name, dtype] of [["tiny-llama-untied", "F16"], ["tiny-qwen2", "BF16"]] as const) {
      const dir = `${root}/${name}`;
      const model = await generateRandomModel(name, { seed: 7, dtype, outDir: dir });
      assert.equal(model.hfDir, dir);
      const ggufPath = model.ggufPath!;
      const g = await readGguf(ggufPath);
      const preset = getPreset(name);

      await t.step(`${name}: same seed, same bytes; other seed, other bytes`, async () => {
        const again = await generateRandomModel(name, { seed: 7, dtype, outDir: `${dir}-again` });
        const other = await generateRandomModel(name, { seed: 8, dtype, outDir: `${dir}-other` });
        const read = (d: string, f: string) => Deno.readFile(`${d}/${f}`);
        for (const file of ["model.safetensors", `${name}.gguf`, "tokenizer.json", "config.json"]) {
          assert.deepEqual(await read(`${dir}-again`, file), await read(dir, file), file);
        }
        assert.notDeepEqual(
          await read(`${dir}-other`, "model.safetensors"),
          await read(dir, "model.safetensors"),
        );
        assert.equal(again.numParams, model.numParams);
        assert.equal(other.ggufPath, `${dir}-other/${name}.gguf`);
      });

      await t.step(`${name}: config round-trips through both readers`, async () => {
        const hf = await readHfConfig(dir);
        const fromGguf = configFromGguf(g);
        const c = preset.config;
        assert.equal(hf.architecture, c.model_type);
        assert.equal(hf.hiddenSize, c.hidden_size);
        assert.equal(hf.numLayers, c.num_hidden_layers);
        assert.equal(hf.numKvHeads, c.num_key_value_heads);
        assert.equal(hf.headDim, c.head_dim);
        assert.equal(hf.vocabSize, c.vocab_size);
        assert.equal(hf.tieWordEmbeddings, c.tie_word_embeddings);
        assert.equal(hf.ropeStyle, "neox");
        assert.equal(fromGguf.ropeStyle, c.model_type === "llama" ? "interleaved" : "neox");
        const same = (x: typeof hf) => {
          const { ropeStyle: _, rmsNormEps, ...rest } = x;
          return { ...rest, rmsNormEps: Math.fround(rmsNormEps) }; // GGUF stores eps as f32
        };
        assert.deepEqual(same(fromGguf), same(hf));
        assert.equal(hf.eosTokenIds.length, 1);
        assert.equal(hf.bosTokenId !== null && hf.bosTokenId >= c.vocab_size - 5, true);
      });

      await t.step(`${name}: HF and GGUF hold the same weights`, async () => {
        const hfTensors = await readAll(await readSafetensorsDir(dir));
        const ggufInfos = hfTensorNames(g.tensors);
        const ggufTensors = await readAll(ggufInfos);
        assert.deepEqual(
          [...ggufTensors.keys()].sort(),
          [...hfTensors.keys()].sort(),
          "same tensor set (no output.weight when tied, no rope_freqs without llama3 scaling)",
        );
        const numHeads = preset.config.num_attention_heads;
        const numKvHeads = preset.config.num_key_value_heads;
        for (const [tensorName, hfBytes] of hfTensors) {
          const info = ggufInfos.get(tensorName)!;
          let ggufBytes = ggufTensors.get(tensorName)!;
          // Norms and biases are F32 in GGUF: exactly the HF values widened.
          if (info.shape.length === 1) assert.equal(info.dtype, "F32", tensorName);
          const heads = /q_proj/.test(tensorName)
            ? numHeads
            : /k_proj/.test(tensorName)
            ? numKvHeads
            : 0;
          if (preset.config.model_type === "llama" && heads > 0) {
            ggufBytes = unpermuteFromGguf(
              ggufBytes,
              info.shape,
              heads,
              info.dtype === "F32" ? 4 : 2,
            );
          }
          const expected = info.shape.length === 1
            ? new Uint8Array(widen(hfBytes, dtype).buffer)
            : hfBytes;
          assert.deepEqual(ggufBytes, expected, tensorName);
        }
      });

      await t.step(`${name}: weights have the documented scales`, async () => {
        const tensors = await readSafetensorsDir(dir);
        const stats = async (tensorName: string) => {
          const info = tensors.get(tensorName)!;
          const bytes = new Uint8Array(info.byteLength);
          using reader = new TensorFileReader();
          await reader.read(info, bytes);
          const v = widen(bytes, info.dtype);
          const mean = v.reduce((a, b) => a + b, 0) / v.length;
          return { mean, std: Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length) };
        };
        const hidden = preset.config.hidden_size;
        const embed = await stats("model.embed_tokens.weight");
        assert.ok(Math.abs(embed.std * Math.sqrt(hidden) - 1) < 0.05, `embed std ${embed.std}`);
        const q = await stats("model.layers.0.self_attn.q_proj.weight");
        assert.ok(Math.abs(q.std * Math.sqrt(hidden) - 1) < 0.05, `q std ${q.std}`);
        const norm = await stats("model.layers.1.input_layernorm.weight");
        assert.ok(Math.abs(norm.mean - 1) < 0.05, `norm mean ${norm.mean}`);
      });

      await t.step(`${name}: both formats open with their tokenizers`, async () => {
        const hfSource = await openModelSource(dir);
        const ggufSource = await openModelSource(ggufPath);
        const text = "Hello world, 123 café 😀\n";
        assert.deepEqual(ggufSource.tokenizer.encode(text), hfSource.tokenizer.encode(text));
        assert.ok(hfSource.chatTemplate?.includes("message"));
        assert.ok(ggufSource.chatTemplate?.includes("message"));
      });
    }

    await t.step("sharded safetensors hold the same tensors", async () => {
      const dir = `${root}/sharded`;
      await generateRandomModel("tiny-qwen2", {
        seed: 7,
        dtype: "BF16",
        outDir: dir,
        formats: ["hf"],
        maxShardBytes: 100_000,
      });
      const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.ok(names.includes("model.safetensors.index.json"));
      assert.ok(!names.includes("model.safetensors"));
      assert.ok(!names.includes("tiny-qwen2.gguf"), "only the formats asked for");
      assert.ok(names.filter((n) => n.endsWith(".safetensors")).length > 1);
      const sharded = await readAll(await readSafetensorsDir(dir));
      const single = await readAll(await readSafetensorsDir(`${root}/tiny-qwen2`));
      assert.deepEqual(sharded, single);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("llama.cpp random-model fixtures match what the generator writes today", async (t) => {
  const root = await tempDir();
  try {
    for (const preset of ["tiny-qwen2", "tiny-llama-untied"]) {
      await t.step(preset, async () => {
        const fixtureUrl = new URL(`./fixtures/llamacpp/random_${preset}.json`, import.meta.url);
        const { model } = JSON.parse(await Deno.readTextFile(fixtureUrl));
        const dir = `${root}/${preset}`;
        await generateRandomModel(preset, {
          seed: model.seed,
          dtype: model.dtype,
          outDir: dir,
        });
        const sha256 = async (path: string) => {
          const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
          return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join(
            "",
          );
        };
        const hint = "the generator changed; rerun tools/llamacpp/make_random_fixtures.sh";
        assert.equal(await sha256(`${dir}/${model.ggufFile}`), model.ggufSha256, hint);
        assert.equal(await sha256(`${dir}/model.safetensors`), model.safetensorsSha256, hint);
      });
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
