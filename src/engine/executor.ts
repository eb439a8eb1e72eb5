// Executors run forward batches. The engine hands one a plain `ForwardBatch` per step and gets
// logits back, or token ids sampled on the device; the executor is the only part that knows about
// devices (and, later, ranks).
import { dtypeSize, type NativeBackend } from "../../ffi/native.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { LlamaModel } from "../model/llama.ts";
import { ForwardWorkspace, type StepCapacity } from "../model/workspace.ts";
import { type DeviceSampleParams, DeviceSampler } from "./device_sampler.ts";
import { DecodeGraphs, type GraphStats, padDecodeBatch } from "./decode_graphs.ts";
import type { ForwardBatch } from "./forward_batch.ts";

/** What a step samples on the device: every LM-head row's parameters, and whether logits return. */
export interface StepSampling {
  params: DeviceSampleParams;
  /** Copy the logits back as well (rows sampled on the host, prompt logprobs). */
  copyLogits: boolean;
}

/** A step sampled on the device: one token id per LM-head row, and the logits if asked for. */
export interface SampledStep {
  tokenIds: Int32Array; // [numLmHeadRows]
  logits: Float32Array | null; // [numLmHeadRows, vocab] with copyLogits
}

export interface Executor {
  readonly vocabSize: number;
  /** KV blocks in the cache, block 0 (the null block) included. */
  readonly numKvBlocks: number;
  readonly blockSize: number;
  /** The largest step `execute` accepts. */
  readonly capacity: Required<StepCapacity>;
  /** Device bytes reserved for steps (scratch, metadata, kernel workspace), beside weights and KV. */
  readonly reservedBytes: number;
  /**
   * Runs one step; returns logits [batch.numLmHeadRows ?? batch.logitRows.length, vocab], valid
   * until the next call.
   */
  execute(batch: ForwardBatch): Float32Array;
  /**
   * Runs one step as `execute` does, then samples one token per LM-head row on the device
   * (dl_sample) and copies back the ids, valid until the next call. Absent: the executor only
   * returns logits, and the engine samples on the host.
   */
  executeSampled?(batch: ForwardBatch, sampling: StepSampling): SampledStep;
  /**
   * Whether `--sampling-device auto` picks the device: true where logits live in device memory
   * of their own, so that copying them is the step's cost (the CUDA build).
   */
  readonly prefersDeviceSampling?: boolean;
  /**
   * The last step's final-norm hidden states of its logit rows, [numRows, hidden], what pooling
   * (embeddings) reads; from reserved buffers, valid until the next call.
   */
  hiddenRows(numRows: number): Float32Array;
  readonly hiddenSize: number;
  /** The decoder layers whose outputs the forward pass keeps at the logit rows (none if absent). */
  readonly captureLayers?: readonly number[];
  /** The last step's captured layer outputs: one [numRows, hidden] array per captureLayers entry. */
  capturedRows?(numRows: number): Float32Array[];
  release(): void;
}

/** The step capacity the scheduler limits imply for a KV block size. */
export function stepCapacity(
  limits: {
    maxNumBatchedTokens: number;
    maxNumSeqs: number;
    maxModelLen: number;
    maxNumLogitRows?: number;
  },
  blockSize: number,
): Required<StepCapacity> {
  // A step never has more sequences than tokens.
  const maxNumSeqs = Math.min(limits.maxNumSeqs, limits.maxNumBatchedTokens);
  return {
    maxNumTokens: limits.maxNumBatchedTokens,
    maxNumSeqs,
    maxNumLogitRows: limits.maxNumLogitRows ?? maxNumSeqs,
    maxBlocksPerSeq: Math.ceil(limits.maxModelLen / blockSize),
    blockSize,
  };
}

/** One device in this process: the model, its KV cache and a workspace reserved up front. */
export class LocalExecutor implements Executor {
  readonly vocabSize: number;
  readonly numKvBlocks: number;
  readonly blockSize: number;
  readonly capacity: Required<StepCapacity>;
  readonly reservedBytes: number;
  readonly hiddenSize: number;
  readonly captureLayers: readonly number[];
  readonly prefersDeviceSampling: boolean;
  #backend: NativeBackend;
  #model: LlamaModel;
  #kvCache: KvCache;
  #workspace: ForwardWorkspace;
  #sampler: DeviceSampler;
  #blockBytes: number;
  /** Decode steps as CUDA graphs; null: every step runs eagerly. */
  #graphs: DecodeGraphs | null = null;

