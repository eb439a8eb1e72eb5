// How the model is split: head shares (even, uneven, replicated KV heads), vocabulary and layer
// splits, shard-on-read slices against the whole tensor, and the batch codec and micro-batches.
import assert from "node:assert/strict";
import type { ForwardBatch } from "../src/engine/forward_batch.ts";
import type { TensorInfo } from "../src/formats/tensor.ts";
import { decodeBatch, encodeBatch, splitBatch } from "../src/parallel/batch_codec.ts";
import { evenSplit, headShare } from "../src/parallel/plan.ts";
import { sliceTensor } from "../src/parallel/shard.ts";
import { parseServeConfig } from "../src/server/config.ts";
import { UsageError } from "../src/errors.ts";

Deno.test("head shares cover every query head once, each with its own KV head", () => {
  const shapes = [
    [8, 4],
    [6, 3],
    [4, 1],
    [6, 2],
    [8, 2],
    [12, 4],
    [7, 7],
    [32, 8],
  ];
  for (const [heads, kvHeads] of shapes) {
    for (const tp of [1, 2, 3, 4]) {
      if (tp > heads) continue;
      const group = heads / kvHeads;
      const seen: number[] = [];
      for (let t = 0; t < tp; t++) {
        const { qHeads, kvHeads: kv } = headShare({ numHeads: heads, numKvHeads: kvHeads }, tp, t);
        assert.ok(qHeads.length > 0);
        assert.equal(qHeads.length % kv.length, 0, `${heads}/${kvHeads} tp ${tp} rank ${t}`);
        const perKv = qHeads.length / kv.length;
        // The kernel's mapping: local query head i reads local KV head floor(i / perKv).
        qHeads.forEach((q, i) => assert.equal(kv[Math.floor(i / perKv)], Math.floor(q / group)));
        seen.push(...qHeads);
        // KV heads are split while there are enough, else replicated.
        if (kvHeads >= tp) assert.equal(kv.length, evenSplit(kvHeads, tp, t).count);
      }
      assert.deepEqual(seen, Array.from({ length: heads }, (_, i) => i));
    }
  }
});

Deno.test("even splits are contiguous and differ by at most one", () => {
  for (const [n, parts] of [[5, 2], [7, 3], [172, 2], [161, 4], [3, 3]]) {
    let next = 0;
    for (let i = 0; i < parts; i++) {
      const { start, count } = evenSplit(n, parts, i);
      assert.equal(start, next);
      assert.ok(count === Math.floor(n / parts) || count === Math.ceil(n / parts));
      next += count;
    }
    assert.equal(next, n);
  }
});

