// Model shapes for random-weight test models: real checkpoints' config.json plus tiny test shapes.

import type { SyntheticPre } from "./synthetic_tokenizer.ts";

/** A config.json object, with the fields the random model generator relies on typed. */
export interface HfConfigJson {
  model_type: "llama" | "qwen2";
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  tie_word_embeddings: boolean;
  head_dim?: number;
  rope_theta?: number;
  rope_scaling?: Record<string, unknown> | null;
  bos_token_id?: number;
  eos_token_id?: number | number[];
  [key: string]: unknown;
}

export interface ModelPreset {
  name: string;
  /**
   * config.json as the real model ships it (field for field), or the tiny shape's own. The random
   * model generator replaces bos/eos ids with those of its synthetic tokenizer.
   */
  config: HfConfigJson;
  /** Which pre-tokenizer the synthetic tokenizer imitates. */
  pre: SyntheticPre;
  /** The real checkpoint this shape copies, when there is one. */
  source?: string;
}

// Real configs are copied verbatim, including fields we never read (initializer_range, ...), so a
// random model is indistinguishable from the real one to any config reader.
const PRESETS: readonly ModelPreset[] = [
  {
    name: "stories15m",
    source: "karpathy/tinyllamas stories15M (as Xenova/llama2.c-stories15M)",
    pre: "llama-bpe",
    config: {
      architectures: ["LlamaForCausalLM"],
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: "silu",
      hidden_size: 288,
      initializer_range: 0.02,
      intermediate_size: 768,
      max_position_embeddings: 256,
      model_type: "llama",
      num_attention_heads: 6,
      num_hidden_layers: 6,
      num_key_value_heads: 6,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      tie_word_embeddings: true,
      torch_dtype: "float32",
      transformers_version: "4.31.0",
      use_cache: true,
      vocab_size: 32000,
    },
  },
  {
    name: "smollm-135m",
    source: "HuggingFaceTB/SmolLM-135M",
    pre: "smollm",
    config: {
      architectures: ["LlamaForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 0,
      eos_token_id: 0,
      hidden_act: "silu",
      hidden_size: 576,
      initializer_range: 0.02,
      intermediate_size: 1536,
      max_position_embeddings: 2048,
      model_type: "llama",
      num_attention_heads: 9,
      num_hidden_layers: 30,
      num_key_value_heads: 3,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      rope_theta: 10000.0,
      tie_word_embeddings: true,
      torch_dtype: "float32",
      transformers_version: "4.39.3",
      use_cache: true,
      vocab_size: 49152,
    },
  },
  {
    name: "qwen2.5-0.5b",
    source: "Qwen/Qwen2.5-0.5B",
    pre: "qwen2",
    config: {
      architectures: ["Qwen2ForCausalLM"],
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151643,
      hidden_act: "silu",
      hidden_size: 896,
      initializer_range: 0.02,
      intermediate_size: 4864,
      max_position_embeddings: 32768,
      max_window_layers: 24,
      model_type: "qwen2",
      num_attention_heads: 14,
      num_hidden_layers: 24,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 32768,
      tie_word_embeddings: true,
      torch_dtype: "bfloat16",
      transformers_version: "4.40.1",
      use_cache: true,
      use_mrope: false,
      use_sliding_window: false,
      vocab_size: 151936,
    },
  },
  {
    name: "llama-3.2-1b",
    source: "meta-llama/Llama-3.2-1B",
    pre: "llama-bpe",
    config: {
      architectures: ["LlamaForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 128000,
      eos_token_id: 128001,
      head_dim: 64,
      hidden_act: "silu",
      hidden_size: 2048,
      initializer_range: 0.02,
      intermediate_size: 8192,
      max_position_embeddings: 131072,
      mlp_bias: false,
      model_type: "llama",
      num_attention_heads: 32,
      num_hidden_layers: 16,
      num_key_value_heads: 8,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: {
        factor: 32.0,
        high_freq_factor: 4.0,
        low_freq_factor: 1.0,
        original_max_position_embeddings: 8192,
        rope_type: "llama3",
      },
      rope_theta: 500000.0,
      tie_word_embeddings: true,
      torch_dtype: "bfloat16",
      transformers_version: "4.45.0.dev0",
      use_cache: true,
      vocab_size: 128256,
    },
  },
  // Tiny shapes for fast tests. head_dim 16 with hidden 64 and 4 heads is the natural split; the
  // explicit head_dim still exercises the key_length path.
  {
    name: "tiny-qwen2",
    pre: "qwen2",
    config: {
      architectures: ["Qwen2ForCausalLM"],
      head_dim: 16,
      hidden_act: "silu",
      hidden_size: 64,
      intermediate_size: 160,
      max_position_embeddings: 512,
      model_type: "qwen2",
      num_attention_heads: 4,
      num_hidden_layers: 2,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      tie_word_embeddings: true,
      torch_dtype: "float32",
      use_cache: true,
      vocab_size: 1024,
    },
  },
  {
    name: "tiny-llama-untied",
    pre: "llama-bpe",
    config: {
      architectures: ["LlamaForCausalLM"],
      attention_bias: false,
      head_dim: 16,
      hidden_act: "silu",
      hidden_size: 64,
      intermediate_size: 96,
      max_position_embeddings: 512,
      mlp_bias: false,
      model_type: "llama",
      num_attention_heads: 4,
      num_hidden_layers: 3,
      num_key_value_heads: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      rope_theta: 10000.0,
      tie_word_embeddings: false,
      torch_dtype: "float32",
      use_cache: true,
      vocab_size: 800,
    },
  },
];

/** Names of every preset, for help texts. */
export function presetNames(): string[] {
  return PRESETS.map((p) => p.name);
}

export interface PresetOverrides {
  numLayers?: number;
  vocabSize?: number;
}

/** Returns a deep copy of preset `name`, with its layer count or vocab size replaced when given. */
export function getPreset(name: string, overrides: PresetOverrides = {}): ModelPreset {
  const found = PRESETS.find((p) => p.name === name);
  if (found === undefined) {
    throw new RangeError(
      `Unknown model preset "${name}"; expected one of ${presetNames().join(", ")}`,
    );
  }
  const preset: ModelPreset = structuredClone(found);
  const { numLayers, vocabSize } = overrides;
  if (numLayers !== undefined) {
    if (!Number.isSafeInteger(numLayers) || numLayers <= 0) {
      throw new RangeError(`Expected numLayers to be a positive integer, found ${numLayers}`);
    }
    preset.config.num_hidden_layers = numLayers;
    if (preset.config.max_window_layers !== undefined) preset.config.max_window_layers = numLayers;
  }
  if (vocabSize !== undefined) {
    // The synthetic byte-level BPE needs its 256 byte tokens plus a few specials.
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 300) {
      throw new RangeError(
        `Expected vocabSize to be an integer of at least 300, found ${vocabSize}`,
      );
    }
    preset.config.vocab_size = vocabSize;
  }
  return preset;
}