  /**
   * `parts.workspace`, when given, is one reserved beforehand for this model and `capacity` (so
   * the KV cache can be sized after its bytes are known); the executor owns it from then on, and
   * `options` are the workspace's own.
   *
   * Decode steps run as CUDA graphs (src/engine/decode_graphs.ts) where the backend replays them
   * (the CUDA build) unless `enforceEager` (vLLM's --enforce-eager) says no; never with captured
   * layers, whose extra rows a graph's fixed shape does not hold.
   */
  constructor(
    backend: NativeBackend,
    parts: { model: LlamaModel; kvCache: KvCache; workspace?: ForwardWorkspace },
    capacity: StepCapacity,
    options: { captureLayers?: readonly number[]; enforceEager?: boolean } = {},
  ) {
    const given = parts.workspace?.capacity;
    if (
      given !== undefined &&
      (Object.keys(capacity) as (keyof StepCapacity)[]).some((k) => capacity[k] !== given[k])
    ) {
      throw new RangeError(
        `The workspace was reserved for ${JSON.stringify(given)}, not ${JSON.stringify(capacity)}`,
      );
    }
    if (capacity.blockSize !== parts.kvCache.blockSize) {
      throw new RangeError(
        `The step capacity is for blocks of ${capacity.blockSize} tokens, the KV cache has ` +
          `${parts.kvCache.blockSize}`,
      );
    }
    this.#backend = backend;
    this.#model = parts.model;
    this.#kvCache = parts.kvCache;
    this.vocabSize = parts.model.config.vocabSize;
    this.hiddenSize = parts.model.config.hiddenSize;
    this.numKvBlocks = parts.kvCache.numBlocks;
    this.blockSize = parts.kvCache.blockSize;
    this.#workspace = parts.workspace ??
      new ForwardWorkspace(backend, parts.model.config, capacity, options);
    this.captureLayers = this.#workspace.captureLayers;
    this.capacity = this.#workspace.capacity;
    try {
      this.#sampler = new DeviceSampler(backend, this.capacity.maxNumLogitRows, this.vocabSize);
    } catch (error) {
      this.#workspace.release();
      throw error;
    }
    this.reservedBytes = this.#workspace.reservedBytes + this.#sampler.reservedBytes;
    // The CPU build's "device" memory is host memory: its logits are copied with one memcpy, and
    // the host sampler (f64) stays the default there, so seeded outputs stay what they were.
    this.prefersDeviceSampling = !backend.isHostMemory;
    const kv = parts.kvCache;
    // One block of one layer's K (or V) buffer.
    this.#blockBytes = kv.numKvHeads * kv.blockSize * kv.headDim * dtypeSize(kv.dtype);
    if (backend.replaysGraphs && !options.enforceEager && this.captureLayers.length === 0) {
      // A padded step has a token per row: the largest bucket fits both limits.
      const { maxNumSeqs, maxNumTokens } = this.capacity;
      this.#graphs = new DecodeGraphs(backend, Math.min(maxNumSeqs, maxNumTokens));
    }
  }

  /** Graph captures and replays so far; null when steps run eagerly. */
  get graphStats(): GraphStats | null {
    return this.#graphs?.stats ?? null;
  }

  execute(batch: ForwardBatch): Float32Array {
    return this.#forward(batch, false);
  }

  executeSampled(batch: ForwardBatch, sampling: StepSampling): SampledStep {
    const numRows = batch.numLmHeadRows ?? batch.logitRows.length;
    if (sampling.params.temperature.length !== numRows) {
      throw new RangeError(
        `Device sampling needs parameters for each of the ${numRows} LM-head rows, got ` +
          `${sampling.params.temperature.length}`,
      );
    }
    this.#forward(batch, true);
    const tokenIds = this.#sampler.sample(this.#workspace.logits, sampling.params);
    const logits = sampling.copyLogits ? this.#workspace.downloadLogits(numRows) : null;
    return { tokenIds, logits };
  }

  #forward(batch: ForwardBatch, keepLogitsOnDevice: boolean): Float32Array {
    const ws = this.#workspace;
    // Calibration watches activations from the host mid-pass, which a graph cannot do.
    const bucket = this.#model.observer === undefined
      ? this.#graphs?.bucketFor(batch) ?? null
      : null;
    const step = bucket === null ? batch : padDecodeBatch(batch, bucket);
    ws.upload(step); // checks the batch against the capacity before anything runs
    const numCopies = batch.blockCopies.length / 2;
    // Copy-on-write lands before the forward pass writes into the destination blocks.
    if (numCopies > 0) {
      for (const layer of this.#kvCache.layers) {
        for (const cache of [layer.k, layer.v]) {
          this.#backend.copyBlocks({
            cache,
            pairs: ws.meta.blockCopies,
            numPairs: numCopies,
            blockBytes: this.#blockBytes,
            numBlocks: this.numKvBlocks,
          });
        }
      }
    }
    if (bucket === null) {
      return this.#model.forward(batch, this.#kvCache, ws, { keepLogitsOnDevice });
    }
    this.#graphs!.run(bucket, () => this.#model.enqueue(step, this.#kvCache, ws));
    // The padding rows' logits come last and are left on the device.
    return keepLogitsOnDevice ? new Float32Array(0) : ws.downloadLogits(batch.logitRows.length);
  }

  hiddenRows(numRows: number): Float32Array {
    return this.#workspace.downloadHidden(numRows);
  }

  capturedRows(numRows: number): Float32Array[] {
    return this.#workspace.downloadCaptured(numRows);
  }

  release(): void {
    this.#sampler.release();
    this.#graphs?.release();
    this.#workspace.release();
  }
}
