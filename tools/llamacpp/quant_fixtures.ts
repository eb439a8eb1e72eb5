// The quantized GGUFs llama.cpp's own quantizer makes for the equality tests and benches: their
// F32 sources (stories260K, random-weight real-shaped models regenerated from a seed), the presets,
// and how to make each one (tools/llamacpp/quantize.sh). Shared by make_quant_fixtures.ts, which
// records llama.cpp's outputs, and tests/quant_llamacpp_test.ts, which remakes the files.
import { getPreset, type ModelPreset } from "../random_model/presets.ts";
import { generateRandomModel } from "../random_model/random_model.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

/** llama-quantize's preset names that quantize.c knows, the four the issue names first. */
export const QUANT_PRESETS = [
  "Q8_0",
  "Q4_0",
  "Q4_K_M",
  "Q6_K",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q2_K",
  "Q3_K_M",
  "Q5_K_M",
] as const;
export type QuantPreset = (typeof QUANT_PRESETS)[number];

/** An F32 model the quantized fixtures start from. */
export interface QuantSource {
  /** The fixture's name: tests/fixtures/llamacpp/quant_<name>.json. */
  name: string;
  prompt: string;
  /** A random-weight preset (real widths, fewer layers, a small vocab), or a file in shared/. */
  random?: {
    preset: string;
    seed: number;
    numLayers: number;
    vocabSize: number;
    /**
     * The planted successor structure (tools/random_model/successor.ts): greedy tokens win by
     * several logits, so 48 of them check the kernels instead of float rounding near ties.
     */
    peaked: boolean;
    /** Replaces the preset's widths (config.json fields). */
    widths?: { hidden_size: number; intermediate_size: number; head_dim: number };
  };
  sharedPath?: string;
}

const RANDOM_PROMPT = 'Once upon a time, 42 cats said: "héllo wörld" 😀\nThe end.';

/**
 * stories260K (dim 64: llama.cpp falls back from K blocks to Q5_0/Q8_0 and keeps the 172-column
 * ffn_down in F16), and two real widths: SmolLM-135M (576 hidden, 1536 ffn: K blocks on ffn_down)
 * and Qwen2.5-0.5B (896 hidden, 4864 ffn, QKV bias). Two layers and a 2048-token vocab keep their
 * F32 sources at ~30 MB. Neither width is a multiple of 256, so no preset writes Q2_K blocks
 * there: a small Llama of 256-wide rows covers the K formats everywhere. The random models are
 * peaked (`make-model --peaked`): random weights of the real shapes with a planted next-token
 * structure, because a plain random model's greedy tokens hinge on 0.01-0.1 logit margins that
 * q8-quantized activations turn over in either engine (llama.cpp flips against itself).
 */
export const QUANT_SOURCES: readonly QuantSource[] = [
  {
    name: "stories260K",
    prompt: "Once upon a time",
    sharedPath: "../shared/models/stories260K/stories260K-f32.gguf",
  },
  {
    name: "smollm-135m-2l",
    prompt: RANDOM_PROMPT,
    random: { preset: "smollm-135m", seed: 1, numLayers: 2, vocabSize: 2048, peaked: true },
  },
  {
    name: "qwen2.5-0.5b-2l",
    prompt: RANDOM_PROMPT,
    random: { preset: "qwen2.5-0.5b", seed: 1, numLayers: 2, vocabSize: 2048, peaked: true },
  },
  {
    name: "llama-256",
    prompt: RANDOM_PROMPT,
    random: {
      preset: "tiny-llama-untied",
      seed: 1,
      numLayers: 2,
      vocabSize: 1024,
      peaked: true,
      widths: { hidden_size: 256, intermediate_size: 512, head_dim: 64 },
    },
  },
];

/**
 * Files whose greedy tokens are not compared (tests/quant_llamacpp_test.ts skips them, visibly):
 * their logits are too close to a tie for 48 greedy tokens to check arithmetic. stories260K's
 * files keep ffn_down (172 columns) in F16, whose activations llama.cpp rounds to f16 and we do
 * not (2.9e-4 relative): with quantized activations that becomes ~0.3 of logprob, enough to flip
 * the margins of 0.02-0.25 listed here (measured with kvCacheDtype f16, llama.cpp's KV type).
 * The random models are peaked, so none of their files is skipped.
 */
export const GREEDY_SKIPPED: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  "stories260K": {
    Q4_1: "diverges at token 23: llama.cpp's margin 0.247, ours 0.017 the other way (F16 ffn_down)",
    Q5_1: "diverges at token 32: llama.cpp's top-1/top-2 margin 0.024",
    Q3_K_M: "diverges at token 45: llama.cpp's margin 0.070",
    Q5_K_M: "diverges at token 16: llama.cpp's top-1/top-2 margin 0.019",
  },
};

/** Greedy tokens compared per file. */
export const NUM_TOKENS = 48;

/** The model shape a random `source` is generated with. */
export function randomSourcePreset(source: QuantSource): ModelPreset {
  const r = source.random;
  if (r === undefined) throw new TypeError(`Expected a random-model source, found ${source.name}`);
  const preset = getPreset(r.preset, { numLayers: r.numLayers, vocabSize: r.vocabSize });
  Object.assign(preset.config, r.widths ?? {});
  return preset;
}

/** The F32 GGUF of `source`: the shared file, or the random model generated into `dir`. */
export async function sourceGguf(source: QuantSource, dir: string): Promise<string> {
  if (source.sharedPath !== undefined) return `${ROOT}${source.sharedPath}`;
  const r = source.random!;
  const preset = randomSourcePreset(source);
  const made = await generateRandomModel(preset, {
    outDir: `${dir}/${source.name}`,
    seed: r.seed,
    dtype: "F32",
    formats: ["gguf"],
    peaked: r.peaked,
  });
  return made.ggufPath!;
}

/** True when node-llama-cpp (tools/llamacpp/install.sh) is installed in .bench/llamacpp. */
export function hasLlamaCpp(): boolean {
  try {
    return Deno.statSync(`${ROOT}.bench/llamacpp/node_modules/node-llama-cpp/package.json`).isFile;
  } catch {
    return false;
  }
}

/** Runs llama.cpp's quantizer: `input` into `output` as `preset`. */
export async function quantizeWithLlamaCpp(
  input: string,
  output: string,
  preset: QuantPreset,
): Promise<void> {
  const result = await new Deno.Command("bash", {
    args: [`${ROOT}tools/llamacpp/quantize.sh`, input, output, preset],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!result.success) {
    const log = new TextDecoder().decode(result.stderr).split("\n").slice(-8).join("\n");
    throw new Error(`tools/llamacpp/quantize.sh ${input} ${output} ${preset} failed:\n${log}`);
  }
}

/** Hex sha256 of a file's bytes. */
export async function sha256File(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
