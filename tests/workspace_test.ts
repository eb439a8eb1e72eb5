// The fixed kernel workspace: after dl_reserve_workspace no kernel allocates (dl_memory_stats), a
// call beyond the reservation fails with DL_ERR_OUT_OF_MEMORY, and unreserved contexts still grow.
import assert from "node:assert/strict";
import { type DevicePtr, DType, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import { type DeviceBuffers, withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;

const SHAPE = {
  maxNumTokens: 24,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  blockSize: 4,
  maxBlocksPerSeq: 6,
  maxMatmulK: 0,
};
const OUT_OF_MEMORY = 2;

interface Step {
  numSeqs: number;
  newTokens: number; // per sequence
  seqLen: number; // per sequence, new tokens included
  cacheDtype: DTypeId;
  rotaryDim: number;
}

/** Preallocated buffers for steps up to `numTokens` tokens, then one call of every kernel per step. */
function makeRunner(
  backend: NativeBackend,
  b: DeviceBuffers,
  numTokens: number,
): (step: Step) => void {
  const { numHeads, numKvHeads, headDim, blockSize, maxBlocksPerSeq } = SHAPE;
  const rand = ref.mulberry32(3);
  const qkvDim = (numHeads + 2 * numKvHeads) * headDim;
  const maxSeqs = numTokens;
  const numBlocks = maxSeqs * maxBlocksPerSeq;
  const qkv = b.from(ref.randomF32(rand, numTokens * qkvDim));
  const x = b.from(ref.randomF32(rand, numTokens * headDim));
  const w = b.from(ref.randomF32(rand, qkvDim * headDim));
  const out = b.zeros(numTokens * qkvDim * 4);
  const cacheBytes = numBlocks * numKvHeads * blockSize * headDim * 4;
  const kCache = b.zeros(cacheBytes), vCache = b.zeros(cacheBytes);
  const invFreq = b.from(
    Float32Array.from({ length: headDim / 2 }, (_, i) => 1 / 10000 ** (i / 8)),
  );
  const positions = b.zeros(numTokens * 4), slots = b.zeros(numTokens * 4);
  const seqLens = b.zeros(maxSeqs * 4), queryStart = b.zeros((maxSeqs + 1) * 4);
  const blockTables = b.from(Int32Array.from({ length: numBlocks }, (_, i) => i));

  return (step: Step): void => {
    const t = step.numSeqs * step.newTokens;
    const pos = new Int32Array(t), slot = new Int32Array(t);
    for (let s = 0; s < step.numSeqs; s++) {
      for (let i = 0; i < step.newTokens; i++) {
        const p = step.seqLen - step.newTokens + i;
        pos[s * step.newTokens + i] = p;
        slot[s * step.newTokens + i] = (s * maxBlocksPerSeq + Math.floor(p / blockSize)) *
            blockSize + p % blockSize;
      }
    }
    backend.upload(positions, pos);
    backend.upload(slots, slot);
    backend.upload(seqLens, new Int32Array(step.numSeqs).fill(step.seqLen));
    backend.upload(
      queryStart,
      Int32Array.from({ length: step.numSeqs + 1 }, (_, s) => s * step.newTokens),
    );
    backend.matmul({ out, x, w, wDtype: DType.F32, m: t, n: qkvDim, k: headDim });
    backend.rmsnorm({ out, x: out, weight: w, numTokens: t, dim: headDim, eps: 1e-5 });
    backend.rope({
      x: qkv,
      positions,
      invFreq,
      numTokens: t,
      numHeads: numHeads + numKvHeads,
      headDim,
      rotaryDim: step.rotaryDim,
      rowStride: qkvDim,
      style: 0,
    });
    const kvArgs = { kCache, vCache, cacheDtype: step.cacheDtype, numKvHeads, headDim, blockSize };
    backend.kvWrite({
      ...kvArgs,
      k: Deno.UnsafePointer.offset(qkv, numHeads * headDim * 4) as DevicePtr,
      v: Deno.UnsafePointer.offset(qkv, (numHeads + numKvHeads) * headDim * 4) as DevicePtr,
      slotMapping: slots,
      numTokens: t,
      rowStride: qkvDim,
      numBlocks,
    });
    backend.pagedAttention({
      ...kvArgs,
      out,
      q: qkv,
      blockTables,
      seqLens,
      queryStart,
      numSeqs: step.numSeqs,
      numTokens: t,
      numHeads,
      qRowStride: qkvDim,
      maxBlocksPerSeq,
      numBlocks,
      scale: 0.25,
    });
  };
}

/** Steps of varying shapes up to SHAPE's limits: decode, prefill, mixed lengths, both caches. */
function stepsWithin(): Step[] {
  const steps: Step[] = [];
  const maxLen = SHAPE.maxBlocksPerSeq * SHAPE.blockSize;
  for (const cacheDtype of [DType.F32, DType.F16, DType.BF16]) {
    for (const [numSeqs, newTokens] of [[1, 1], [24, 1], [1, 24], [3, 8], [5, 3], [2, 12]]) {
      for (const seqLen of [newTokens, Math.min(maxLen, newTokens + 5), maxLen]) {
        for (const rotaryDim of [SHAPE.headDim, 8]) {
          steps.push({ numSeqs, newTokens, seqLen, cacheDtype, rotaryDim });
        }
      }
    }
  }
  return steps;
}

Deno.test("after dl_reserve_workspace, kernel calls up to the reserved shape allocate nothing", () => {
  const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
  try {
    withDeviceBuffers(backend, (b) => {
      const run = makeRunner(backend, b, 1024);
      const reserved = backend.reserveWorkspace(SHAPE);
      assert.ok(reserved > 0, `expected a workspace, found ${reserved} bytes`);
      const before = backend.memoryStats();
      assert.equal(before.workspaceBytes, reserved);
      const steps = stepsWithin();
      for (const step of steps) run(step);
      assert.deepEqual(backend.memoryStats(), before, `${steps.length} steps allocated`);

      // Far more tokens than reserved: attention needs a bigger workspace and says so.
      try {
        run({ numSeqs: 1024, newTokens: 1, seqLen: 1, cacheDtype: DType.F16, rotaryDim: 16 });
        assert.fail("expected the oversized step to fail");
      } catch (error) {
        if (!(error instanceof NativeError)) throw error;
        assert.equal(error.status, OUT_OF_MEMORY, error.message);
        assert.match(
          error.message,
          new RegExp(
            `dl_paged_attention.*needs \\d+ bytes of kernel workspace; ` +
              `dl_reserve_workspace reserved ${reserved}`,
          ),
        );
      }
      assert.deepEqual(backend.memoryStats(), before, "the failed step allocated");
      // A second reservation for a bigger shape grows it once, at start-up.
      const bigger = backend.reserveWorkspace({ ...SHAPE, maxNumTokens: 1024 });
      assert.ok(bigger > reserved);
      run({ numSeqs: 1024, newTokens: 1, seqLen: 1, cacheDtype: DType.F16, rotaryDim: 16 });
      const after = backend.memoryStats();
      assert.equal(after.numWorkspaceGrowths, before.numWorkspaceGrowths + 1);
      assert.equal(after.workspaceBytes, bigger);
    });
  } finally {
    backend.close();
  }
});

Deno.test("an unreserved context grows its workspace on demand and counts allocs and frees", () => {
  const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
  try {
    const start = backend.memoryStats();
    assert.deepEqual(start, {
      numAllocs: 0,
      numFrees: 0,
      workspaceBytes: 0,
      numWorkspaceGrowths: 0,
    });
    const ptr = backend.alloc(100);
    backend.free(ptr);
    assert.deepEqual(backend.memoryStats(), { ...start, numAllocs: 1, numFrees: 1 });
    withDeviceBuffers(backend, (b) => {
      const run = makeRunner(backend, b, 64);
      const allocated = backend.memoryStats();
      run({ numSeqs: 2, newTokens: 3, seqLen: 7, cacheDtype: DType.F16, rotaryDim: 16 });
      const grown = backend.memoryStats();
      assert.ok(grown.numWorkspaceGrowths >= 1);
      assert.equal(grown.numAllocs, allocated.numAllocs + grown.numWorkspaceGrowths);
      assert.ok(grown.workspaceBytes > 0);
      // Same shape again: the workspace is big enough already.
      run({ numSeqs: 2, newTokens: 3, seqLen: 7, cacheDtype: DType.F16, rotaryDim: 16 });
      assert.deepEqual(backend.memoryStats(), grown);
      // A bigger step grows it again, freeing the old one.
      run({ numSeqs: 64, newTokens: 1, seqLen: 9, cacheDtype: DType.F16, rotaryDim: 16 });
      const regrown = backend.memoryStats();
      assert.equal(regrown.numWorkspaceGrowths, grown.numWorkspaceGrowths + 1);
      assert.equal(regrown.numFrees, grown.numFrees + 1);
    });
  } finally {
    backend.close();
  }
});

Deno.test("dl_reserve_workspace and dl_memory_stats validate their arguments", () => {
  const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 1 });
  try {
    assert.throws(
      () => backend.reserveWorkspace({ ...SHAPE, maxNumTokens: 0 }),
      /expected max_num_tokens > 0, found 0/,
    );
    assert.throws(
      () => backend.reserveWorkspace({ ...SHAPE, numHeads: 3 }),
      /expected num_heads \(3\) to be a multiple of num_kv_heads/,
    );
    assert.equal(backend.memoryStats().workspaceBytes, 0);
  } finally {
    backend.close();
  }
});
