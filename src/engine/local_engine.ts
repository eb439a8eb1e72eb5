// Builds the one serving engine on a local device: KV cache sized from its budget, an executor
// with every step buffer reserved up front, the scheduler on top. The engine worker (what the
// daemon serves with), the in-process `LLM` (CLI, tests, benchmarks) and nothing else call this.
import { formatByName } from "../../ffi/formats.ts";
import { NativeBackend } from "../../ffi/native.ts";
import { KvCache } from "../kv/kv_cache.ts";
import { type LoadedModel, type LoadFormat, loadModel } from "../model/load.ts";
import { type EngineConfig, LLMEngine } from "./engine.ts";
import { defaultNumThreads } from "./threads.ts";
import { LocalExecutor, stepCapacity } from "./executor.ts";

export type KvCacheDtype = "f32" | "f16" | "bf16";

/** Defaults shared by every way of starting an engine (the server's flags show the same). */
export const ENGINE_DEFAULTS = {
  blockSize: 16,
  kvCacheDtype: "f32" as KvCacheDtype,
  maxNumSeqs: 64,
  maxNumBatchedTokens: 2048,
} as const;

/** How to size and schedule an engine over an already loaded model. */
export interface LocalEngineOptions extends Partial<Omit<EngineConfig, "maxModelLen">> {
  /** Longest prompt + output; default and upper bound: the model's context length. */
  maxModelLen?: number;
  blockSize?: number;
  kvCacheDtype?: KvCacheDtype;
  /** The KV cache as a byte budget, or as a block count (block 0 included); one of the two. */
  kvCacheMemoryBytes?: number;
  numKvBlocks?: number;
}

/** Everything that shapes an engine, stated once: server flags, worker init, in-process LLM. */
export interface EngineOptions extends LocalEngineOptions {
  modelPath: string;
  /** "dummy": random weights of the config's shape instead of the checkpoint's (benchmarks). */
  loadFormat?: LoadFormat;
  /** The seed of dummy weights (default 0). */
  loadSeed?: number;
  /**
   * Quantize F32/F16/BF16 weights while loading: "int8", "int4" or a GGUF block format ("q4_k");
   * src/model/quantize.ts says which tensors and what happens to rows that do not fit.
   */
  quantization?: string;
  /** "2:4": prune and compress the layer projections while loading (src/model/compress.ts). */
  sparsity?: string;
  /** A `deno task calibrate` file for w8a8 (SmoothQuant), w8a8-mixed and 2:4 Wanda. */
  calibration?: string;
  backend?: "cpu" | "cuda";
  libraryPath?: string;
  /** CPU threads for kernels; 0 = all cores; default CPUs - 1 (src/engine/threads.ts). */
  numThreads?: number;
}

export interface LocalEngine {
  engine: LLMEngine;
  /** Usable KV blocks (the null block left out) and their size. */
  numKvBlocks: number;
  blockSize: number;
  maxModelLen: number;
  /** Device bytes reserved for steps, and held by the KV cache. */
  reservedBytes: number;
  kvCacheBytes: number;
  release(): void;
}

/** KV blocks for the budget; refuses a cache that cannot hold one maximum-length sequence. */
export function planKvBlocks(
  init: { kvCacheMemoryBytes: number; blockSize: number; maxModelLen: number },
  bytesPerBlock: number,
): number {
  const numBlocks = Math.floor(init.kvCacheMemoryBytes / bytesPerBlock);
  // Block 0 is the null block, so one fewer is usable.
  const numTokens = Math.max(0, numBlocks - 1) * init.blockSize;
  if (numTokens < init.maxModelLen) {
    throw new RangeError(
      `A KV cache of ${init.kvCacheMemoryBytes} bytes holds ${numTokens} tokens ` +
        `(${bytesPerBlock} bytes per block of ${init.blockSize}), fewer than one sequence of the ` +
        `maximum length ${init.maxModelLen}: raise --kv-cache-memory or lower --max-model-len`,
    );
  }
  return numBlocks;
}

