// The boundary between the scheduler and the executor: one step as flat typed arrays. The
// scheduler's plain output goes in; nothing past this point sees a request or a KV manager, so a
// batch can be copied to another thread, process or rank as it is.
import type { SchedulerOutput } from "./scheduler.ts";

/**
 * One forward step's input: new tokens of several sequences laid end to end, where their K/V go,
 * which KV blocks to copy first, and which rows need logits.
 */
export interface ForwardBatch {
  tokenIds: Int32Array; // [numTokens]
  positions: Int32Array; // [numTokens]
  slotMapping: Int32Array; // [numTokens] cache slot of each token's K/V
  seqLens: Int32Array; // [numSeqs] tokens in the cache after this step
  queryStart: Int32Array; // [numSeqs + 1]
  blockTables: Int32Array; // [numSeqs, maxBlocksPerSeq]; unused entries are block 0, never read
  maxBlocksPerSeq: number;
  logitRows: Int32Array; // [numLogits] token rows whose logits are returned, in order
  /**
   * How many of the first logit rows go through the LM head (default all); the rest only get
   * their final-norm hidden state (embedding requests, whose rows come last).
   */
  numLmHeadRows?: number;
  blockCopies: Int32Array; // [numCopies, 2] (source block, destination block), done first
}

/** Lays a scheduler step out as a forward batch. */
export function buildForwardBatch(output: SchedulerOutput, blockSize: number): ForwardBatch {
  const steps = output.scheduled;
  const numTokens = steps.reduce((n, s) => n + s.numNewTokens, 0);
  const maxBlocksPerSeq = Math.max(1, ...steps.map((s) => s.blockIds.length));
  const batch: ForwardBatch = {
    tokenIds: new Int32Array(numTokens),
    positions: new Int32Array(numTokens),
    slotMapping: new Int32Array(numTokens),
    seqLens: new Int32Array(steps.length),
    queryStart: new Int32Array(steps.length + 1),
    blockTables: new Int32Array(steps.length * maxBlocksPerSeq),
    maxBlocksPerSeq,
    logitRows: new Int32Array(steps.reduce((n, s) => n + s.numLogitRows, 0)),
    numLmHeadRows: steps.reduce((n, s) => n + (s.isPooling ? 0 : s.numLogitRows), 0),
    blockCopies: new Int32Array(output.blockCopies.flatMap((c) => [c.src, c.dst])),
  };
  let row = 0;
  let logit = 0;
  let hasPooled = false;
  steps.forEach((s, i) => {
    if (hasPooled && !s.isPooling) {
      throw new RangeError("Embedding requests' shares must come last in a step");
    }
    hasPooled ||= s.isPooling === true;
    const table = s.blockIds;
    if (table.length * blockSize < s.start + s.numNewTokens) {
      throw new RangeError(
        `Request ${s.requestId} has slots for ${table.length * blockSize} tokens, ` +
          `fewer than the ${s.start + s.numNewTokens} this step computes`,
      );
    }
    for (let j = 0; j < s.numNewTokens; j++) {
      const position = s.start + j;
      batch.tokenIds[row] = s.tokenIds[j];
      batch.positions[row] = position;
      batch.slotMapping[row] = table[Math.floor(position / blockSize)] * blockSize +
        position % blockSize;
      row++;
    }
    batch.seqLens[i] = s.start + s.numNewTokens;
    batch.queryStart[i + 1] = row;
    batch.blockTables.set(table, i * maxBlocksPerSeq);
    for (let j = s.numLogitRows; j > 0; j--) batch.logitRows[logit++] = row - j;
  });
  return batch;
}

/**
 * The most new tokens of any sequence of the batch: what dl_paged_attention's max_query_len wants
 * (1 for a decode-only batch, which lets the CUDA build skip its prefill launch).
 */
export function batchMaxQueryLen(batch: ForwardBatch): number {
  let most = 0;
  for (let s = 0; s + 1 < batch.queryStart.length; s++) {
    most = Math.max(most, batch.queryStart[s + 1] - batch.queryStart[s]);
  }
  return most;
}
