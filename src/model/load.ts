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
import { LlamaModel } from "./llama.ts";
import { ropeInvFreq } from "./rope.ts";
import { loadWeights, releaseWeights } from "./weights.ts";

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

/** Reads config, tensor index and tokenizer of an HF directory or a .gguf file. */
export async function openModelSource(path: string): Promise<ModelSource> {
  if (await isDirectory(path)) {
    const config = await readHfConfig(path);
    const tokenizer = await loadHfTokenizer(path);
    if (config.eosTokenIds.length === 0) config.eosTokenIds = [...tokenizer.eosIds];
    return {
      format: "hf",
      path,
      config,
      tensors: await readSafetensorsDir(path),
      tokenizer,
      chatTemplate: await readChatTemplate(path),
    };
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

export interface LoadModelOptions {
  /** Prints load progress to stderr when it is a terminal. */
  showProgress?: boolean;
}

/** Opens the source and loads its weights onto the backend. */
export async function loadModel(
  backend: NativeBackend,
  path: string,
  options: LoadModelOptions = {},
): Promise<LoadedModel> {
  const started = performance.now();
  const source = await openModelSource(path);
  const isTty = options.showProgress !== false && Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let lastPercent = -1;
  const weights = await loadWeights(backend, source.config, source.tensors, {
    onProgress: isTty
      ? (loaded, total) => {
        const percent = Math.floor((100 * loaded) / Math.max(total, 1));
        if (percent === lastPercent) return;
        lastPercent = percent;
        const mb = (n: number) => (n / 1e6).toFixed(0);
        Deno.stderr.writeSync(
          encoder.encode(`\rloading weights ${percent}% (${mb(loaded)}/${mb(total)} MB)`),
        );
      }
      : undefined,
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
    release() {
      model.release();
      releaseWeights(backend, weights);
    },
  };
}
