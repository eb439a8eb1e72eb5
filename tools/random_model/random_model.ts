// Writes deterministic random-weight models of real shapes as a Hugging Face directory and a GGUF
// file holding the same weights, laid out the way llama.cpp's convert_hf_to_gguf.py would.
import {
  gguf,
  type GgufKV,
  type GgufTensorData,
  readGguf,
  writeGguf,
} from "../../src/formats/gguf.ts";
import {
  readSafetensorsDir,
  type TensorData,
  writeSafetensors,
  writeSafetensorsSharded,
} from "../../src/formats/safetensors.ts";
import { type DType, dtypeBytes, numElements, type TensorInfo } from "../../src/formats/tensor.ts";
import { buildSyntheticTokenizer } from "./synthetic_tokenizer.ts";
import { getPreset, type HfConfigJson, type ModelPreset } from "./presets.ts";
import { SuccessorStructure, WRITER_GAIN } from "./successor.ts";

export type ModelFileFormat = "hf" | "gguf";

export interface RandomModelOptions {
  /** Every weight is a pure function of this seed and the tensor's name. Default 0. */
  seed?: number;
  /** Storage dtype of the HF weights and of the GGUF matrices. Default "F32". */
  dtype?: DType;
  /** Directory for the HF files and `<preset>.gguf`; created when missing. */
  outDir: string;
  /** Default both. */
  formats?: readonly ModelFileFormat[];
  /** Shard the safetensors into `model-0000N-of-0000M.safetensors` of at most this many bytes. */
  maxShardBytes?: number;
  /**
   * Gives the model a planted "successor" structure (see {@link SuccessorStructure}) so its greedy
   * next token wins by several logits; the default (false) is the plain random model.
   */
  peaked?: boolean;
  /** Called after each tensor is written to every format. */
  onProgress?: (doneBytes: number, totalBytes: number, tensorName: string) => void;
}

export interface RandomModel {
  /** The config.json written (token ids set from the synthetic tokenizer). */
  config: HfConfigJson;
  /** The HF directory (= outDir) when "hf" was written. */
  hfDir: string | null;
  ggufPath: string | null;
  numParams: number;
  elapsedMs: number;
}

// --- weight scales
//
// Picked so random models behave like models, not noise, and greedy decoding does not hinge on
// float rounding. Tuned by greedy runs in llama.cpp on the tiny presets and cut-down smollm/qwen2.5
// shapes: output stays varied (no token repeated more than a few times), and the f16 and bf16
// roundings of a model mostly pick the same 48 tokens as its f32 original.
// - Logits have std LOGIT_STD, so softmax is peaked (top-1 usually well above the rest).
// - Projections have std 1/sqrt(fan_in), so each sublayer sees and returns unit-scale values;
//   down_proj is MLP_GAIN times that so the MLP, driven by the current token, outweighs attention,
//   whose softmax averaging would otherwise pull every position towards one state and make the
//   model loop on one token.
// - The embedding rows have norm ~EMBED_NORM (std EMBED_NORM/sqrt(hidden)), small next to the
//   residual stream. In a tied model the embedding is the lm_head, and a large one makes the
//   current token's own logit win, so the model repeats its input. Tied models get their logit
//   scale from the final norm's gain (LOGIT_STD / EMBED_NORM) instead; untied ones from an lm_head
//   of std LOGIT_STD/sqrt(hidden) with a final norm of ~1.
// - Norm weights are 1 + small noise (a misapplied norm still changes the output) and biases are
//   small but nonzero.
// Residual risk: with f16 weights a token flips in roughly 1 of 200 greedy steps between the f32
// and f16 roundings of the same model; compare engines on F32 files where exactness matters.
const LOGIT_STD = 4;
const EMBED_NORM = 1;
const MLP_GAIN = 2;
const NORM_NOISE_STD = 0.05;
const BIAS_STD = 0.1;

