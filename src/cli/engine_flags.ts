// The engine flags the offline commands (`batch`, `distill-export`) share, with serve's names and
// defaults, parsed into EngineOptions.
import {
  ENGINE_DEFAULTS,
  type EngineOptions,
  type SpeculativeOptions,
} from "../engine/local_engine.ts";
import { SAMPLING_DEVICES, type SamplingDevice } from "../engine/sampling_device.ts";
import { defaultNumThreads } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { parseByteSize, parseFraction } from "../server/config.ts";
import { parseQuantization } from "../model/quantize.ts";

/** parseArgs option definitions for the flags below. */
export const ENGINE_FLAG_OPTIONS = {
  model: { type: "string" },
  "max-num-seqs": { type: "string" },
  "max-num-batched-tokens": { type: "string" },
  "max-model-len": { type: "string" },
  "kv-cache-memory": { type: "string" },
  "gpu-memory-utilization": { type: "string" },
  quantization: { type: "string" },
  sparsity: { type: "string" },
  calibration: { type: "string" },
  "no-mmap": { type: "boolean" },
  "enforce-eager": { type: "boolean" },
  threads: { type: "string" },
  library: { type: "string" },
  "sampling-device": { type: "string" },
  "speculative-model": { type: "string" },
  "num-speculative-tokens": { type: "string" },
  "ngram-prompt-lookup-max": { type: "string" },
  "ngram-prompt-lookup-min": { type: "string" },
  "speculative-disable-by-batch-size": { type: "string" },
  "speculative-model-quantization": { type: "string" },
} as const;

/** The speculative-decoding flags' lines in a usage text (serve lists the same). */
export const SPECULATIVE_FLAGS_USAGE =
  `  --speculative-model M        ngram (prompt lookup), self (the model itself, loaded again) or a
                               draft model path with the same vocabulary
  --speculative-model-quantization Q
                               quantize the draft on load: q4_0, q8_0, int4, … (self + q4_0: the
                               quantized self-draft)
  --num-speculative-tokens K   tokens proposed per step (default ${ENGINE_DEFAULTS.numSpeculativeTokens})
  --ngram-prompt-lookup-max N  longest n-gram looked up (default ${ENGINE_DEFAULTS.ngramPromptLookupMax})
  --ngram-prompt-lookup-min N  shortest n-gram looked up (default ${ENGINE_DEFAULTS.ngramPromptLookupMin})
  --speculative-disable-by-batch-size N
                               no speculation while more requests run (default ${ENGINE_DEFAULTS.speculativeDisableBySize})`;

/** The --sampling-device lines of a usage text, help starting at `column` (serve, generate). */
export function samplingDeviceUsage(column = 31): string {
  const lines = [
    "where tokens are sampled: device (dl_sample; a step copies back",
    "token ids, not logits), host (logits copied back, sampled in f64)",
    "or auto (default: device on the CUDA build, host on the CPU build).",
    "Penalties, logit bias, logprobs, structured output, min_tokens and",
    "speculative verification sample on the host either way. Greedy is",
    "the same on both; seeded samples differ between the two, and the",
    "device's are the same on the CPU and CUDA builds",
  ];
  const pad = " ".repeat(column);
  return `  ${"--sampling-device D".padEnd(column - 2)}${lines[0]}\n` +
    lines.slice(1).map((l) => pad + l).join("\n");
}

/** The --sampling-device value, checked. */
export function samplingDeviceFlag(value: string): SamplingDevice {
  const choice = SAMPLING_DEVICES.find((d) => d === value);
  if (choice === undefined) {
    throw new UsageError(
      `--sampling-device expects one of ${SAMPLING_DEVICES.join(", ")}, got "${value}"`,
    );
  }
  return choice;
}

/** Their lines in a usage text. */
export const ENGINE_FLAGS_USAGE =
  `  --model PATH                 Hugging Face model directory or .gguf file (required)
  --max-num-seqs N             sequences in one step (default ${ENGINE_DEFAULTS.maxNumSeqs})
  --max-num-batched-tokens N   tokens in one step (default ${ENGINE_DEFAULTS.maxNumBatchedTokens})
  --max-model-len N            longest prompt + output (default: the model's context length)
  --kv-cache-memory B          KV cache bytes, suffixes K, M, G (default 1G)
  --gpu-memory-utilization F   instead: the KV cache takes what weights and steps leave of this
                               share (0 < F <= 1) of the device's memory (host memory on the CPU)
  --quantization Q             quantize F32/F16/BF16 weights on load: int8, int4, w8a8, w8a8-mixed,
                               q8_0, q4_k, …
  --sparsity 2:4               prune the layer projections to 2:4 on load (2:4-magnitude, 2:4-wanda)
  --calibration FILE           deno task calibrate's file: SmoothQuant, outliers, Wanda norms
  --no-mmap                    copy weights into memory instead of mapping them from the file
  --enforce-eager              no CUDA graphs: run decode steps eagerly (CUDA build)
  --threads N                  CPU threads (default: CPUs - 1; 0 = all cores)
  --library PATH               native library to load (default build/libdenollm_cpu.so)
${samplingDeviceUsage()}
${SPECULATIVE_FLAGS_USAGE}`;

