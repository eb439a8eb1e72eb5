// Test helper: one dl_rope_kv_write case on a backend, fused or as dl_rope then dl_kv_write.
import {
  DType,
  type DTypeId,
  type NativeBackend,
  offset,
  type RopeKvWriteArgs,
} from "../ffi/native.ts";
import { withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";

/**
 * One case: dl_rope_kv_write's shape arguments (rowStride: floats per row, at least
 * (numHeads + 2 * numKvHeads) * headDim), with the buffers left to the helpers below.
 */
export type RopeKvCase =
  & Omit<
    RopeKvWriteArgs,
    "qkv" | "positions" | "invFreq" | "kCache" | "vCache" | "slotMapping" | "cacheDtype"
  >
  & { cacheDtype: ref.DtypeId };

/** Random rows, positions, slots (distinct, every 5th token padding) and cache contents. */
export interface RopeKvInputs {
  qkv: Float32Array;
  positions: Int32Array;
  invFreq: Float32Array;
  slots: Int32Array;
  cache: Float32Array | Uint16Array;
}

/** The bytes a case leaves: the rotated rows and both caches. */
export interface RopeKvResult {
  qkv: Float32Array;
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
}

export function cacheElements(c: RopeKvCase): number {
  return c.numBlocks * c.numKvHeads * c.blockSize * c.headDim;
}

export function ropeKvInputs(c: RopeKvCase, rand: () => number): RopeKvInputs {
  const order = [...Array(c.numBlocks * c.blockSize).keys()].sort(() => rand() - 0.5);
  return {
    qkv: ref.randomF32(rand, c.numTokens * c.rowStride),
    positions: Int32Array.from({ length: c.numTokens }, () => ref.randomInt(rand, 0, 9000)),
    invFreq: Float32Array.from(
      { length: c.rotaryDim / 2 },
      (_, i) => Math.pow(10000, (-2 * i) / c.rotaryDim),
    ),
    slots: Int32Array.from({ length: c.numTokens }, (_, t) => (t % 5 === 2 ? -1 : order[t])),
    cache: ref.encode(ref.randomF32(rand, cacheElements(c)), c.cacheDtype),
  };
}

/** Runs the case on `backend`: one dl_rope_kv_write call when `fused`, else dl_rope + dl_kv_write. */
export function runRopeKv(
  backend: NativeBackend,
  c: RopeKvCase,
  inputs: RopeKvInputs,
  fused: boolean,
): RopeKvResult {
  return withDeviceBuffers(backend, (s) => {
    const qkv = s.from(inputs.qkv);
    const kCache = s.from(inputs.cache), vCache = s.from(inputs.cache);
    const positions = s.from(inputs.positions), invFreq = s.from(inputs.invFreq);
    const slotMapping = s.from(inputs.slots);
    const { numTokens, numHeads, numKvHeads, headDim, rotaryDim, rowStride, style } = c;
    const cacheDtype = c.cacheDtype as DTypeId;
    const { blockSize, numBlocks } = c;
    if (fused) {
      backend.ropeKvWrite({
        qkv,
        positions,
        invFreq,
        kCache,
        vCache,
        cacheDtype,
        slotMapping,
        numTokens,
        numHeads,
        numKvHeads,
        headDim,
        rotaryDim,
        rowStride,
        style,
        blockSize,
        numBlocks,
      });
    } else {
      const heads = numHeads + numKvHeads;
      backend.rope({
        x: qkv,
        positions,
        invFreq,
        numTokens,
        numHeads: heads,
        headDim,
        rotaryDim,
        rowStride,
        style,
      });
      backend.kvWrite({
        kCache,
        vCache,
        cacheDtype,
        k: offset(qkv, numHeads * headDim * 4),
        v: offset(qkv, (numHeads + numKvHeads) * headDim * 4),
        slotMapping,
        numTokens,
        numKvHeads,
        headDim,
        rowStride,
        blockSize,
        numBlocks,
      });
    }
    const elems = cacheElements(c);
    const read = (ptr: typeof kCache) =>
      c.cacheDtype === DType.F32 ? s.f32(ptr, elems) : s.u16(ptr, elems);
    return { qkv: s.f32(qkv, inputs.qkv.length), k: read(kCache), v: read(vCache) };
  });
}

/** Odd shapes for both styles and every cache dtype: partial rotary dims, GQA, MQA, padded rows. */
export function ropeKvCases(): RopeKvCase[] {
  const cases: RopeKvCase[] = [];
  const shapes = [
    { numHeads: 5, numKvHeads: 3, headDim: 18, rotaryDim: 18 },
    { numHeads: 7, numKvHeads: 1, headDim: 9, rotaryDim: 6 },
    { numHeads: 4, numKvHeads: 2, headDim: 64, rotaryDim: 64 },
  ];
  for (const cacheDtype of [DType.F32, DType.F16, DType.BF16] as ref.DtypeId[]) {
    for (const shape of shapes) {
      for (const style of [0, 1] as const) {
        const row = (shape.numHeads + 2 * shape.numKvHeads) * shape.headDim;
        cases.push({
          ...shape,
          numTokens: 13,
          rowStride: row + 3,
          style,
          blockSize: 5,
          numBlocks: 7,
          cacheDtype,
        });
      }
    }
  }
  return cases;
}

export function ropeKvLabel(c: RopeKvCase): string {
  return `rope_kv_write heads ${c.numHeads}/${c.numKvHeads} head_dim ${c.headDim} rotary ${c.rotaryDim} ` +
    `style ${c.style} cache ${["f32", "f16", "bf16"][c.cacheDtype]}`;
}
