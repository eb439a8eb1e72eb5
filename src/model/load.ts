// Opens a model from a Hugging Face directory or a GGUF file: config, tokenizer, chat template and
// weights on the device, ready for the forward pass.
import type { NativeBackend } from "../../ffi/native.ts";
import { ModelFormatError } from "../formats/errors.ts";
import { readGguf } from "../formats/gguf.ts";
import { readSafetensorsDir } from "../formats/safetensors.ts";
import type { TensorInfo } from "../formats/tensor.ts";
import { readTensorBytes } from "../formats/tensor.ts";
import { ggufTokenizer } from "../tokenizer/gguf.ts";
import { loadHfTokenizer } from "../tokenizer/hf.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { type ModelConfig, readHfConfig } from "./config.ts";
import { configFromGguf, hfTensorNames } from "./gguf_model.ts";
import { randomHfTensors } from "../../tools/random_model/random_model.ts";
import type { HfConfigJson } from "../../tools/random_model/presets.ts";
import { LlamaModel } from "./llama.ts";
import { ropeInvFreq } from "./rope.ts";
import { loadWeights, releaseWeights } from "./weights.ts";
import { readCalibration } from "./calibrate.ts";
import {
  checkCompressible,
  type CompressionPlan,
  CompressOnLoad,
  describeCompression,
  isActivationQuantization,
  planCompression,
} from "./compress.ts";
import {
  checkNotQuantized,
  parseQuantization,
  type QuantizationSummary,
  QuantizeOnLoad,
} from "./quantize.ts";

/** What a model path describes before any weight is read. */
export interface ModelSource {
  format: "hf" | "gguf";
  path: string;
  config: ModelConfig;
  tensors: Map<string, TensorInfo>;
  tokenizer: TextTokenizer;
  chatTemplate: string | null;
}

export interface LoadedModel extends ModelSource {
  model: LlamaModel;
  loadMs: number;
  /** What --quantization did, when it was given. */
  quantization?: QuantizationSummary;
  /** What --quantization w8a8|w8a8-mixed or --sparsity did: one line for the load log. */
  compression?: string;
  release(): void;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new ModelFormatError(path, "no such file or directory");
    }
    throw new ModelFormatError(path, `cannot access the model: ${(error as Error).message}`);
  }
}

async function readChatTemplate(dir: string): Promise<string | null> {
  // Newer checkpoints keep the template in its own file; older ones in tokenizer_config.json.
  try {
    return await Deno.readTextFile(`${dir}/chat_template.jinja`);
  } catch {
    // fall through
  }
  try {
    const config = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
    const template = config.chat_template;
    if (typeof template === "string") return template;
    if (Array.isArray(template)) {
      const named = template.find((t) => t?.name === "default") ?? template[0];
      return typeof named?.template === "string" ? named.template : null;
    }
  } catch {
    // A missing or broken tokenizer_config.json is reported by the tokenizer loader.
  }
  return null;
}

/** How weights are obtained: read from the checkpoint, or random of its shape (vLLM's flag). */
export type LoadFormat = "auto" | "dummy";

export interface OpenModelOptions {
  /** "dummy": random weights of config.json's shape; the safetensors are never read. */
  loadFormat?: LoadFormat;
  /** The seed of dummy weights (default 0): the same seed gives the same weights. */
  seed?: number;
}

/** config.json's torch_dtype as the dtype dummy weights are made in (F32 when unknown). */
function dummyDtype(raw: { torch_dtype?: unknown; dtype?: unknown }): "F32" | "F16" | "BF16" {
  const name = raw.torch_dtype ?? raw.dtype;
  if (name === "bfloat16") return "BF16";
  if (name === "float16") return "F16";
  return "F32";
}

/**
 * Random tensors of the shape config.json describes, made in memory as the loader asks for them
 * (tools/random_model's generator: the seed and a tensor's name decide its bytes).
 */
async function dummyTensors(dir: string, seed: number): Promise<Map<string, TensorInfo>> {
  const file = `${dir}/config.json`;
  const raw = JSON.parse(await Deno.readTextFile(file)) as HfConfigJson;
  const dtype = dummyDtype(raw as { torch_dtype?: unknown });
  const tensors = new Map<string, TensorInfo>();
  for (const t of randomHfTensors(raw, { seed, dtype })) {
    tensors.set(t.name, {
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      file,
      byteOffset: 0,
      byteLength: t.byteLength,
      generate: t.generate,
    });
  }
  return tensors;
}

/** Reads config, tensor index and tokenizer of an HF directory or a .gguf file. */
export async function openModelSource(
  path: string,
  options: OpenModelOptions = {},
): Promise<ModelSource> {
  const isDummy = options.loadFormat === "dummy";
  if (await isDirectory(path)) {
    const config = await readHfConfig(path);
    const tokenizer = await loadHfTokenizer(path);
    if (config.eosTokenIds.length === 0) config.eosTokenIds = [...tokenizer.eosIds];
    return {
      format: "hf",
      path,
      config,
      tensors: isDummy
        ? await dummyTensors(path, options.seed ?? 0)
        : await readSafetensorsDir(path),
      tokenizer,
      chatTemplate: await readChatTemplate(path),
    };
  }
  if (isDummy) {
    throw new ModelFormatError(
      path,
      "--load-format dummy needs a Hugging Face model directory (its config.json gives the shape)",
    );
  }
  if (!path.endsWith(".gguf")) {
    throw new ModelFormatError(
      path,
      "expected a Hugging Face model directory or a .gguf file",
    );
  }
  const gguf = await readGguf(path);
  const template = gguf.metadata.get("tokenizer.chat_template");
  return {
    format: "gguf",
    path,
    config: configFromGguf(gguf),
    tensors: hfTensorNames(gguf.tensors),
    tokenizer: ggufTokenizer(gguf.metadata, { source: path }),
    chatTemplate: template?.type === "str" ? template.value : null,
  };
}

