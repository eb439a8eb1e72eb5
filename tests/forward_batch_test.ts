// batchMaxQueryLen: the host's max_query_len for dl_paged_attention, from a forward batch.
import assert from "node:assert/strict";
import { batchMaxQueryLen, type ForwardBatch } from "../src/engine/forward_batch.ts";

function withQueryStart(queryStart: number[]): ForwardBatch {
  const numTokens = queryStart[queryStart.length - 1];
  return {
    tokenIds: new Int32Array(numTokens),
    positions: new Int32Array(numTokens),
    slotMapping: new Int32Array(numTokens),
    seqLens: new Int32Array(queryStart.length - 1),
    queryStart: Int32Array.from(queryStart),
    blockTables: new Int32Array(queryStart.length - 1),
    maxBlocksPerSeq: 1,
    logitRows: new Int32Array(0),
    blockCopies: new Int32Array(0),
  };
}

Deno.test("batchMaxQueryLen: the most new tokens of any sequence, empty ones included", () => {
  assert.equal(batchMaxQueryLen(withQueryStart([0, 1, 2, 3])), 1); // decode only
  assert.equal(batchMaxQueryLen(withQueryStart([0, 1, 1, 8, 9])), 7); // mixed, one empty
  assert.equal(batchMaxQueryLen(withQueryStart([0, 0, 0])), 0); // no tokens
  assert.equal(batchMaxQueryLen(withQueryStart([0, 5, 6])), 5); // the longest first
});