interface TensorSpec {
  hfName: string;
  ggufName: string;
  /** PyTorch order, outermost first. */
  shape: number[];
  mean: number;
  std: number;
  /** llama GGUF only: Q/K rows are regrouped from rotate-half to interleaved pairs per head. */
  permuteHeads?: number;
}

function headDimOf(config: HfConfigJson): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

/**
 * Every tensor of the model with its HF and GGUF names, in checkpoint order. `writerGain` scales
 * the sublayers' output projections (o_proj, down_proj): 1 for the plain random model.
 */
function tensorSpecs(config: HfConfigJson, writerGain = 1): TensorSpec[] {
  const hidden = config.hidden_size;
  const ffn = config.intermediate_size;
  const headDim = headDimOf(config);
  const qRows = config.num_attention_heads * headDim;
  const kvRows = config.num_key_value_heads * headDim;
  const isLlama = config.model_type === "llama";
  const hasBias = config.model_type === "qwen2" || config.attention_bias === true;
  const proj = (fanIn: number) => 1 / Math.sqrt(fanIn);
  const embedStd = EMBED_NORM / Math.sqrt(hidden);
  // Tied: logits = finalNorm(h) · embedding, so the final norm's gain sets the logit scale.
  const finalNormMean = config.tie_word_embeddings ? LOGIT_STD / EMBED_NORM : 1;
  const specs: TensorSpec[] = [{
    hfName: "model.embed_tokens.weight",
    ggufName: "token_embd.weight",
    shape: [config.vocab_size, hidden],
    mean: 0,
    std: embedStd,
  }];
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const hf = (s: string) => `model.layers.${l}.${s}`;
    const gg = (s: string) => `blk.${l}.${s}`;
    const norm = (hfName: string, ggufName: string) => ({
      hfName: hf(hfName),
      ggufName: gg(ggufName),
      shape: [hidden],
      mean: 1,
      std: NORM_NOISE_STD,
    });
    const qk = (which: "q" | "k", rows: number, numHeads: number) => {
      const out: TensorSpec[] = [{
        hfName: hf(`self_attn.${which}_proj.weight`),
        ggufName: gg(`attn_${which}.weight`),
        shape: [rows, hidden],
        mean: 0,
        std: proj(hidden),
        permuteHeads: isLlama ? numHeads : undefined,
      }];
      if (hasBias) {
        out.push({
          hfName: hf(`self_attn.${which}_proj.bias`),
          ggufName: gg(`attn_${which}.bias`),
          shape: [rows],
          mean: 0,
          std: BIAS_STD,
          permuteHeads: isLlama ? numHeads : undefined,
        });
      }
      return out;
    };
    specs.push(norm("input_layernorm.weight", "attn_norm.weight"));
    specs.push(...qk("q", qRows, config.num_attention_heads));
    specs.push(...qk("k", kvRows, config.num_key_value_heads));
    specs.push({
      hfName: hf("self_attn.v_proj.weight"),
      ggufName: gg("attn_v.weight"),
      shape: [kvRows, hidden],
      mean: 0,
      std: proj(hidden),
    });
    if (hasBias) {
      specs.push({
        hfName: hf("self_attn.v_proj.bias"),
        ggufName: gg("attn_v.bias"),
        shape: [kvRows],
        mean: 0,
        std: BIAS_STD,
      });
    }
    specs.push({
      hfName: hf("self_attn.o_proj.weight"),
      ggufName: gg("attn_output.weight"),
      shape: [hidden, qRows],
      mean: 0,
      std: writerGain * proj(qRows),
    });
    specs.push(norm("post_attention_layernorm.weight", "ffn_norm.weight"));
    for (const [hfName, ggufName] of [["gate_proj", "ffn_gate"], ["up_proj", "ffn_up"]]) {
      specs.push({
        hfName: hf(`mlp.${hfName}.weight`),
        ggufName: gg(`${ggufName}.weight`),
        shape: [ffn, hidden],
        mean: 0,
        std: proj(hidden),
      });
    }
    specs.push({
      hfName: hf("mlp.down_proj.weight"),
      ggufName: gg("ffn_down.weight"),
      shape: [hidden, ffn],
      mean: 0,
      std: writerGain * MLP_GAIN * proj(ffn),
    });
  }
  specs.push({
    hfName: "model.norm.weight",
    ggufName: "output_norm.weight",
    shape: [hidden],
    mean: finalNormMean,
    std: NORM_NOISE_STD * finalNormMean,
  });
  if (!config.tie_word_embeddings) {
    specs.push({
      hfName: "lm_head.weight",
      ggufName: "output.weight",
      shape: [config.vocab_size, hidden],
      mean: 0,
      std: LOGIT_STD / Math.sqrt(hidden),
    });
  }
  return specs;
}

