// Builds the one serving engine on a local device: KV cache sized from its budget, an executor
// with every step buffer reserved up front, the scheduler on top. The engine worker (what the
// daemon serves with), the in-process `LLM` (CLI, tests, benchmarks) and nothing else call this.
import { DeviceSampler } from "./device_sampler.ts";
import { formatByName } from "../../ffi/formats.ts";
import { type MemoryInfo, NativeBackend } from "../../ffi/native.ts";
import { KvCache } from "../kv/kv_cache.ts";
import { ForwardWorkspace } from "../model/workspace.ts";
import {
  checkUtilization,
  describeKvMemoryPlan,
  type KvMemoryPlan,
  kvMemoryPlan,
} from "./kv_memory.ts";
import { type LoadedModel, type LoadFormat, loadModel } from "../model/load.ts";
import { type EngineConfig, LLMEngine } from "./engine.ts";
import { defaultNumThreads } from "./threads.ts";
import { LocalExecutor, stepCapacity } from "./executor.ts";
import { DraftModelProposer } from "./spec/draft_model.ts";
import { NgramProposer } from "./spec/ngram_proposer.ts";
import type { Proposer, SpeculativeConfig } from "./spec/proposer.ts";
import { type ParallelOptions, worldSize } from "../parallel/plan.ts";
import { startParallelEngine } from "../parallel/launch.ts";
import type { RankStats } from "../parallel/executor.ts";
import type { GraphStats } from "./decode_graphs.ts";

export type KvCacheDtype = "f32" | "f16" | "bf16";

/** Defaults shared by every way of starting an engine (the server's flags show the same). */
export const ENGINE_DEFAULTS = {
  blockSize: 16,
  kvCacheDtype: "f32" as KvCacheDtype,
  maxNumSeqs: 64,
  maxNumBatchedTokens: 2048,
  /** k when --speculative-model is given without --num-speculative-tokens. */
  numSpeculativeTokens: 4,
  /** n-gram lengths tried (vLLM's prompt_lookup_max / min). */
  ngramPromptLookupMax: 4,
  ngramPromptLookupMin: 2,
  /** Running requests above which speculation turns off (measured: docs/speculative.md). */
  speculativeDisableBySize: 4,
} as const;

/** Speculative decoding, as the flags state it. */
export interface SpeculativeOptions {
  /**
   * "ngram" (prompt lookup); "self": the target's own checkpoint, loaded a second time (with
   * `quantization`, the quantized self-draft); or a draft model: an HF directory or GGUF with the
   * same vocabulary.
   */
  model: string;
  /**
   * Quantize the draft's F32/F16/BF16 weights while loading it (--speculative-model-quantization,
   * vLLM's name): "q4_0", "q8_0", "int4", … as --quantization takes them.
   */
  quantization?: string;
  /** k: tokens proposed per step (--num-speculative-tokens). */
  numSpeculativeTokens: number;
  ngramPromptLookupMax?: number;
  ngramPromptLookupMin?: number;
  /** Speculation turns off while more requests than this are running. */
  disableBySize?: number;
}

/** How to size and schedule an engine over an already loaded model. */
export interface LocalEngineOptions
  extends Partial<Omit<EngineConfig, "maxModelLen" | "speculativeDecoding">> {
  /** Longest prompt + output; default and upper bound: the model's context length. */
  maxModelLen?: number;
  blockSize?: number;
  kvCacheDtype?: KvCacheDtype;
  /**
   * The KV cache as a byte budget, as a block count (block 0 included), or as the share of the
   * device's memory the engine may hold (--gpu-memory-utilization, in (0, 1]: src/engine/
   * kv_memory.ts has the terms); exactly one of the three.
   */
  kvCacheMemoryBytes?: number;
  numKvBlocks?: number;
  gpuMemoryUtilization?: number;
  speculative?: SpeculativeOptions;
  /**
   * Decoder layers (0-based) whose outputs the forward pass keeps at the logit rows, for
   * requests with `promptHiddenStates` (distill-export); default none, at no cost.
   */
  captureLayers?: readonly number[];
  /**
   * Run every step eagerly (vLLM's --enforce-eager). By default the CUDA build runs decode steps
   * as CUDA graphs, one per batch-size bucket (src/engine/decode_graphs.ts).
   */
  enforceEager?: boolean;
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
  /** False: copy weights instead of mapping them from the file (`--no-mmap`; default true). */
  mmap?: boolean;
  backend?: "cpu" | "cuda";
  libraryPath?: string;
  /** CPU threads for kernels; 0 = all cores; default CPUs - 1 (src/engine/threads.ts). */
  numThreads?: number;
  /** Ranks across processes and hosts (src/parallel/); absent or 1×1: this process alone. */
  parallel?: ParallelOptions;
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
  /** How --gpu-memory-utilization sized the KV cache, term by term; absent without it. */
  kvMemoryPlan?: KvMemoryPlan;
  /** The speculative proposer, when speculation is on. */
  proposer?: Proposer;
  /** With ranks: every rank's cost counters (src/parallel/executor.ts), for the cost bench. */
  rankStats?: () => RankStats[];
  /** Decode graphs' captures and replays; null when every step runs eagerly. */
  graphStats?: () => GraphStats | null;
  release(): void;
}

