// The --type presets of `deno task quantize` and the recipe that picks each tensor's format: the
// output head gets more bits, Q4_K_M / Q5_K_M give more to attn_v and the outer ffn_down layers,
// and rows that do not fit a format's block fall back (docs/quantization.md has the table).
import { type Format, formatByName, formatInfo } from "../../ffi/formats.ts";
import { checkFits, fittingFormat } from "../../src/model/quantize.ts";

/** A --type preset: its base format and llama.cpp's general.file_type (enum llama_ftype). */
export interface QuantPreset {
  name: string;
  base: Format;
  fileType: number;
  /** Q4_K_M / Q5_K_M: attn_v and the outer ffn_down layers get Q6_K. */
  isMixture: boolean;
}

// llama_ftype values: the label llama.cpp prints ("Q4_K - Medium"); the K presets without a
// suffix are written as the _S variant, their closest label.
const PRESETS: Record<string, [base: string, fileType: number, isMixture: boolean]> = {
  q8_0: ["q8_0", 7, false],
  q4_0: ["q4_0", 2, false],
  q4_1: ["q4_1", 3, false],
  q5_0: ["q5_0", 8, false],
  q5_1: ["q5_1", 9, false],
  q2_k: ["q2_k", 10, false],
  q3_k: ["q3_k", 11, false],
  q4_k: ["q4_k", 14, false],
  q5_k: ["q5_k", 16, false],
  q6_k: ["q6_k", 18, false],
  q4_k_m: ["q4_k", 15, true],
  q5_k_m: ["q5_k", 17, true],
};

/** "q8_0, q4_0, …": the --type names. */
export function presetNames(): string {
  return Object.keys(PRESETS).join(", ");
}

/** The preset of a --type name (any case); RangeError listing the choices. */
export function quantPreset(name: string): QuantPreset {
  const key = name.trim().toLowerCase();
  const row = PRESETS[key];
  if (row === undefined) {
    throw new RangeError(
      `Expected --type to be one of ${presetNames()}, found ${JSON.stringify(name)}`,
    );
  }
  return { name: key, base: formatByName(row[0])!, fileType: row[1], isMixture: row[2] };
}

/** What the recipe needs to know about the model besides a tensor's name and shape. */
export interface RecipeContext {
  numLayers: number;
  /** Whether the file has output.weight; without it token_embd is also the output head. */
  hasOutput: boolean;
  /** Every 2-D weight gets the base format and a row that does not fit it is an error. */
  isPure?: boolean;
  /** The file, for errors. */
  file?: string;
}

/** The output format of one tensor (GGUF name, PyTorch-order shape). */
export function tensorFormat(
  name: string,
  shape: readonly number[],
  preset: QuantPreset,
  ctx: RecipeContext,
): Format {
  const f32 = formatInfo(0);
  // Norms, biases and rope_freqs stay f32 (llama.cpp keeps every 1-D tensor f32).
  if (shape.length < 2 || !name.endsWith(".weight")) return f32;
  if (ctx.isPure) {
    checkFits(ctx.file ?? "model", name, shape, preset.base);
    return preset.base;
  }
  const want = wantedFormat(name, preset, ctx);
  // Rows that fit neither the format nor its fallbacks are written as F16, as llama.cpp does.
  return fittingFormat(want, shape[shape.length - 1]) ?? formatByName("f16")!;
}

function wantedFormat(name: string, preset: QuantPreset, ctx: RecipeContext): Format {
  const q6k = formatByName("q6_k")!;
  const isHead = name === "output.weight" || (!ctx.hasOutput && name === "token_embd.weight");
  // The head's error reaches every logit: Q6_K for every preset but Q8_0 (already more bits).
  if (isHead) return preset.base.name === "q8_0" ? preset.base : q6k;
  if (!preset.isMixture) return preset.base;
  const layer = name.match(/^blk\.(\d+)\.(attn_v|ffn_down)\.weight$/);
  if (layer === null) return preset.base;
  // attn_v is small under GQA and its error is not averaged by softmax: Q6_K in every layer.
  if (layer[2] === "attn_v") return q6k;
  // ffn_down in the first and last eighth of the layers, where errors matter most.
  const i = Number(layer[1]);
  const edge = Math.max(1, Math.ceil(ctx.numLayers / 8));
  return i < edge || i >= ctx.numLayers - edge ? q6k : preset.base;
}