// --- random numbers

/** FNV-1a over the name, mixed with the seed, so each tensor has its own independent stream. */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ Math.imul(seed >>> 0, 0x9e3779b1);
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  // A final avalanche so neighbouring names do not start with correlated xorshift states.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h === 0 ? 1 : h; // xorshift32 never leaves the zero state
}

// Irwin–Hall with four 16-bit uniforms: mean 4 * 65535 / 2, variance 4 * (65536² - 1) / 12.
const IRWIN_HALL_MEAN = 131070;
const IRWIN_HALL_STD = Math.sqrt((4 * (65536 * 65536 - 1)) / 12);

/**
 * Fills `out` with approximately normal values (sum of four uniforms, which is within a few
 * percent of a Gaussian and needs no transcendental functions) from xorshift32. Two int32 steps
 * and one multiply-add per element keep a billion-parameter model to seconds.
 */
export function fillRandomNormal(out: Float32Array, seed: number, mean: number, std: number): void {
  let s = seed | 0;
  if (s === 0) throw new RangeError("Expected a nonzero xorshift seed");
  const scale = std / IRWIN_HALL_STD;
  const offset = mean - IRWIN_HALL_MEAN * scale;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const t = s;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((t & 0xffff) + (t >>> 16) + (s & 0xffff) + (s >>> 16)) * scale + offset;
  }
}

// --- dtype conversion

/** Rounds f32 to IEEE half, nearest-even, with bit arithmetic (matches Float16Array exactly). */
export function f32ToF16Bits(src: Float32Array, dst: Uint16Array): void {
  if (dst.length !== src.length) {
    throw new RangeError(`Expected ${src.length} f16 slots, found ${dst.length}`);
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    const sign = (x >>> 16) & 0x8000;
    const a = x & 0x7fffffff;
    let h: number;
    if (a >= 0x38800000 && a < 0x477ff000) {
      // Normal half: rebias the exponent (127 → 15) and round the 13 dropped bits to even; a carry
      // out of the mantissa correctly bumps the exponent.
      h = (a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13;
    } else if (a < 0x38800000) {
      // Subnormal half (or zero): at most half of the smallest subnormal rounds to zero.
      if (a <= 0x33000000) {
        h = 0;
      } else {
        const shift = 126 - (a >>> 23);
        const m = (a & 0x7fffff) | 0x800000;
        const rem = m & ((1 << shift) - 1);
        const half = 1 << (shift - 1);
        h = m >>> shift;
        if (rem > half || (rem === half && (h & 1) === 1)) h++;
      }
    } else if (a > 0x7f800000) {
      h = 0x7e00 | ((a >>> 13) & 0x3ff); // NaN stays a quiet NaN
    } else {
      h = 0x7c00; // infinity, or too large for half (65520 and up round to infinity)
    }
    dst[i] = sign | h;
  }
}

/** Rounds f32 to bfloat16, nearest-even (NaN stays NaN). */
export function f32ToBf16Bits(src: Float32Array, dst: Uint16Array): void {
  if (dst.length !== src.length) {
    throw new RangeError(`Expected ${src.length} bf16 slots, found ${dst.length}`);
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    dst[i] = (x & 0x7fffffff) > 0x7f800000
      ? (x >>> 16) | 0x40
      : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
}

/** Stores `values` as `dtype`, and rounds `values` in place to what `dtype` kept. */
function encode(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === "F32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const half = new Uint16Array(values.length);
  if (dtype === "F16") {
    f32ToF16Bits(values, half);
    values.set(new Float16Array(half.buffer));
  } else {
    f32ToBf16Bits(values, half);
    const widened = new Uint32Array(values.buffer, values.byteOffset, values.length);
    for (let i = 0; i < half.length; i++) widened[i] = half[i] << 16;
  }
  return new Uint8Array(half.buffer);
}

// --- llama.cpp conversion details

/**
 * Reorders each head's rows from Hugging Face's rotate-half layout to Meta's interleaved pairs,
 * as convert_hf_to_gguf.py's `LlamaModel.permute` does: reshape(heads, 2, dim/2, ...) →
 * swapaxes(1, 2). `numHeads` is the head count of this tensor (KV heads for K).
 */
export function permuteForGguf(
  data: Uint8Array,
  shape: readonly number[],
  numHeads: number,
  elementBytes: number,
): Uint8Array {
  const rows = shape[0];
  const rowBytes = (shape.length > 1 ? shape[1] : 1) * elementBytes;
  if (rows % (2 * numHeads) !== 0) {
    throw new RangeError(`Expected ${rows} rows to split into ${numHeads} heads of pairs`);
  }
  const halfDim = rows / numHeads / 2;
  const out = new Uint8Array(data.byteLength);
  for (let h = 0; h < numHeads; h++) {
    const base = h * 2 * halfDim;
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < halfDim; j++) {
        const from = (base + i * halfDim + j) * rowBytes;
        out.set(data.subarray(from, from + rowBytes), (base + 2 * j + i) * rowBytes);
      }
    }
  }
  return out;
}