/**
 * KV blocks for the budget; refuses a cache that cannot hold one maximum-length sequence. With
 * `memoryPlan` the budget came from --gpu-memory-utilization, and the error names its terms.
 */
export function planKvBlocks(
  init: {
    kvCacheMemoryBytes: number;
    blockSize: number;
    maxModelLen: number;
    memoryPlan?: KvMemoryPlan;
  },
  bytesPerBlock: number,
): number {
  const numBlocks = Math.max(0, Math.floor(init.kvCacheMemoryBytes / bytesPerBlock));
  // Block 0 is the null block, so one fewer is usable.
  const numTokens = Math.max(0, numBlocks - 1) * init.blockSize;
  if (numTokens < init.maxModelLen && init.memoryPlan !== undefined) {
    throw new RangeError(
      `--gpu-memory-utilization ${init.memoryPlan.utilization} leaves no room for one sequence ` +
        `of the maximum length ${init.maxModelLen}: ${describeKvMemoryPlan(init.memoryPlan)} ` +
        `(${init.memoryPlan.kvCacheMemoryBytes} bytes), which holds ${numTokens} tokens ` +
        `(${bytesPerBlock} bytes per block of ${init.blockSize}): raise ` +
        "--gpu-memory-utilization, free device memory or lower --max-model-len",
    );
  }
  if (numTokens < init.maxModelLen) {
    throw new RangeError(
      `A KV cache of ${init.kvCacheMemoryBytes} bytes holds ${numTokens} tokens ` +
        `(${bytesPerBlock} bytes per block of ${init.blockSize}), fewer than one sequence of the ` +
        `maximum length ${init.maxModelLen}: raise --kv-cache-memory or lower --max-model-len`,
    );
  }
  return numBlocks;
}

/** What one engine's KV cache is sized from, besides the options: see kvBlocks. */
export interface KvSizing {
  /** The device's memory measured before the model was loaded (backend.memoryInfo()). */
  memoryAtStart: MemoryInfo;
  weightBytes: number;
  /** The step workspace's bytes, reserved before the KV cache is sized. */
  reservedBytes: number;
}

type ScheduleShape = Omit<ReturnType<typeof engineShape>, "numBlocks">;

/**
 * Refuses options that size the KV cache twice (or not at all), and --gpu-memory-utilization
 * where its budget would miss a term: a draft model's own KV cache and workspace.
 */
export function checkKvSizing(options: LocalEngineOptions): void {
  const utilization = options.gpuMemoryUtilization;
  // numKvBlocks wins over kvCacheMemoryBytes (ranks pass the agreed count beside the flag's budget).
  const explicit = options.numKvBlocks !== undefined
    ? "numKvBlocks"
    : options.kvCacheMemoryBytes !== undefined
    ? "--kv-cache-memory"
    : undefined;
  if (explicit === undefined && utilization === undefined) {
    throw new RangeError(
      "An engine needs kvCacheMemoryBytes, numKvBlocks or gpuMemoryUtilization",
    );
  }
  if (explicit !== undefined && utilization !== undefined) {
    throw new RangeError(
      `The KV cache is sized by ${explicit} or by --gpu-memory-utilization, not both`,
    );
  }
  if (options.gpuMemoryUtilization === undefined) return;
  checkUtilization(options.gpuMemoryUtilization);
  const spec = options.speculative;
  if (spec !== undefined && spec.model !== "ngram") {
    throw new RangeError(
      "--gpu-memory-utilization cannot size the KV cache beside a draft model yet " +
        `(--speculative-model ${spec.model}): give --kv-cache-memory instead`,
    );
  }
}

