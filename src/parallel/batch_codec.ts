// A ForwardBatch as one int32 array and back: what rank 0 broadcasts to every rank each step, and
// the micro-batches a pipeline step is cut into.
import type { ForwardBatch } from "../engine/forward_batch.ts";

const HEADER = 6;

/** Int32s a batch of the given maxima takes. */
export function maxEncodedLength(c: {
  maxNumTokens: number;
  maxNumSeqs: number;
  maxNumLogitRows: number;
  maxBlocksPerSeq: number;
}): number {
  return HEADER + 3 * c.maxNumTokens + c.maxNumSeqs * (2 + c.maxBlocksPerSeq) + 1 +
    c.maxNumLogitRows + 2 * c.maxNumSeqs;
}

export function encodeBatch(b: ForwardBatch, out: Int32Array): number {
  const parts = [
    b.tokenIds,
    b.positions,
    b.slotMapping,
    b.seqLens,
    b.queryStart,
    b.blockTables,
    b.logitRows,
    b.blockCopies,
  ];
  const length = HEADER + parts.reduce((n, p) => n + p.length, 0);
  if (length > out.length) {
    throw new RangeError(`A step of ${length} int32s does not fit the ${out.length} reserved`);
  }
  out.set([
    b.tokenIds.length,
    b.seqLens.length,
    b.maxBlocksPerSeq,
    b.logitRows.length,
    b.numLmHeadRows ?? -1,
    b.blockCopies.length / 2,
  ]);
  let at = HEADER;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return length;
}

export function decodeBatch(data: Int32Array): ForwardBatch {
  const [numTokens, numSeqs, maxBlocksPerSeq, numLogits, numLmHeadRows, numCopies] = data;
  let at = HEADER;
  const take = (n: number) => data.slice(at, at += n);
  const batch: ForwardBatch = {
    tokenIds: take(numTokens),
    positions: take(numTokens),
    slotMapping: take(numTokens),
    seqLens: take(numSeqs),
    queryStart: take(numSeqs + 1),
    blockTables: take(numSeqs * maxBlocksPerSeq),
    maxBlocksPerSeq,
    logitRows: take(numLogits),
    blockCopies: take(2 * numCopies),
  };
  if (numLmHeadRows >= 0) batch.numLmHeadRows = numLmHeadRows;
  return batch;
}

/**
 * Cuts a batch into at most `parts` micro-batches of whole sequences, about equal in tokens, for
 * the pipeline. Block copies stay with the step (each rank does them first); logit rows keep
 * their order, so the micro-batches' logits laid end to end are the step's.
 */
export function splitBatch(b: ForwardBatch, parts: number): ForwardBatch[] {
  const numSeqs = b.seqLens.length;
  const numTokens = b.tokenIds.length;
  const n = Math.max(1, Math.min(parts, numSeqs));
  const cuts = [0];
  for (let i = 1, s = 0; i < n; i++) {
    const target = (numTokens * i) / n;
    while (s < numSeqs && b.queryStart[s + 1] <= target) s++;
    cuts.push(Math.max(cuts[i - 1] + 1, Math.min(s, numSeqs - (n - i))));
  }
  cuts.push(numSeqs);
  const numHead = b.numLmHeadRows ?? b.logitRows.length;
  const out: ForwardBatch[] = [];
  let logit = 0;
  for (let i = 0; i < n; i++) {
    const [s0, s1] = [cuts[i], cuts[i + 1]];
    const [t0, t1] = [b.queryStart[s0], b.queryStart[s1]];
    const firstLogit = logit;
    while (logit < b.logitRows.length && b.logitRows[logit] < t1) logit++;
    const w = b.maxBlocksPerSeq;
    out.push({
      tokenIds: b.tokenIds.subarray(t0, t1),
      positions: b.positions.subarray(t0, t1),
      slotMapping: b.slotMapping.subarray(t0, t1),
      seqLens: b.seqLens.subarray(s0, s1),
      queryStart: b.queryStart.slice(s0, s1 + 1).map((q) => q - t0),
      blockTables: b.blockTables.subarray(s0 * w, s1 * w),
      maxBlocksPerSeq: w,
      logitRows: b.logitRows.slice(firstLogit, logit).map((r) => r - t0),
      numLmHeadRows: Math.max(0, Math.min(numHead, logit) - firstLogit),
      blockCopies: new Int32Array(0),
    });
  }
  return out;
}
