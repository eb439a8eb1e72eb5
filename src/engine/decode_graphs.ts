// CUDA graphs for decode steps: a decode batch is padded up to a batch-size bucket, and each
// bucket's forward pass is captured once (ffi/denollm.h "Graphs") and replayed on later steps,
// so a step costs one host launch instead of a few hundred. Every buffer the pass touches is
// the workspace's, at fixed addresses, and every host-side shape is the bucket's, so a replay
// only needs the step's metadata written into the same buffers first.
import type { NativeBackend } from "../../ffi/native.ts";
import type { ForwardBatch } from "./forward_batch.ts";

/** What the graphs have done so far: captures (one per bucket used) and replays. */
export interface GraphStats {
  numCaptures: number;
  numReplays: number;
  /** The buckets captured so far, ascending. */
  buckets: number[];
}

/** Batch sizes with a graph: powers of two below maxNumSeqs, then maxNumSeqs itself. */
export function graphBuckets(maxNumSeqs: number): number[] {
  if (!Number.isInteger(maxNumSeqs) || maxNumSeqs < 1) {
    throw new RangeError(`maxNumSeqs must be a positive integer, got ${maxNumSeqs}`);
  }
  const buckets: number[] = [];
  for (let n = 1; n < maxNumSeqs; n *= 2) buckets.push(n);
  buckets.push(maxNumSeqs);
  return buckets;
}

/**
 * Whether a batch has the decode shape a graph replays: one new token per sequence, whose row is
 * its only logit row, every row through the LM head. (A one-token prefill chunk has it too, and
 * runs the same kernels.)
 */
export function isDecodeShaped(batch: ForwardBatch): boolean {
  const n = batch.seqLens.length;
  if (batch.tokenIds.length !== n || batch.logitRows.length !== n) return false;
  if ((batch.numLmHeadRows ?? n) !== n) return false;
  for (let i = 0; i < n; i++) {
    if (batch.queryStart[i + 1] !== i + 1 || batch.logitRows[i] !== i) return false;
  }
  return true;
}

/**
 * The decode batch with padding rows appended up to numRows: each a sequence of length 0 (which
 * attention skips) with token 0 at position 0 and slot -1 (which kv_write skips), its block table
 * row all block 0 and its own logit row, whose logits nobody reads.
 */
export function padDecodeBatch(batch: ForwardBatch, numRows: number): ForwardBatch {
  const n = batch.seqLens.length;
  if (!Number.isInteger(numRows) || numRows < n) {
    throw new RangeError(`A batch of ${n} sequences cannot be padded to ${numRows} rows`);
  }
  const width = batch.maxBlocksPerSeq;
  const grow = (a: Int32Array, length: number, fill = 0) => {
    const out = new Int32Array(length).fill(fill);
    out.set(a);
    return out;
  };
  const queryStart = new Int32Array(numRows + 1);
  const logitRows = new Int32Array(numRows);
  for (let i = 0; i < numRows; i++) {
    queryStart[i + 1] = i + 1;
    logitRows[i] = i;
  }
  return {
    tokenIds: grow(batch.tokenIds, numRows),
    positions: grow(batch.positions, numRows),
    slotMapping: grow(batch.slotMapping, numRows, -1),
    seqLens: grow(batch.seqLens, numRows),
    queryStart,
    blockTables: grow(batch.blockTables, numRows * width),
    maxBlocksPerSeq: width,
    logitRows,
    numLmHeadRows: numRows,
    blockCopies: batch.blockCopies,
  };
}

/** One context's decode graphs, one per bucket, captured on first use. */
export class DecodeGraphs {
  readonly buckets: readonly number[];
  #backend: NativeBackend;
  /** Bucket -> graph id. */
  #graphs = new Map<number, number>();
  #numCaptures = 0;
  #numReplays = 0;

  constructor(backend: NativeBackend, maxNumSeqs: number) {
    this.#backend = backend;
    this.buckets = graphBuckets(maxNumSeqs);
  }

  /** The bucket a batch runs in as a graph, or null when it must run eagerly. */
  bucketFor(batch: ForwardBatch): number | null {
    if (!isDecodeShaped(batch)) return null;
    return this.buckets.find((b) => b >= batch.seqLens.length) ?? null;
  }

  /**
   * Runs the bucket's graph: on first use `enqueue` (the forward pass of a batch padded to the
   * bucket, its metadata already uploaded) is captured into it; the graph is then launched.
   */
  run(bucket: number, enqueue: () => void): void {
    const b = this.#backend;
    let id = this.#graphs.get(bucket);
    if (id === undefined) {
      b.graphBegin();
      try {
        enqueue();
      } catch (error) {
        // End the capture so the context stays usable. An interrupted capture is usually spoiled
        // and dl_graph_end then says only that; the caller needs the error that interrupted it.
        try {
          b.graphDestroy(b.graphEnd());
        } catch { /* the spoiled capture's own report adds nothing to `error` */ }
        throw error;
      }
      id = b.graphEnd();
      this.#graphs.set(bucket, id);
      this.#numCaptures++;
    } else this.#numReplays++;
    b.graphLaunch(id);
  }

  get stats(): GraphStats {
    return {
      numCaptures: this.#numCaptures,
      numReplays: this.#numReplays,
      buckets: [...this.#graphs.keys()].sort((x, y) => x - y),
    };
  }

  release(): void {
    for (const id of this.#graphs.values()) this.#backend.graphDestroy(id);
    this.#graphs.clear();
  }
}