/**
 * The KV blocks (block 0 included) for the options: numKvBlocks as given, or planned from
 * kvCacheMemoryBytes, or from gpuMemoryUtilization and `sizing` (required then), one path for both
 * budgets through planKvBlocks.
 */
export function kvBlocks(
  options: LocalEngineOptions,
  shape: Pick<ScheduleShape, "blockSize" | "maxModelLen" | "bytesPerBlock">,
  sizing?: KvSizing,
): { numBlocks: number; memoryPlan?: KvMemoryPlan } {
  checkKvSizing(options);
  if (options.numKvBlocks !== undefined) return { numBlocks: options.numKvBlocks };
  const { blockSize, maxModelLen, bytesPerBlock } = shape;
  let memoryPlan: KvMemoryPlan | undefined;
  if (options.gpuMemoryUtilization !== undefined) {
    if (sizing === undefined) {
      throw new RangeError(
        "gpuMemoryUtilization needs the memory measured before loading and the bytes held " +
          "(startLocalEngine measures them; LLM.over takes parts.memoryAtStart)",
      );
    }
    memoryPlan = kvMemoryPlan(options.gpuMemoryUtilization, sizing.memoryAtStart, sizing);
  }
  const kvCacheMemoryBytes = memoryPlan?.kvCacheMemoryBytes ?? options.kvCacheMemoryBytes!;
  const numBlocks = planKvBlocks(
    { kvCacheMemoryBytes, blockSize, maxModelLen, memoryPlan },
    bytesPerBlock,
  );
  return memoryPlan === undefined ? { numBlocks } : { numBlocks, memoryPlan };
}

/**
 * The scheduler's configuration and the KV cache's shape for a model's config and the options
 * (the KV cache from numKvBlocks or kvCacheMemoryBytes; createLocalEngine also takes
 * gpuMemoryUtilization, which needs the step workspace reserved first).
 */
export function engineShape(
  modelConfig: LoadedModel["config"],
  options: LocalEngineOptions,
): {
  config: EngineConfig;
  maxModelLen: number;
  blockSize: number;
  dtype: ReturnType<typeof kvDtype>;
  numBlocks: number;
  bytesPerBlock: number;
} {
  const shape = scheduleShape(modelConfig, options);
  return { ...shape, numBlocks: kvBlocks(options, shape).numBlocks };
}

/** engineShape without the KV block count. */
function scheduleShape(
  modelConfig: LoadedModel["config"],
  options: LocalEngineOptions,
): ScheduleShape {
  const modelMax = modelConfig.maxPositionEmbeddings;
  const maxModelLen = Math.min(options.maxModelLen ?? modelMax, modelMax);
  const blockSize = options.blockSize ?? ENGINE_DEFAULTS.blockSize;
  const dtype = kvDtype(options.kvCacheDtype ?? ENGINE_DEFAULTS.kvCacheDtype);
  const bytesPerBlock = KvCache.bytesPerBlock(modelConfig, blockSize, dtype);
  const spec = options.speculative;
  const maxNumSeqs = options.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs;
  const maxNumBatchedTokens = options.maxNumBatchedTokens ?? ENGINE_DEFAULTS.maxNumBatchedTokens;
  const disableBySize = spec?.disableBySize ?? ENGINE_DEFAULTS.speculativeDisableBySize;
  // Verification returns logits for every proposed row: 1 + k per request while speculating
  // (at most disableBySize requests), 1 per request otherwise.
  const specRows = spec === undefined ? undefined : Math.min(
    maxNumBatchedTokens,
    Math.max(maxNumSeqs, Math.min(maxNumSeqs, disableBySize) * (1 + spec.numSpeculativeTokens)),
  );
  const config: EngineConfig = {
    maxNumBatchedTokens,
    maxNumSeqs,
    ...withoutUndefined({
      maxNumLogitRows: options.maxNumLogitRows ?? specRows,
      enableChunkedPrefill: options.enableChunkedPrefill,
      policy: options.policy,
      mode: options.mode,
      enablePrefixCaching: options.enablePrefixCaching,
      samplingDevice: options.samplingDevice,
    }),
    maxModelLen,
  };
  return { config, maxModelLen, blockSize, dtype, bytesPerBlock };
}

function kvDtype(name: KvCacheDtype) {
  const format = formatByName(name);
  if (format === undefined) {
    throw new RangeError(`Unknown KV cache dtype ${JSON.stringify(name)}`);
  }
  return format.id;
}