/** Inverse of {@link permuteForGguf}. */
export function unpermuteFromGguf(
  data: Uint8Array,
  shape: readonly number[],
  numHeads: number,
  elementBytes: number,
): Uint8Array {
  const rows = shape[0];
  const rowBytes = (shape.length > 1 ? shape[1] : 1) * elementBytes;
  const halfDim = rows / numHeads / 2;
  const out = new Uint8Array(data.byteLength);
  for (let h = 0; h < numHeads; h++) {
    const base = h * 2 * halfDim;
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < halfDim; j++) {
        const from = (base + 2 * j + i) * rowBytes;
        out.set(data.subarray(from, from + rowBytes), (base + i * halfDim + j) * rowBytes);
      }
    }
  }
  return out;
}

/**
 * GGUF `rope_freqs.weight` for Llama-3 rope scaling: per-frequency divisors computed the way
 * convert_hf_to_gguf.py's LlamaModel does, in float32 like its torch code. Note it reads
 * original_max_position_embeddings from the top level of config.json (default 8192), not from
 * rope_scaling. Returns null when the config has no llama3 scaling.
 */
export function llama3RopeFactors(config: HfConfigJson): Float32Array | null {
  const scaling = config.rope_scaling;
  if (scaling == null || String(scaling.rope_type ?? "").toLowerCase() !== "llama3") return null;
  const f = Math.fround;
  const base = config.rope_theta ?? 10000;
  const dim = headDimOf(config);
  const factor = Number(scaling.factor ?? 8);
  const low = Number(scaling.low_freq_factor ?? 1);
  const high = Number(scaling.high_freq_factor ?? 4);
  const oldContext = Number(config.original_max_position_embeddings ?? 8192);
  const lowWavelen = oldContext / low;
  const highWavelen = oldContext / high;
  const factors = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = f(1 / f(Math.pow(base, f(f(2 * i) / dim))));
    const wavelen = f((2 * Math.PI) / freq);
    if (wavelen < highWavelen) {
      factors[i] = 1;
    } else if (wavelen > lowWavelen) {
      factors[i] = factor;
    } else {
      const smooth = f(f(f(oldContext / wavelen) - low) / (high - low));
      factors[i] = f(1 / f(f(f(1 - smooth) / factor) + smooth));
    }
  }
  return factors;
}

