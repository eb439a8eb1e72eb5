// Reads a GGUF model's config from its metadata and maps its tensor names onto the Hugging Face
// names the weight loader uses.
import { ModelFormatError } from "../formats/errors.ts";
import { type GgufFile, ggufNumber, ggufString } from "../formats/gguf.ts";
import type { TensorInfo } from "../formats/tensor.ts";
import type { Architecture, ModelConfig } from "./config.ts";

const ARCHITECTURES: Record<string, Architecture> = { llama: "llama", qwen2: "qwen2" };

/** GGUF per-layer names → Hugging Face suffixes under model.layers.N. */
const LAYER_NAMES: Record<string, string> = {
  "attn_norm.weight": "input_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_output.weight": "self_attn.o_proj.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
};

const GLOBAL_NAMES: Record<string, string> = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
  "rope_freqs.weight": "rope_freqs.weight",
};

/** Renames GGUF tensors to Hugging Face names; unknown names are kept as they are. */
export function hfTensorNames(tensors: Map<string, TensorInfo>): Map<string, TensorInfo> {
  const renamed = new Map<string, TensorInfo>();
  for (const [name, info] of tensors) {
    const layer = name.match(/^blk\.(\d+)\.(.+)$/);
    const mapped = layer
      ? LAYER_NAMES[layer[2]] && `model.layers.${layer[1]}.${LAYER_NAMES[layer[2]]}`
      : GLOBAL_NAMES[name];
    renamed.set(mapped || name, { ...info, name: mapped || name });
  }
  return renamed;
}

/** Normalizes GGUF metadata (`<arch>.*` keys) into a ModelConfig. */
export function configFromGguf(g: GgufFile): ModelConfig {
  const archName = ggufString(g, "general.architecture");
  const architecture = ARCHITECTURES[archName];
  if (architecture === undefined) {
    throw new ModelFormatError(
      g.path,
      `unsupported architecture "${archName}"; supported: ${Object.keys(ARCHITECTURES).join(", ")}`,
    );
  }
  const key = (k: string) => `${archName}.${k}`;
  const hiddenSize = ggufNumber(g, key("embedding_length"));
  const numHeads = ggufNumber(g, key("attention.head_count"));
  const numKvHeads = ggufNumber(g, key("attention.head_count_kv"), numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelFormatError(
      g.path,
      `head_count (${numHeads}) must be a multiple of head_count_kv (${numKvHeads})`,
    );
  }
  const headDim = ggufNumber(g, key("attention.key_length"), hiddenSize / numHeads);
  const rotaryDim = ggufNumber(g, key("rope.dimension_count"), headDim);
  if (rotaryDim !== headDim) {
    throw new ModelFormatError(
      g.path,
      `partial rotary embeddings are not supported: rope.dimension_count ${rotaryDim}, head dim ${headDim}`,
    );
  }
  const embed = g.tensors.get("token_embd.weight");
  const tokens = g.metadata.get("tokenizer.ggml.tokens");
  const vocabSize = ggufNumber(
    g,
    key("vocab_size"),
    embed?.shape[0] ?? (tokens?.type === "arr" ? tokens.value.length : 0),
  );
  const scalingType = ggufString(g, key("rope.scaling.type"), "none");
  let ropeScaling: ModelConfig["ropeScaling"] = null;
  if (scalingType === "linear") {
    ropeScaling = { type: "linear", factor: ggufNumber(g, key("rope.scaling.factor")) };
  } else if (scalingType !== "none") {
    throw new ModelFormatError(g.path, `unsupported rope scaling type "${scalingType}"`);
  }
  const bos = g.metadata.has("tokenizer.ggml.bos_token_id")
    ? ggufNumber(g, "tokenizer.ggml.bos_token_id")
    : null;
  const eos = g.metadata.has("tokenizer.ggml.eos_token_id")
    ? [ggufNumber(g, "tokenizer.ggml.eos_token_id")]
    : [];
  return {
    architecture,
    hiddenSize,
    intermediateSize: ggufNumber(g, key("feed_forward_length")),
    numLayers: ggufNumber(g, key("block_count")),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxPositionEmbeddings: ggufNumber(g, key("context_length"), 2048),
    rmsNormEps: ggufNumber(g, key("attention.layer_norm_rms_epsilon"), 1e-5),
    ropeTheta: ggufNumber(g, key("rope.freq_base"), 10000),
    ropeScaling,
    // llama.cpp's converter permutes llama Q/K rows back to Meta's interleaved pairs; qwen2 keeps
    // the Hugging Face rotate-half layout (llama.cpp's NEOX mode).
    ropeStyle: architecture === "llama" ? "interleaved" : "neox",
    attentionBias: g.tensors.has("blk.0.attn_q.bias"),
    tieWordEmbeddings: !g.tensors.has("output.weight"),
    bosTokenId: bos,
    eosTokenIds: eos,
  };
}