/** GGUF's rope_freqs tensor (Llama-3 scaling baked into per-frequency divisors), if present. */
async function readRopeFreqs(tensors: Map<string, TensorInfo>): Promise<Float32Array | undefined> {
  const info = tensors.get("rope_freqs.weight");
  if (info === undefined) return undefined;
  if (info.dtype !== "F32") {
    throw new ModelFormatError(info.file, `rope_freqs.weight must be F32, found ${info.dtype}`);
  }
  const bytes = new Uint8Array(info.byteLength);
  await readTensorBytes(info, bytes);
  return new Float32Array(bytes.buffer);
}

export interface LoadModelOptions extends OpenModelOptions {
  /** Prints load progress to stderr when it is a terminal. */
  showProgress?: boolean;
  /** Called with (0, total) before the first tensor and after each one, for log lines. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /**
   * Quantize F32/F16/BF16 weights while loading: int8, int4 or a GGUF format (src/model/quantize.ts),
   * or w8a8 / w8a8-mixed (src/model/compress.ts).
   */
  quantization?: string;
  /**
   * Quantize tied embeddings too (the one matrix that is embedding and LM head). Off by default,
   * as vLLM; a speculative draft turns it on, since at small sizes the head is most of its bytes.
   */
  quantizeTiedEmbeddings?: boolean;
  /** `--sparsity 2:4` (src/model/compress.ts): prune the layer projections to 2:4 and compress. */
  sparsity?: string;
  /** A `deno task calibrate` file: SmoothQuant factors, outlier channels, Wanda norms. */
  calibration?: string;
  /**
   * Map weights stored as the kernels read them from the file instead of copying them (default
   * true, on backends that can; src/model/weights.ts). False: `--no-mmap`.
   */
  mmap?: boolean;
  /** False: keep Q4_0 matrices in the file's layout (src/model/weights.ts; default true). */
  repack?: boolean;
}

/** Opens the source and loads its weights onto the backend. */
export async function loadModel(
  backend: NativeBackend,
  path: string,
  options: LoadModelOptions = {},
): Promise<LoadedModel> {
  const started = performance.now();
  const source = await openModelSource(path, options);
  const isTty = options.showProgress !== false && Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let lastPercent = -1;
  let totalBytes = 0;
  for (const info of source.tensors.values()) totalBytes += info.byteLength;
  options.onProgress?.(0, totalBytes);
  let transform: QuantizeOnLoad | undefined;
  let compress: CompressOnLoad | undefined;
  let plan: CompressionPlan | undefined;
  if (isActivationQuantization(options.quantization) || options.sparsity !== undefined) {
    const calibration = options.calibration === undefined
      ? undefined
      : await readCalibration(options.calibration, source.config);
    plan = planCompression(options, calibration);
    checkCompressible(path, source.tensors, plan);
    compress = new CompressOnLoad(backend, plan);
  } else if (options.calibration !== undefined) {
    throw new RangeError(
      "--calibration is read by --quantization w8a8|w8a8-mixed and --sparsity 2:4; " +
        `found it with --quantization ${options.quantization ?? "none"} and no --sparsity`,
    );
  } else if (options.quantization !== undefined) {
    const target = parseQuantization(options.quantization);
    checkNotQuantized(path, source.tensors, target);
    const isTied = !source.tensors.has("lm_head.weight") && source.config.tieWordEmbeddings &&
      options.quantizeTiedEmbeddings !== true;
    transform = new QuantizeOnLoad(backend, target, { isTied });
  }
  const weights = await loadWeights(backend, source.config, source.tensors, {
    transform: compress ?? transform,
    mmap: options.mmap,
    repack: options.repack,
    onProgress: (loaded, total) => {
      options.onProgress?.(loaded, total);
      if (isTty) {
        const percent = Math.floor((100 * loaded) / Math.max(total, 1));
        if (percent === lastPercent) return;
        lastPercent = percent;
        const mb = (n: number) => (n / 1e6).toFixed(0);
        Deno.stderr.writeSync(
          encoder.encode(`\rloading weights ${percent}% (${mb(loaded)}/${mb(total)} MB)`),
        );
      }
    },
  });
  if (isTty) Deno.stderr.writeSync(encoder.encode("\n"));
  let model: LlamaModel;
  try {
    const invFreq = ropeInvFreq(
      source.config,
      source.config.headDim,
      await readRopeFreqs(source.tensors),
    );
    model = new LlamaModel(backend, source.config, weights, invFreq);
  } catch (error) {
    releaseWeights(backend, weights);
    throw error;
  }
  return {
    ...source,
    model,
    loadMs: performance.now() - started,
    ...(transform === undefined ? {} : { quantization: transform.summary() }),
    ...(compress === undefined
      ? {}
      : { compression: describeCompression(plan!, compress.summary) }),
    release() {
      model.release();
      releaseWeights(backend, weights);
    },
  };
}