// llama.cpp's LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_BF16.
const GGUF_FILE_TYPES: Partial<Record<DType, number>> = { F32: 0, F16: 1, BF16: 32 };

function ggufMetadata(
  config: HfConfigJson,
  name: string,
  dtype: DType,
  tokenizerKVs: readonly GgufKV[],
  peaked: boolean,
): GgufKV[] {
  const arch = config.model_type;
  const kv: GgufKV[] = [
    ["general.architecture", gguf.str(arch)],
    ["general.type", gguf.str("model")],
    ["general.name", gguf.str(`${peaked ? "peaked random" : "random"} ${name}`)],
    [`${arch}.block_count`, gguf.u32(config.num_hidden_layers)],
    [`${arch}.context_length`, gguf.u32(config.max_position_embeddings)],
    [`${arch}.embedding_length`, gguf.u32(config.hidden_size)],
    [`${arch}.feed_forward_length`, gguf.u32(config.intermediate_size)],
    [`${arch}.attention.head_count`, gguf.u32(config.num_attention_heads)],
    [`${arch}.attention.head_count_kv`, gguf.u32(config.num_key_value_heads)],
    [`${arch}.rope.freq_base`, gguf.f32(config.rope_theta ?? 10000)],
    [`${arch}.attention.layer_norm_rms_epsilon`, gguf.f32(config.rms_norm_eps)],
  ];
  // The converter writes key/value lengths only when config.json names head_dim.
  if (config.head_dim !== undefined) {
    kv.push([`${arch}.attention.key_length`, gguf.u32(config.head_dim)]);
    kv.push([`${arch}.attention.value_length`, gguf.u32(config.head_dim)]);
  }
  kv.push(["general.file_type", gguf.u32(GGUF_FILE_TYPES[dtype] ?? 0)]);
  if (arch === "llama") {
    kv.push([`${arch}.vocab_size`, gguf.u32(config.vocab_size)]);
    kv.push([`${arch}.rope.dimension_count`, gguf.u32(headDimOf(config))]);
  }
  kv.push(["general.quantization_version", gguf.u32(2)]);
  kv.push(...tokenizerKVs);
  return kv;
}

// --- writing

interface Slot {
  file: Deno.FsFile;
  byteOffset: number;
}

async function writeAt(slot: Slot, data: Uint8Array): Promise<void> {
  await slot.file.seek(slot.byteOffset, Deno.SeekMode.Start);
  let done = 0;
  while (done < data.byteLength) done += await slot.file.write(data.subarray(done));
}

/** Opens each tensor's file once and maps tensor names to where their bytes go. */
async function openSlots(
  tensors: Map<string, TensorInfo>,
  files: Map<string, Deno.FsFile>,
): Promise<Map<string, Slot>> {
  const slots = new Map<string, Slot>();
  for (const [name, info] of tensors) {
    let file = files.get(info.file);
    if (file === undefined) {
      file = await Deno.open(info.file, { write: true });
      files.set(info.file, file);
    }
    slots.set(name, { file, byteOffset: info.byteOffset });
  }
  return slots;
}

async function removeStaleSafetensors(dir: string): Promise<void> {
  for await (const entry of Deno.readDir(dir)) {
    if (/^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$/.test(entry.name)) {
      await Deno.remove(`${dir}/${entry.name}`);
    }
  }
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await Deno.writeTextFile(path, JSON.stringify(value, null, 2) + "\n");
}

function checkOptions(
  options: RandomModelOptions,
): Required<Omit<RandomModelOptions, "onProgress" | "maxShardBytes">> {
  const { seed = 0, dtype = "F32", outDir, formats = ["hf", "gguf"], peaked = false } = options;
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`Expected seed to be an integer in [0, 2^32), found ${seed}`);
  }
  if (!(dtype in GGUF_FILE_TYPES)) {
    throw new RangeError(`Expected dtype F32, F16 or BF16, found ${dtype}`);
  }
  if (typeof outDir !== "string" || outDir === "") {
    throw new TypeError(`Expected outDir to be a directory path, found ${outDir}`);
  }
  if (formats.length === 0 || formats.some((f) => f !== "hf" && f !== "gguf")) {
    throw new RangeError(`Expected formats to list "hf" and/or "gguf", found ${formats}`);
  }
  if (typeof peaked !== "boolean") {
    throw new TypeError(`Expected peaked true or false, found ${peaked}`);
  }
  return { seed, dtype, outDir, formats, peaked };
}