/** An engine over a loaded model, on the backend the model was loaded with. */
export function createLocalEngine(
  backend: NativeBackend,
  loaded: Pick<LoadedModel, "config" | "model" | "tokenizer">,
  options: LocalEngineOptions,
  /**
   * The draft model, loaded, when `options.speculative.model` names one; or a proposer of the
   * caller's own (tests), which `options.speculative` then only gives k and the threshold for.
   */
  parts: {
    draft?: Pick<LoadedModel, "config" | "model">;
    proposer?: Proposer;
    /** With gpuMemoryUtilization: backend.memoryInfo() taken before the model was loaded. */
    memoryAtStart?: MemoryInfo;
  } = {},
): LocalEngine {
  checkKvSizing(options);
  const shape = scheduleShape(loaded.config, options);
  const { config, maxModelLen, blockSize, dtype, bytesPerBlock } = shape;
  const spec = options.speculative;
  const { maxNumSeqs, maxNumBatchedTokens } = config;
  const disableBySize = spec?.disableBySize ?? ENGINE_DEFAULTS.speculativeDisableBySize;
  // The step workspace first: its bytes are fixed and known once reserved, so a budget from
  // --gpu-memory-utilization can leave them out before the KV cache takes the rest.
  const workspace = new ForwardWorkspace(
    backend,
    loaded.model.config,
    stepCapacity(config, blockSize),
    { captureLayers: options.captureLayers },
  );
  let kvCache: KvCache | undefined;
  let executor: LocalExecutor | undefined;
  let proposer: Proposer | undefined;
  try {
    const { numBlocks, memoryPlan } = kvBlocks(
      options,
      shape,
      parts.memoryAtStart === undefined ? undefined : {
        memoryAtStart: parts.memoryAtStart,
        weightBytes: loaded.model.weights.sizeBytes,
        // The executor's device sampler is reserved with it, beside the workspace.
        reservedBytes: workspace.reservedBytes +
          DeviceSampler.bytesFor(workspace.capacity.maxNumLogitRows),
      },
    );
    kvCache = new KvCache(backend, loaded.config, { blockSize, numBlocks, dtype });
    if (spec !== undefined) {
      proposer = parts.proposer ?? (spec.model === "ngram"
        ? new NgramProposer({
          maxN: spec.ngramPromptLookupMax ?? ENGINE_DEFAULTS.ngramPromptLookupMax,
          minN: spec.ngramPromptLookupMin ?? Math.min(
            ENGINE_DEFAULTS.ngramPromptLookupMin,
            spec.ngramPromptLookupMax ?? ENGINE_DEFAULTS.ngramPromptLookupMax,
          ),
        })
        : newDraftProposer(backend, parts.draft, {
          blockSize,
          // As many tokens as the target's cache: the draft never holds more sequences.
          numKvBlocks: numBlocks,
          kvCacheDtype: dtype,
          maxNumBatchedTokens,
          maxNumSeqs: Math.max(1, Math.min(maxNumSeqs, disableBySize)),
          maxModelLen,
          targetVocabSize: loaded.config.vocabSize,
          enforceEager: options.enforceEager,
        }, spec.model));
      config.speculativeDecoding = {
        proposer,
        numSpeculativeTokens: spec.numSpeculativeTokens,
        disableBySize,
      } satisfies SpeculativeConfig;
    }
    executor = new LocalExecutor(
      backend,
      { model: loaded.model, kvCache, workspace },
      workspace.capacity,
      { enforceEager: options.enforceEager },
    );
    const engine = new LLMEngine({ executor, tokenizer: loaded.tokenizer }, config);
    const held = executor;
    const heldKv = kvCache;
    const draftBytes = proposer instanceof DraftModelProposer ? proposer.reservedBytes : 0;
    return {
      engine,
      numKvBlocks: numBlocks - 1,
      blockSize,
      maxModelLen,
      reservedBytes: executor.reservedBytes + draftBytes,
      kvCacheBytes: numBlocks * bytesPerBlock,
      ...(memoryPlan === undefined ? {} : { kvMemoryPlan: memoryPlan }),
      ...(proposer === undefined ? {} : { proposer }),
      graphStats: () => held.graphStats,
      release() {
        proposer?.release();
        held.release();
        heldKv.release();
      },
    };
  } catch (error) {
    proposer?.release();
    // The executor owns the workspace once built.
    if (executor === undefined) workspace.release();
    else executor.release();
    kvCache?.release();
    throw error;
  }
}