/** An engine over a loaded model, on the backend the model was loaded with. */
export function createLocalEngine(
  backend: NativeBackend,
  loaded: Pick<LoadedModel, "config" | "model" | "tokenizer">,
  options: LocalEngineOptions,
): LocalEngine {
  const modelMax = loaded.config.maxPositionEmbeddings;
  const maxModelLen = Math.min(options.maxModelLen ?? modelMax, modelMax);
  const blockSize = options.blockSize ?? ENGINE_DEFAULTS.blockSize;
  const dtypeName = options.kvCacheDtype ?? ENGINE_DEFAULTS.kvCacheDtype;
  const format = formatByName(dtypeName);
  if (format === undefined) {
    throw new RangeError(`Unknown KV cache dtype ${JSON.stringify(dtypeName)}`);
  }
  const dtype = format.id;
  const bytesPerBlock = KvCache.bytesPerBlock(loaded.config, blockSize, dtype);
  let numBlocks = options.numKvBlocks;
  if (numBlocks === undefined) {
    if (options.kvCacheMemoryBytes === undefined) {
      throw new RangeError("An engine needs kvCacheMemoryBytes or numKvBlocks");
    }
    numBlocks = planKvBlocks(
      { kvCacheMemoryBytes: options.kvCacheMemoryBytes, blockSize, maxModelLen },
      bytesPerBlock,
    );
  }
  const config: EngineConfig = {
    maxNumBatchedTokens: ENGINE_DEFAULTS.maxNumBatchedTokens,
    maxNumSeqs: ENGINE_DEFAULTS.maxNumSeqs,
    ...withoutUndefined({
      maxNumBatchedTokens: options.maxNumBatchedTokens,
      maxNumSeqs: options.maxNumSeqs,
      maxNumLogitRows: options.maxNumLogitRows,
      enableChunkedPrefill: options.enableChunkedPrefill,
      policy: options.policy,
      mode: options.mode,
      enablePrefixCaching: options.enablePrefixCaching,
    }),
    maxModelLen,
  };
  const kvCache = new KvCache(backend, loaded.config, { blockSize, numBlocks, dtype });
  let executor: LocalExecutor | undefined;
  try {
    executor = new LocalExecutor(
      backend,
      { model: loaded.model, kvCache },
      stepCapacity(config, blockSize),
    );
    const engine = new LLMEngine({ executor, tokenizer: loaded.tokenizer }, config);
    const held = executor;
    return {
      engine,
      numKvBlocks: numBlocks - 1,
      blockSize,
      maxModelLen,
      reservedBytes: executor.reservedBytes,
      kvCacheBytes: numBlocks * bytesPerBlock,
      release() {
        held.release();
        kvCache.release();
      },
    };
  } catch (error) {
    executor?.release();
    kvCache.release();
    throw error;
  }
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Opens the backend, loads the model and builds the engine: all a process needs to serve. */
export async function startLocalEngine(
  options: EngineOptions,
  { showProgress = false, onLoadProgress }: {
    showProgress?: boolean;
    onLoadProgress?: (loadedBytes: number, totalBytes: number) => void;
  } = {},
): Promise<LocalEngine & { loaded: LoadedModel; backend: NativeBackend }> {
  const backend = NativeBackend.open({
    backend: options.backend,
    libraryPath: options.libraryPath,
    numThreads: options.numThreads ?? defaultNumThreads(),
  });
  let loaded: LoadedModel | undefined;
  try {
    loaded = await loadModel(backend, options.modelPath, {
      showProgress,
      onProgress: onLoadProgress,
      loadFormat: options.loadFormat,
      seed: options.loadSeed,
      quantization: options.quantization,
      sparsity: options.sparsity,
      calibration: options.calibration,
    });
    const local = createLocalEngine(backend, loaded, options);
    const model = loaded;
    return {
      ...local,
      loaded,
      backend,
      release() {
        local.release();
        model.release();
        backend.close();
      },
    };
  } catch (error) {
    loaded?.release();
    backend.close();
    throw error;
  }
}