/**
 * Generates a random model of `preset`'s shape (a preset or its name) into `options.outDir`:
 * config.json, generation_config.json, tokenizer.json, tokenizer_config.json and model.safetensors
 * (or shards with an index) for "hf", `<preset>.gguf` for "gguf". Both hold the same weights.
 *
 * Memory stays near one tensor: the writers first lay out each file with zeroed tensors (their
 * headers need every size up front), then each tensor is generated once and written into place.
 */
export async function generateRandomModel(
  preset: ModelPreset | string,
  options: RandomModelOptions,
): Promise<RandomModel> {
  const started = performance.now();
  const { seed, dtype, outDir, formats, peaked } = checkOptions(options);
  const resolved = typeof preset === "string" ? getPreset(preset) : structuredClone(preset);
  const config = resolved.config;
  const tokenizer = buildSyntheticTokenizer({
    kind: "gpt2",
    vocabSize: config.vocab_size,
    pre: resolved.pre,
    seed,
  });
  // The real checkpoints' token ids mean nothing to the synthetic vocab; take its ids instead.
  const eosId = tokenizer.ggufKVs.find((kv) => kv.key === "tokenizer.ggml.eos_token_id")?.value;
  config.bos_token_id = tokenizer.generationConfig.bos_token_id as number;
  config.eos_token_id = eosId as number;

  const specs = tensorSpecs(config, peaked ? WRITER_GAIN : 1);
  const structure = peaked ? peakedStructure(config, seed) : null;
  const ropeFactors = llama3RopeFactors(config);
  const numParams = specs.reduce((n, s) => n + numElements(s.shape), 0);
  // 1-D tensors stay F32 in GGUF, as the converter keeps norms and biases.
  const ggufDType = (s: TensorSpec) => (s.shape.length === 1 ? "F32" : dtype);
  const maxBytes = Math.max(
    ...specs.map((s) => dtypeBytes(ggufDType(s), numElements(s.shape))),
    ...specs.map((s) => dtypeBytes(dtype, numElements(s.shape))),
  );
  const zeros = new ArrayBuffer(maxBytes);
  const placeholder = (s: TensorSpec, d: DType) =>
    new Uint8Array(zeros, 0, dtypeBytes(d, numElements(s.shape)));

  await Deno.mkdir(outDir, { recursive: true });
  const files = new Map<string, Deno.FsFile>();
  try {
    let hfSlots: Map<string, Slot> | null = null;
    let ggufSlots: Map<string, Slot> | null = null;
    const ggufPath = `${outDir}/${resolved.name}.gguf`;
    if (formats.includes("hf")) {
      await writeJson(`${outDir}/config.json`, config);
      await writeJson(`${outDir}/generation_config.json`, {
        _from_model_config: true,
        ...tokenizer.generationConfig,
      });
      await writeJson(`${outDir}/tokenizer.json`, tokenizer.tokenizerJson);
      await writeJson(`${outDir}/tokenizer_config.json`, tokenizer.tokenizerConfig);
      await removeStaleSafetensors(outDir);
      const layout: TensorData[] = specs.map((s) => ({
        name: s.hfName,
        dtype,
        shape: s.shape,
        data: placeholder(s, dtype),
      }));
      const metadata = { format: "pt" };
      if (options.maxShardBytes === undefined) {
        await writeSafetensors(`${outDir}/model.safetensors`, layout, metadata);
      } else {
        await writeSafetensorsSharded(outDir, layout, {
          maxShardBytes: options.maxShardBytes,
          metadata,
        });
      }
      hfSlots = await openSlots(await readSafetensorsDir(outDir), files);
    }
    if (formats.includes("gguf")) {
      const layout: GgufTensorData[] = specs.map((s) => ({
        name: s.ggufName,
        dtype: ggufDType(s),
        shape: s.shape,
        data: placeholder(s, ggufDType(s)),
      }));
      if (ropeFactors !== null) {
        layout.push({
          name: "rope_freqs.weight",
          dtype: "F32",
          shape: [ropeFactors.length],
          data: new Uint8Array(ropeFactors.buffer),
        });
      }
      const tokenizerKVs = tokenizer.ggufKVs.map(({ key, ...value }) => [key, value] as GgufKV);
      await writeGguf(ggufPath, {
        metadata: ggufMetadata(config, resolved.name, dtype, tokenizerKVs, peaked),
        tensors: layout,
      });
      ggufSlots = await openSlots((await readGguf(ggufPath)).tensors, files);
    }

    const totalBytes = dtypeBytes(dtype, numParams);
    let doneBytes = 0;
    for (const s of specs) {
      const values = new Float32Array(numElements(s.shape));
      fillRandomNormal(values, tensorSeed(seed, s.hfName), s.mean, s.std);
      structure?.apply(s.hfName, values);
      const bytes = encode(values, dtype);
      if (hfSlots !== null) await writeAt(hfSlots.get(s.hfName)!, bytes);
      if (ggufSlots !== null) {
        // `values` now holds exactly what the HF file stores, so GGUF's F32 copy matches it.
        let ggufBytes = s.shape.length === 1 ? new Uint8Array(values.buffer) : bytes;
        if (s.permuteHeads !== undefined) {
          const size = dtypeBytes(ggufDType(s), 1);
          ggufBytes = permuteForGguf(ggufBytes, s.shape, s.permuteHeads, size);
        }
        await writeAt(ggufSlots.get(s.ggufName)!, ggufBytes);
      }
      doneBytes += bytes.byteLength;
      options.onProgress?.(doneBytes, totalBytes, s.hfName);
    }
    return {
      config,
      hfDir: hfSlots === null ? null : outDir,
      ggufPath: ggufSlots === null ? null : ggufPath,
      numParams,
      elapsedMs: performance.now() - started,
    };
  } finally {
    for (const file of files.values()) file.close();
  }
}