function newDraftProposer(
  backend: NativeBackend,
  draft: Pick<LoadedModel, "config" | "model"> | undefined,
  options: ConstructorParameters<typeof DraftModelProposer>[2],
  path: string,
): DraftModelProposer {
  if (draft === undefined) {
    throw new RangeError(
      `--speculative-model ${JSON.stringify(path)} names a draft model, but none was loaded ` +
        `(startLocalEngine loads it; LLM.over takes it as parts.draft)`,
    );
  }
  return new DraftModelProposer(backend, draft, options);
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
  // Before anything loads: a KV sizing the engine would refuse fails at once.
  checkKvSizing(options);
  if (options.parallel !== undefined && worldSize(options.parallel) > 1) {
    if (options.gpuMemoryUtilization !== undefined) {
      throw new RangeError(
        "--gpu-memory-utilization cannot be combined with --tensor-parallel-size or " +
          "--pipeline-parallel-size yet: give --kv-cache-memory (per rank) instead",
      );
    }
    // Neither has been built for ranks yet: the ranks' executor proposes nothing and shards only
    // weights as the checkpoint stores them.
    if (options.speculative !== undefined) {
      throw new RangeError(
        "--speculative-model cannot be combined with --tensor-parallel-size or " +
          "--pipeline-parallel-size yet: run speculation on one rank",
      );
    }
    if (options.quantization !== undefined) {
      throw new RangeError(
        "--quantization cannot be combined with --tensor-parallel-size or " +
          "--pipeline-parallel-size yet: quantize offline with deno task quantize instead",
      );
    }
    return await startParallelEngine(options, { onLoadProgress });
  }
  const backend = NativeBackend.open({
    backend: options.backend,
    libraryPath: options.libraryPath,
    numThreads: options.numThreads ?? defaultNumThreads(),
  });
  let loaded: LoadedModel | undefined;
  let draft: LoadedModel | undefined;
  try {
    // What others (and this context) hold before our weights, for --gpu-memory-utilization.
    const memoryAtStart = options.gpuMemoryUtilization === undefined
      ? undefined
      : backend.memoryInfo();
    loaded = await loadModel(backend, options.modelPath, {
      showProgress,
      onProgress: onLoadProgress,
      loadFormat: options.loadFormat,
      seed: options.loadSeed,
      quantization: options.quantization,
      sparsity: options.sparsity,
      calibration: options.calibration,
      mmap: options.mmap,
    });
    draft = await loadDraft(backend, options, loaded, showProgress);
    const local = createLocalEngine(backend, loaded, options, {
      ...(draft === undefined ? {} : { draft }),
      ...(memoryAtStart === undefined ? {} : { memoryAtStart }),
    });
    const model = loaded;
    // "self" without a quantization drafts with the target's own weights: released once.
    const draftModel = draft === loaded ? undefined : draft;
    return {
      ...local,
      loaded,
      backend,
      release() {
        local.release();
        draftModel?.release();
        model.release();
        backend.close();
      },
    };
  } catch (error) {
    if (draft !== loaded) draft?.release();
    loaded?.release();
    backend.close();
    throw error;
  }
}

/**
 * The draft model that `options.speculative` names, loaded; undefined for n-gram or no
 * speculation. "self" loads the target's path again, as the target was loaded (same dummy seed),
 * through the draft's quantization: the quantized self-draft needs no second file on disk. A
 * draft's tied embeddings are quantized too: in a small model the head is most of a step's bytes,
 * and a draft's precision only moves acceptance, never the output.
 */
export async function loadDraft(
  backend: NativeBackend,
  options: Pick<EngineOptions, "modelPath" | "loadFormat" | "loadSeed" | "speculative">,
  target: LoadedModel,
  showProgress = false,
): Promise<LoadedModel | undefined> {
  const spec = options.speculative;
  if (spec === undefined || spec.model === "ngram") return undefined;
  if (spec.model === "self") {
    if (spec.quantization === undefined) return target;
    return await loadModel(backend, options.modelPath, {
      showProgress,
      loadFormat: options.loadFormat,
      seed: options.loadSeed,
      quantization: spec.quantization,
      quantizeTiedEmbeddings: true,
    });
  }
  return await loadModel(backend, spec.model, {
    showProgress,
    quantization: spec.quantization,
    quantizeTiedEmbeddings: true,
  });
}
