// Turns a scheduler step into one forward pass: lays the scheduled tokens end to end with their
// positions, KV slots and block tables, performs pending KV block copies, returns sampled rows.
import type { NativeBackend } from "../../ffi/native.ts";
import { dtypeSize } from "../../ffi/native.ts";
import type { KvCache } from "../kv/kv_cache.ts";
import type { ForwardBatch, LlamaModel } from "../model/llama.ts";
import type { KvCacheManager } from "./kv_cache_manager.ts";
import type { SchedulerOutput } from "./scheduler.ts";

export class ModelRunner {
  readonly model: LlamaModel;
  readonly kvCache: KvCache;
  #backend: NativeBackend;

  constructor(backend: NativeBackend, model: LlamaModel, kvCache: KvCache) {
    this.#backend = backend;
    this.model = model;
    this.kvCache = kvCache;
  }

  /** Builds the forward batch of a step. */
  static buildBatch(output: SchedulerOutput, kv: KvCacheManager): ForwardBatch {
    const steps = output.scheduled;
    const numTokens = output.scheduled.reduce((n, s) => n + s.numNewTokens, 0);
    const tables = steps.map((s) => kv.blockTable(s.request.id));
    const maxBlocksPerSeq = Math.max(1, ...tables.map((t) => t.length));
    const batch: ForwardBatch = {
      tokenIds: new Int32Array(numTokens),
      positions: new Int32Array(numTokens),
      slotMapping: new Int32Array(numTokens),
      seqLens: new Int32Array(steps.length),
      queryStart: new Int32Array(steps.length + 1),
      // Unused table entries point at block 0, the null block, and are never read.
      blockTables: new Int32Array(steps.length * maxBlocksPerSeq),
      maxBlocksPerSeq,
      logitRows: new Int32Array(steps.filter((s) => s.sample).length),
    };
    let row = 0;
    let logit = 0;
    steps.forEach((s, i) => {
      const table = tables[i];
      const blockSize = kv.blockSize;
      for (let j = 0; j < s.numNewTokens; j++) {
        const position = s.start + j;
        batch.tokenIds[row] = s.request.tokenIds[position];
        batch.positions[row] = position;
        batch.slotMapping[row] = table[Math.floor(position / blockSize)] * blockSize +
          position % blockSize;
        row++;
      }
      batch.seqLens[i] = s.start + s.numNewTokens;
      batch.queryStart[i + 1] = row;
      batch.blockTables.set(table, i * maxBlocksPerSeq);
      if (s.sample) batch.logitRows[logit++] = row - 1;
    });
    return batch;
  }

  /** Runs a step; returns logits [numSampled, vocab] for the scheduled requests that sample. */
  execute(output: SchedulerOutput, kv: KvCacheManager): Float32Array {
    if (output.blockCopies.length > 0) this.#copyBlocks(output.blockCopies);
    return this.model.forward(ModelRunner.buildBatch(output, kv), this.kvCache);
  }

  #copyBlocks(copies: { src: number; dst: number }[]): void {
    const cache = this.kvCache;
    const pairs = new Int32Array(copies.length * 2);
    copies.forEach((c, i) => pairs.set([c.src, c.dst], 2 * i));
    const pairsPtr = this.#backend.alloc(pairs.byteLength);
    try {
      this.#backend.upload(pairsPtr, pairs);
      const blockBytes = cache.numKvHeads * cache.blockSize * cache.headDim *
        dtypeSize(cache.dtype);
      for (const layer of cache.layers) {
        for (const buffer of [layer.k, layer.v]) {
          this.#backend.copyBlocks({
            cache: buffer,
            pairs: pairsPtr,
            numPairs: copies.length,
            blockBytes,
            numBlocks: cache.numBlocks,
          });
        }
      }
    } finally {
      this.#backend.free(pairsPtr);
    }
  }
}