Deno.test("shard-on-read slices equal slices of the whole tensor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [rows, cols] = [7, 5];
    const whole = Float32Array.from({ length: rows * cols }, (_, i) => i + 0.5);
    const file = `${dir}/t.bin`;
    const header = new Uint8Array(13); // the tensor does not start the file
    await Deno.writeFile(file, new Uint8Array([...header, ...new Uint8Array(whole.buffer)]));
    const info: TensorInfo = {
      name: "w",
      dtype: "F32",
      shape: [rows, cols],
      file,
      byteOffset: 13,
      byteLength: whole.byteLength,
    };
    const rowSpans = [{ start: 1, count: 2 }, { start: 5, count: 2 }, { start: null, count: 1 }];
    const colSpans = [{ start: 0, count: 1 }, { start: 3, count: 2 }];
    const read = (v: TensorInfo) => new Float32Array(v.generate!().buffer);
    const expectRows = [1, 2, 5, 6];
    const byRows = sliceTensor(info, "w", rowSpans);
    assert.deepEqual(byRows.shape, [5, 5]);
    assert.deepEqual(
      read(byRows),
      Float32Array.from([
        ...expectRows.flatMap((r) => [...whole.subarray(r * cols, r * cols + cols)]),
        ...new Array(cols).fill(0),
      ]),
    );
    const byCols = sliceTensor(info, "w", [{ start: 0, count: rows }], colSpans);
    assert.deepEqual(byCols.shape, [rows, 3]);
    assert.deepEqual(
      read(byCols),
      Float32Array.from(
        Array.from({ length: rows }, (_, r) => [0, 3, 4].map((c) => whole[r * cols + c])).flat(),
      ),
    );
    // Generated tensors (--load-format dummy) slice the same way.
    const generated = { ...info, generate: () => new Uint8Array(whole.buffer.slice(0)) };
    assert.deepEqual(read(sliceTensor(generated, "w", rowSpans)), read(byRows));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function sampleBatch(): ForwardBatch {
  // Three sequences of 3, 1 and 4 new tokens; logits for their last rows; one block copy.
  return {
    tokenIds: Int32Array.from([5, 6, 7, 8, 9, 10, 11, 12]),
    positions: Int32Array.from([0, 1, 2, 4, 0, 1, 2, 3]),
    slotMapping: Int32Array.from([16, 17, 18, 36, 48, 49, 50, 51]),
    seqLens: Int32Array.from([3, 5, 4]),
    queryStart: Int32Array.from([0, 3, 4, 8]),
    blockTables: Int32Array.from([1, 0, 2, 3, 3, 0]),
    maxBlocksPerSeq: 2,
    logitRows: Int32Array.from([2, 3, 7]),
    numLmHeadRows: 2,
    blockCopies: Int32Array.from([2, 4]),
  };
}

Deno.test("a batch survives the broadcast codec", () => {
  const batch = sampleBatch();
  const buf = new Int32Array(100);
  const n = encodeBatch(batch, buf);
  assert.deepEqual(decodeBatch(buf.subarray(0, n)), batch);
  assert.throws(() => encodeBatch(batch, new Int32Array(10)), /does not fit the 10 reserved/);
});

Deno.test("micro-batches split whole sequences and keep logit rows in order", () => {
  const batch = sampleBatch();
  const parts = splitBatch(batch, 2);
  assert.equal(parts.length, 2);
  assert.deepEqual([...parts[0].seqLens, ...parts[1].seqLens], [...batch.seqLens]);
  assert.deepEqual([...parts[0].tokenIds, ...parts[1].tokenIds], [...batch.tokenIds]);
  for (const p of parts) {
    assert.equal(p.queryStart[0], 0);
    assert.equal(p.queryStart.at(-1), p.tokenIds.length);
    assert.equal(p.blockCopies.length, 0);
  }
  // Global logit rows back from the parts, and the LM-head rows stay the first two.
  const rows = parts.flatMap((p, i) =>
    [...p.logitRows].map((r) => r + (i === 0 ? 0 : parts[0].tokenIds.length))
  );
  assert.deepEqual(rows, [...batch.logitRows]);
  assert.equal(parts.reduce((n, p) => n + p.numLmHeadRows!, 0), 2);
  assert.equal(splitBatch(batch, 8).length, 3, "never more parts than sequences");
});

Deno.test("serve's rank flags parse into ParallelOptions and bad ones are refused", () => {
  const parse = (args: string[]) => {
    const parsed = parseServeConfig(["--model", "m", ...args], { env: {} });
    if (parsed.help || parsed.version) throw new Error("expected a configuration");
    return parsed;
  };
  const parsed = parse([
    "--tensor-parallel-size",
    "2",
    "--sequence-parallel",
    "--rank-timeout",
    "5",
  ]);
  assert.deepEqual(parsed.config.parallel, {
    tensorParallelSize: 2,
    pipelineParallelSize: 1,
    sequenceParallel: true,
    nnodes: 1,
    nodeRank: 0,
    rankTimeoutMs: 5000,
  });
  const single = parse([]);
  assert.equal(single.config.parallel, undefined);
  assert.throws(
    () => parse(["--sequence-parallel"]),
    /--sequence-parallel needs --tensor-parallel-size/,
  );
  assert.throws(
    () => parse(["--tensor-parallel-size", "2", "--nnodes", "3"]),
    /--nnodes 3 must divide the 2 ranks/,
  );
  assert.throws(() => parse(["--pipeline-parallel-size", "0"]), UsageError);
});
