// Executors run forward batches. The engine hands one a plain `ForwardBatch` per step and gets
// logits back; the executor is the only part that knows about devices (and, later, ranks).
import { dtypeSize, type NativeBackend } from "../../ffi/native.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { LlamaModel } from "../model/llama.ts";
import { ForwardWorkspace, type StepCapacity } from "../model/workspace.ts";
import { DecodeGraphs, type GraphStats, padDecodeBatch } from "./decode_graphs.ts";
import type { ForwardBatch } from "./forward_batch.ts";

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
  #backend: NativeBackend;
  #model: LlamaModel;
  #kvCache: KvCache;
  #workspace: ForwardWorkspace;
  #blockBytes: number;
  /** Decode steps as CUDA graphs; null: every step runs eagerly. */
  #graphs: DecodeGraphs | null = null;

  /**
   * Decode steps run as CUDA graphs (src/engine/decode_graphs.ts) where the backend replays them
   * (the CUDA build) unless `enforceEager` (vLLM's --enforce-eager) says no; never with captured
   * layers, whose extra rows a graph's fixed shape does not hold.
   */
  constructor(
    backend: NativeBackend,
    parts: { model: LlamaModel; kvCache: KvCache },
    capacity: StepCapacity,
    options: { captureLayers?: readonly number[]; enforceEager?: boolean } = {},
  ) {
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
    this.#workspace = new ForwardWorkspace(backend, parts.model.config, capacity, options);
    this.captureLayers = this.#workspace.captureLayers;
    this.capacity = this.#workspace.capacity;
    this.reservedBytes = this.#workspace.reservedBytes;
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
    if (bucket === null) return this.#model.forward(batch, this.#kvCache, ws);
    this.#graphs!.run(bucket, () => this.#model.enqueue(step, this.#kvCache, ws));
    // The padding rows' logits come last and are left on the device.
    return ws.downloadLogits(batch.logitRows.length);
  }

  hiddenRows(numRows: number): Float32Array {
    return this.#workspace.downloadHidden(numRows);
  }

  capturedRows(numRows: number): Float32Array[] {
    return this.#workspace.downloadCaptured(numRows);
  }

  release(): void {
    this.#graphs?.release();
    this.#workspace.release();
  }
}