/** A whole number of at least `min`, or `fallback` when the flag is absent. */
export function integerFlag(
  flag: string,
  value: string | undefined,
  fallback: number,
  min = 1,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${flag} expects an integer of at least ${min}, got "${value}"`);
  }
  return n;
}

/** The --quantization value, checked (the format's name), or a UsageError listing the choices. */
export function quantizationFlag(value: string, flag = "quantization"): string {
  try {
    return parseQuantization(value).name;
  } catch (error) {
    // The message names --quantization; the draft's flag says its own name.
    throw new UsageError((error as Error).message.replace("--quantization", `--${flag}`));
  }
}

export type EngineFlagValues = {
  [K in keyof typeof ENGINE_FLAG_OPTIONS]?: (typeof ENGINE_FLAG_OPTIONS)[K]["type"] extends
    "boolean" ? boolean
    : string;
};

/** The speculative-decoding options of the flags (vLLM's names), or undefined when off. */
export function speculativeOptions(
  values: { [K in keyof SpeculativeFlagValues]?: string },
): SpeculativeOptions | undefined {
  const model = values["speculative-model"];
  if (model === undefined || model === "") {
    const stray = SPECULATIVE_FLAGS.find((f) => values[f] !== undefined);
    if (stray !== undefined) {
      throw new UsageError(
        `--${stray} needs --speculative-model (ngram, self or a draft model path)`,
      );
    }
    return undefined;
  }
  const max = integerFlag(
    "ngram-prompt-lookup-max",
    values["ngram-prompt-lookup-max"],
    ENGINE_DEFAULTS.ngramPromptLookupMax,
  );
  const min = integerFlag(
    "ngram-prompt-lookup-min",
    values["ngram-prompt-lookup-min"],
    Math.min(ENGINE_DEFAULTS.ngramPromptLookupMin, max),
  );
  if (min > max) {
    throw new UsageError(
      `--ngram-prompt-lookup-min (${min}) must not exceed --ngram-prompt-lookup-max (${max})`,
    );
  }
  const quantization = values["speculative-model-quantization"];
  if (quantization !== undefined && model === "ngram") {
    throw new UsageError(
      "--speculative-model-quantization quantizes a draft model, but --speculative-model is ngram",
    );
  }
  return {
    model,
    ...(quantization === undefined ? {} : {
      quantization: quantizationFlag(quantization, "speculative-model-quantization"),
    }),
    numSpeculativeTokens: integerFlag(
      "num-speculative-tokens",
      values["num-speculative-tokens"],
      ENGINE_DEFAULTS.numSpeculativeTokens,
    ),
    ngramPromptLookupMax: max,
    ngramPromptLookupMin: min,
    disableBySize: integerFlag(
      "speculative-disable-by-batch-size",
      values["speculative-disable-by-batch-size"],
      ENGINE_DEFAULTS.speculativeDisableBySize,
      0,
    ),
  };
}

const SPECULATIVE_FLAGS = [
  "num-speculative-tokens",
  "ngram-prompt-lookup-max",
  "ngram-prompt-lookup-min",
  "speculative-disable-by-batch-size",
  "speculative-model-quantization",
] as const;

type SpeculativeFlagValues = Record<
  "speculative-model" | (typeof SPECULATIVE_FLAGS)[number],
  string
>;

/** EngineOptions from the parsed flags; --model is required. */
export function engineOptions(values: EngineFlagValues): EngineOptions {
  if (!values.model) throw new UsageError("--model is required");
  const kvSizing = kvSizingFlags(values["kv-cache-memory"], values["gpu-memory-utilization"]);
  const maxModelLen = values["max-model-len"];
  const speculative = speculativeOptions(values);
  return {
    modelPath: values.model,
    maxNumSeqs: integerFlag("max-num-seqs", values["max-num-seqs"], ENGINE_DEFAULTS.maxNumSeqs),
    maxNumBatchedTokens: integerFlag(
      "max-num-batched-tokens",
      values["max-num-batched-tokens"],
      ENGINE_DEFAULTS.maxNumBatchedTokens,
    ),
    ...(maxModelLen === undefined
      ? {}
      : { maxModelLen: integerFlag("max-model-len", maxModelLen, 0) }),
    ...kvSizing,
    numThreads: integerFlag("threads", values.threads, defaultNumThreads(), 0),
    ...(values.library === undefined ? {} : { libraryPath: values.library }),
    ...(values["sampling-device"] === undefined
      ? {}
      : { samplingDevice: samplingDeviceFlag(values["sampling-device"]) }),
    ...(values.quantization === undefined
      ? {}
      : { quantization: quantizationFlag(values.quantization) }),
    ...(speculative === undefined ? {} : { speculative }),
    ...(values.sparsity === undefined ? {} : { sparsity: values.sparsity }),
    ...(values.calibration === undefined ? {} : { calibration: values.calibration }),
    ...(values["no-mmap"] === true ? { mmap: false } : {}),
    ...(values["enforce-eager"] === true ? { enforceEager: true } : {}),
  };
}

/** --kv-cache-memory (default 1G) or --gpu-memory-utilization: one of the two sizes the KV cache. */
export function kvSizingFlags(
  memory: string | undefined,
  utilization: string | undefined,
): { kvCacheMemoryBytes: number } | { gpuMemoryUtilization: number } {
  if (utilization !== undefined) {
    if (memory !== undefined) {
      throw new UsageError(
        "--gpu-memory-utilization and --kv-cache-memory both size the KV cache: give one of them",
      );
    }
    const f = parseFraction(utilization);
    if (f === undefined) {
      throw new UsageError(
        `--gpu-memory-utilization expects a fraction above 0 and at most 1, such as 0.9, got ` +
          `"${utilization}"`,
      );
    }
    return { gpuMemoryUtilization: f };
  }
  const text = memory ?? "1G";
  const kvCacheMemoryBytes = parseByteSize(text);
  if (kvCacheMemoryBytes === undefined || kvCacheMemoryBytes <= 0) {
    throw new UsageError(`--kv-cache-memory expects a size such as 512M or 2G, got "${text}"`);
  }
  return { kvCacheMemoryBytes };
}
