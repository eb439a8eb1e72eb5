// deno task calibrate --model M --text FILE [--alpha 0.5] [--out PATH]: runs the model (as loaded,
// F32/F16) through the serving engine over the text, records each linear input's per-channel max
// |x| and L2 norm, and writes the calibration file (src/model/calibrate.ts documents it) that
// --calibration reads: SmoothQuant's factors, LLM.int8()'s outlier channels, Wanda's norms.
// Also home of the outlier demonstration model (writeOutlierModel).
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import {
  gguf,
  type GgufKV,
  type GgufTensorData,
  readGguf,
  writeGguf,
} from "../src/formats/gguf.ts";
import { readTensorBytes } from "../src/formats/tensor.ts";
import { ActivationStats, buildCalibration, type Calibration } from "../src/model/calibrate.ts";
import { loadModel } from "../src/model/load.ts";
import { prune2of4 } from "../src/model/sparsity.ts";

const USAGE = `usage: deno task calibrate --model M --text FILE [--alpha 0.5] [--out PATH]
  [--max-tokens 4096] [--window 256] [--threads N]

Writes M.calibration.json (or PATH): per layer, each linear input's per-channel max |x| and L2
norm over the text, and SmoothQuant's factors s = max|X|^alpha / max|W|^(1 - alpha) for the QKV
and gate/up inputs. Pass it to --calibration with --quantization w8a8 (SmoothQuant),
--quantization w8a8-mixed (outlier channels) or --sparsity 2:4 (Wanda).`;

export interface CalibrateOptions {
  modelPath: string;
  textPath: string;
  alpha: number;
  maxTokens?: number;
  window?: number;
  threads?: number;
}

/** Runs the calibration pass; the text is cut into windows, each from an empty cache. */
export async function calibrate(options: CalibrateOptions): Promise<Calibration> {
  if (!(options.alpha >= 0 && options.alpha <= 1)) {
    throw new RangeError(`Expected --alpha in [0, 1], found ${options.alpha}`);
  }
  const backend = NativeBackend.open({ numThreads: options.threads ?? 1 });
  try {
    const loaded = await loadModel(backend, options.modelPath, { showProgress: false });
    try {
      const window = Math.min(options.window ?? 256, loaded.config.maxPositionEmbeddings);
      const text = await Deno.readTextFile(options.textPath);
      const ids = loaded.tokenizer.encode(text, { addSpecial: false });
      const maxTokens = Math.min(options.maxTokens ?? 4096, ids.length);
      if (maxTokens < 16) {
        throw new RangeError(
          `Expected --text ${options.textPath} to give at least 16 tokens, found ${ids.length}`,
        );
      }
      const stats = new ActivationStats(backend);
      const llm = LLM.over(backend, loaded, {
        maxModelLen: window,
        maxNumSeqs: 1,
        maxNumBatchedTokens: window,
        numKvBlocks: Math.ceil(window / 16) + 2,
        enablePrefixCaching: false,
      });
      loaded.model.observer = stats.observe;
      try {
        const bos = loaded.config.bosTokenId;
        const per = bos === null ? window - 1 : window - 2;
        for (let at = 0; at < maxTokens; at += per) {
          const chunk = ids.slice(at, Math.min(maxTokens, at + per));
          const prompt = bos === null ? chunk : [bos, ...chunk];
          for (
            const _ of llm.stream(prompt, {
              maxTokens: 1,
              sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 },
            })
          ) {
            // The observer records the prompt's activations; the sampled token is not used.
          }
        }
      } finally {
        loaded.model.observer = undefined;
        llm.release();
      }
      return buildCalibration(backend, loaded.model, stats, {
        model: options.modelPath,
        text: options.textPath,
        alpha: options.alpha,
      });
    } finally {
      loaded.release();
    }
  } finally {
    backend.close();
  }
}

/**
 * A copy of an F32 GGUF with every layer projection pruned to 2:4 by magnitude (a pruned
 * checkpoint, as `--sparsity 2:4` must detect and store without pruning again).
 */
export async function writePrunedModel(inPath: string, outPath: string): Promise<void> {
  const input = await readGguf(inPath);
  const tensors: GgufTensorData[] = [];
  for (const info of input.tensors.values()) {
    const data = new Uint8Array(info.byteLength);
    await readTensorBytes(info, data);
    if (/^blk\.\d+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$/.test(info.name)) {
      if (info.dtype !== "F32") throw new RangeError(`Expected an F32 model, found ${info.dtype}`);
      prune2of4(new Float32Array(data.buffer), info.shape[info.shape.length - 1]);
    }
    tensors.push({ name: info.name, dtype: info.dtype, shape: [...info.shape], data });
  }
  const metadata = [...input.metadata].filter(([k]) => k !== "general.alignment") as GgufKV[];
  await writeGguf(outPath, { metadata, tensors, alignment: input.alignment });
}

/**
 * The outlier demonstration: a copy of an F32 GGUF where `channels` of every layer's two RMSNorm
 * weights are scaled by `factor` and the matching input columns of the projections after them
 * (QKV, gate/up) divided by it, so the F32 model computes the same function while those channels
 * of the activations are `factor` times the rest, as in real LLMs.
 */
export async function writeOutlierModel(
  inPath: string,
  outPath: string,
  options: { channels: readonly number[]; factor: number },
): Promise<void> {
  const input = await readGguf(inPath);
  const tensors: GgufTensorData[] = [];
  for (const info of input.tensors.values()) {
    const data = new Uint8Array(info.byteLength);
    await readTensorBytes(info, data);
    const m = /^blk\.\d+\.(attn_norm|ffn_norm|attn_q|attn_k|attn_v|ffn_gate|ffn_up)\.weight$/
      .exec(info.name);
    if (m !== null) {
      if (info.dtype !== "F32") {
        throw new RangeError(`Expected an F32 model, found ${info.name} in ${info.dtype}`);
      }
      const values = new Float32Array(data.buffer);
      const cols = info.shape[info.shape.length - 1];
      const isNorm = m[1].endsWith("_norm");
      for (let i = 0; i < values.length; i++) {
        if (options.channels.includes(i % cols)) {
          values[i] = isNorm ? values[i] * options.factor : values[i] / options.factor;
        }
      }
    }
    tensors.push({ name: info.name, dtype: info.dtype, shape: [...info.shape], data });
  }
  const metadata = [...input.metadata].filter(([k]) => k !== "general.alignment") as GgufKV[];
  metadata.push(["denollm.outlier_channels", gguf.str(options.channels.join(","))]);
  await writeGguf(outPath, { metadata, tensors, alignment: input.alignment });
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      text: { type: "string" },
      alpha: { type: "string", default: "0.5" },
      out: { type: "string" },
      "max-tokens": { type: "string", default: "4096" },
      window: { type: "string", default: "256" },
      threads: { type: "string", default: "1" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (v.help) {
    console.log(USAGE);
    return;
  }
  if (v.model === undefined || v.text === undefined) {
    console.error(`--model and --text are required\n${USAGE}`);
    Deno.exit(2);
  }
  const cal = await calibrate({
    modelPath: v.model,
    textPath: v.text,
    alpha: Number(v.alpha),
    maxTokens: Number(v["max-tokens"]),
    window: Number(v.window),
    threads: Number(v.threads),
  });
  const out = v.out ?? `${v.model.replace(/\/+$/, "")}.calibration.json`;
  await Deno.writeTextFile(out, JSON.stringify(cal) + "\n");
  console.error(`calibrated over ${cal.numTokens} tokens (alpha ${cal.alpha}): wrote ${out}`);
}

if (import.meta.main) await main();
