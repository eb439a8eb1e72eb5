// The engine flags the offline commands (`batch`, `distill-export`) share, with serve's names and
// defaults, parsed into EngineOptions.
import { ENGINE_DEFAULTS, type EngineOptions } from "../engine/local_engine.ts";
import { defaultNumThreads } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { parseByteSize } from "../server/config.ts";
import { parseQuantization } from "../model/quantize.ts";

/** parseArgs option definitions for the flags below. */
export const ENGINE_FLAG_OPTIONS = {
  model: { type: "string" },
  "max-num-seqs": { type: "string" },
  "max-num-batched-tokens": { type: "string" },
  "max-model-len": { type: "string" },
  "kv-cache-memory": { type: "string" },
  quantization: { type: "string" },
  sparsity: { type: "string" },
  calibration: { type: "string" },
  threads: { type: "string" },
  library: { type: "string" },
} as const;

/** Their lines in a usage text. */
export const ENGINE_FLAGS_USAGE =
  `  --model PATH                 Hugging Face model directory or .gguf file (required)
  --max-num-seqs N             sequences in one step (default ${ENGINE_DEFAULTS.maxNumSeqs})
  --max-num-batched-tokens N   tokens in one step (default ${ENGINE_DEFAULTS.maxNumBatchedTokens})
  --max-model-len N            longest prompt + output (default: the model's context length)
  --kv-cache-memory B          KV cache bytes, suffixes K, M, G (default 1G)
  --quantization Q             quantize F32/F16/BF16 weights on load: int8, int4, w8a8, w8a8-mixed,
                               q8_0, q4_k, …
  --sparsity 2:4               prune the layer projections to 2:4 on load (2:4-magnitude, 2:4-wanda)
  --calibration FILE           deno task calibrate's file: SmoothQuant, outliers, Wanda norms
  --threads N                  CPU threads (default: CPUs - 1; 0 = all cores)
  --library PATH               native library to load (default build/libdenollm_cpu.so)`;

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
export function quantizationFlag(value: string): string {
  try {
    return parseQuantization(value).name;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

export type EngineFlagValues = { [K in keyof typeof ENGINE_FLAG_OPTIONS]?: string };

/** EngineOptions from the parsed flags; --model is required. */
export function engineOptions(values: EngineFlagValues): EngineOptions {
  if (!values.model) throw new UsageError("--model is required");
  const memory = values["kv-cache-memory"] ?? "1G";
  const kvCacheMemoryBytes = parseByteSize(memory);
  if (kvCacheMemoryBytes === undefined || kvCacheMemoryBytes <= 0) {
    throw new UsageError(`--kv-cache-memory expects a size such as 512M or 2G, got "${memory}"`);
  }
  const maxModelLen = values["max-model-len"];
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
    kvCacheMemoryBytes,
    numThreads: integerFlag("threads", values.threads, defaultNumThreads(), 0),
    ...(values.library === undefined ? {} : { libraryPath: values.library }),
    ...(values.quantization === undefined
      ? {}
      : { quantization: quantizationFlag(values.quantization) }),
    ...(values.sparsity === undefined ? {} : { sparsity: values.sparsity }),
    ...(values.calibration === undefined ? {} : { calibration: values.calibration }),
  };
}