/** The successor structure `generateRandomModel` plants with `peaked: true` for this seed. */
export function peakedStructure(config: HfConfigJson, seed: number): SuccessorStructure {
  return new SuccessorStructure(config, (out, name, mean, std) => {
    fillRandomNormal(out, tensorSeed(seed, name), mean, std);
  });
}

/** One tensor of `randomHfTensors`: its shape and dtype, and its bytes made on demand. */
export interface RandomTensor {
  name: string;
  dtype: DType;
  shape: number[];
  byteLength: number;
  /** Generates the tensor's bytes (the same ones generateRandomModel writes for this seed). */
  generate(): Uint8Array;
}

/**
 * The HF tensors of a random model of `config`'s shape, without writing anything: each tensor's
 * bytes are generated when asked for, from the seed and the tensor's name alone, so a loader can
 * stream them to the device one at a time (`--load-format dummy`).
 */
export function randomHfTensors(
  config: HfConfigJson,
  options: { seed?: number; dtype?: DType } = {},
): RandomTensor[] {
  const { seed = 0, dtype = "F32" } = options;
  if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`Expected seed to be an integer in [0, 2^32), found ${seed}`);
  }
  return tensorSpecs(config).map((s) => ({
    name: s.hfName,
    dtype,
    shape: [...s.shape],
    byteLength: dtypeBytes(dtype, numElements(s.shape)),
    generate() {
      const values = new Float32Array(numElements(s.shape));
      fillRandomNormal(values, tensorSeed(seed, s.hfName), s.mean, s.std);
      return encode(values, dtype);
    },
  }));
}
