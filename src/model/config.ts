// The model description the engine needs, normalized from a Hugging Face config.json or GGUF metadata.
import { ModelFormatError } from "../formats/errors.ts";

export type Architecture = "llama" | "mistral" | "qwen2";

/** Llama-3 style frequency-dependent scaling, or plain linear position interpolation. */
export type RopeScaling =
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  }
  | { type: "linear"; factor: number };

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** Hugging Face checkpoints rotate halves; GGUF llama checkpoints keep Meta's interleaved pairs. */
  ropeStyle: "neox" | "interleaved";
  /** Whether Q, K and V projections carry a bias (Qwen2). */
  attentionBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

const ARCHITECTURES: Record<string, Architecture> = {
  llama: "llama",
  mistral: "mistral",
  qwen2: "qwen2",
};

type Json = Record<string, unknown>;

function num(json: Json, key: string, file: string, fallback?: number): number {
  const value = json[key] ?? fallback;
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new ModelFormatError(
      file,
      `expected a number for "${key}", found ${
        value === undefined ? "nothing" : JSON.stringify(value)
      }`,
    );
  }
  return value;
}

function positiveInt(json: Json, key: string, file: string, fallback?: number): number {
  const value = num(json, key, file, fallback);
  if (!Number.isInteger(value) || value <= 0) {
    throw new ModelFormatError(file, `expected a positive integer for "${key}", found ${value}`);
  }
  return value;
}

/** A token id or list of ids, as HF configs spell eos_token_id. */
export function tokenIdList(value: unknown): number[] {
  if (typeof value === "number") return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number");
  return [];
}

function parseRopeScaling(raw: unknown, file: string): RopeScaling | null {
  if (raw === null || raw === undefined) return null;
  if (typeof raw !== "object") {
    throw new ModelFormatError(file, `expected an object for "rope_scaling", found ${raw}`);
  }
  const scaling = raw as Json;
  const type = scaling.rope_type ?? scaling.type;
  if (type === "default") return null;
  if (type === "llama3") {
    return {
      type: "llama3",
      factor: num(scaling, "factor", file),
      lowFreqFactor: num(scaling, "low_freq_factor", file),
      highFreqFactor: num(scaling, "high_freq_factor", file),
      originalMaxPositionEmbeddings: positiveInt(scaling, "original_max_position_embeddings", file),
    };
  }
  if (type === "linear") return { type: "linear", factor: num(scaling, "factor", file) };
  throw new ModelFormatError(
    file,
    `unsupported rope_scaling type ${JSON.stringify(type)}; supported: default, linear, llama3`,
  );
}

/** Normalizes a parsed config.json. `file` names it in errors. */
export function configFromHf(json: Json, file: string): ModelConfig {
  const modelType = String(json.model_type ?? "");
  const architecture = ARCHITECTURES[modelType];
  if (architecture === undefined) {
    throw new ModelFormatError(
      file,
      `unsupported architecture model_type=${JSON.stringify(json.model_type)}; supported: ${
        Object.keys(ARCHITECTURES).join(", ")
      }`,
    );
  }
  const hiddenSize = positiveInt(json, "hidden_size", file);
  const numHeads = positiveInt(json, "num_attention_heads", file);
  const numKvHeads = positiveInt(json, "num_key_value_heads", file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(
      file,
      `num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
    );
  }
  const headDim = json.head_dim == null
    ? hiddenSize / numHeads
    : positiveInt(json, "head_dim", file);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelFormatError(file, `head dimension must be an even integer, found ${headDim}`);
  }
  const act = json.hidden_act ?? json.hidden_activation ?? "silu";
  if (act !== "silu") {
    throw new ModelFormatError(
      file,
      `unsupported hidden_act ${JSON.stringify(act)}; expected silu`,
    );
  }
  return {
    architecture,
    hiddenSize,
    intermediateSize: positiveInt(json, "intermediate_size", file),
    numLayers: positiveInt(json, "num_hidden_layers", file),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(json, "vocab_size", file),
    maxPositionEmbeddings: positiveInt(json, "max_position_embeddings", file, 2048),
    rmsNormEps: num(json, "rms_norm_eps", file, 1e-6),
    ropeTheta: num(json, "rope_theta", file, 10000),
    ropeScaling: parseRopeScaling(json.rope_scaling, file),
    ropeStyle: "neox",
    // Qwen2 always has Q/K/V biases; Llama/Mistral only when attention_bias says so.
    attentionBias: architecture === "qwen2" || json.attention_bias === true,
    tieWordEmbeddings: json.tie_word_embeddings === true,
    bosTokenId: typeof json.bos_token_id === "number" ? json.bos_token_id : null,
    eosTokenIds: tokenIdList(json.eos_token_id),
  };
}

/** Reads and normalizes `<dir>/config.json`. */
export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const file = `${dir}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    throw new ModelFormatError(file, `cannot read the model config: ${(error as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ModelFormatError(file, `invalid JSON: ${(error as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelFormatError(file, "expected a JSON object");
  }
  return configFromHf(json as Json, file);
}
