// Tests quantized dl_matmul and dl_embedding on every weight format against a reference computed
// here: the weights dequantized by a TypeScript port of native/dl_dequant.h (blocks of random bytes
// with sane scales, so every bit pattern of the values occurs), times the activations quantized as
// the kernel's contract says (per block of 32, or 256 for the K formats: d = amax / 127 and
// q = round-half-even(x * (127 / amax)), emulated in f32; blocks of 32 keep d and s = d * sum(q)
// rounded to f16, as ggml's q8_0 / q8_1), summed in f64.
//
// Tolerance: |native - reference| <= 2e-6 * (nb + 4) * sum_k mag_k |xq_k|, where nb is the number
// of blocks and mag_k the magnitude of weight k's parts (|d * sc * q| + |dmin * m|, so cancelling
// mins do not shrink it). The integer dot product of each block is exact; what is left is f32
// rounding of the block scales' products and of the sum across blocks (a few ulps per block). The
// q8 rounding of the activations is not in the tolerance: it is part of the contract, reproduced
// exactly. The kernels' rows are bit-identical whatever the batch, and the generic and SIMD paths
// agree within an eighth of the tolerance (checked across child processes).
import assert from "node:assert/strict";
import { type DevicePtr, DType, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import { formatInfo } from "../ffi/formats.ts";
import { type DeviceBuffers, withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";
import { assertClose } from "./assert_close.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

/** Every quantized weight format, with the activation block its kernels quantize x into. */
const QUANTIZED: { dtype: DTypeId; actBlock: number }[] = [
  { dtype: DType.Q4_0, actBlock: 32 },
  { dtype: DType.Q4_1, actBlock: 32 },
  { dtype: DType.Q5_0, actBlock: 32 },
  { dtype: DType.Q5_1, actBlock: 32 },
  { dtype: DType.Q8_0, actBlock: 32 },
  { dtype: DType.Q2_K, actBlock: 256 },
  { dtype: DType.Q3_K, actBlock: 256 },
  { dtype: DType.Q4_K, actBlock: 256 },
  { dtype: DType.Q5_K, actBlock: 256 },
  { dtype: DType.Q6_K, actBlock: 256 },
  { dtype: DType.Q8_K, actBlock: 256 },
  { dtype: DType.INT8, actBlock: 32 },
  { dtype: DType.INT4, actBlock: 32 },
];

function nameOf(dtype: DTypeId): string {
  return formatInfo(dtype).name;
}

// --- Random weights

/** Byte offsets of a block's f16 scale fields (sane values are written there). */
const F16_FIELDS: Partial<Record<DTypeId, number[]>> = {
  [DType.Q4_0]: [0],
  [DType.Q4_1]: [0, 2],
  [DType.Q5_0]: [0],
  [DType.Q5_1]: [0, 2],
  [DType.Q8_0]: [0],
  [DType.Q2_K]: [80, 82],
  [DType.Q3_K]: [108],
  [DType.Q4_K]: [0, 2],
  [DType.Q5_K]: [0, 2],
  [DType.Q6_K]: [208],
  [DType.INT4]: [0, 2],
};

/** The bytes of an [n, k] weight matrix: random blocks whose scales are sane numbers of either sign. */
function randomWeights(rand: () => number, dtype: DTypeId, n: number, k: number): Uint8Array {
  const info = formatInfo(dtype);
  const rowBytes = (k / info.blockLen) * info.blockBytes;
  const bytes = new Uint8Array(n * (rowBytes + info.rowBytes));
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
  const view = new DataView(bytes.buffer);
  const sane = () => (rand() < 0.5 ? -1 : 1) * (0.5 + rand()) * 0.01;
  const numBlocks = (n * k) / info.blockLen;
  for (let b = 0; b < numBlocks; b++) {
    const at = b * info.blockBytes;
    for (const field of F16_FIELDS[dtype] ?? []) {
      view.setUint16(at + field, ref.f32ToF16Bits(sane()), true);
    }
    if (dtype === DType.Q8_K) view.setFloat32(at, sane(), true);
  }
  if (dtype === DType.INT8) {
    for (let r = 0; r < n; r++) view.setFloat32(n * rowBytes + 4 * r, Math.abs(sane()), true);
  }
  return bytes;
}

// --- Dequantization (a port of native/dl_dequant.h, in f64, with each weight's magnitude)

interface Dequantized {
  w: Float64Array; // [n, k]
  mag: Float64Array; // [n, k]: |scaled value| + |min| of each weight
  min: Float64Array; // [n, k]: the min (offset) part of each weight
}

// The min parts of the block being dequantized (dequantBlock's put writes them here).
let blockMins = new Float64Array(0);

function q3kScales(p: Uint8Array, at: number): number[] {
  const scales: number[] = [];
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? p[at + j] & 0xF : p[at + j - 8] >> 4;
    const high = (p[at + 8 + (j % 4)] >> (2 * Math.floor(j / 4))) & 3;
    scales.push(low | (high << 4));
  }
  return scales;
}

function k4ScaleMin(j: number, p: Uint8Array, at: number): [number, number] {
  const q = (i: number) => p[at + i];
  if (j < 4) return [q(j) & 63, q(j + 4) & 63];
  return [(q(j + 4) & 0xF) | ((q(j - 4) >> 6) << 4), (q(j + 4) >> 4) | ((q(j) >> 6) << 4)];
}

/** Dequantizes one block starting at byte `at` into y[o, o + blockLen) (and its magnitudes). */
function dequantBlock(
  dtype: DTypeId,
  p: Uint8Array,
  at: number,
  y: Float64Array,
  mag: Float64Array,
  o: number,
): void {
  const v = new DataView(p.buffer, p.byteOffset);
  const f16 = (i: number) => ref.f16BitsToF32(v.getUint16(at + i, true));
  const s8 = (i: number) => v.getInt8(at + i);
  const put = (e: number, scaled: number, min: number) => {
    y[o + e] = scaled + min;
    mag[o + e] = Math.abs(scaled) + Math.abs(min);
    blockMins[o + e] = min;
  };
  switch (dtype) {
    case DType.Q4_0: {
      const d = f16(0);
      for (let j = 0; j < 16; j++) {
        put(j, ((p[at + 2 + j] & 15) - 8) * d, 0);
        put(j + 16, ((p[at + 2 + j] >> 4) - 8) * d, 0);
      }
      return;
    }
    case DType.Q4_1: {
      const d = f16(0), m = f16(2);
      for (let j = 0; j < 16; j++) {
        put(j, (p[at + 4 + j] & 15) * d, m);
        put(j + 16, (p[at + 4 + j] >> 4) * d, m);
      }
      return;
    }
    case DType.Q5_0:
    case DType.Q5_1: {
      const hasMin = dtype === DType.Q5_1;
      const d = f16(0), m = hasMin ? f16(2) : 0;
      const qh = v.getUint32(at + (hasMin ? 4 : 2), true);
      const qs = at + (hasMin ? 8 : 6);
      for (let j = 0; j < 16; j++) {
        const h0 = ((qh >>> j) << 4) & 0x10, h1 = (qh >>> (j + 12)) & 0x10;
        const off = hasMin ? 0 : 16;
        put(j, (((p[qs + j] & 15) | h0) - off) * d, m);
        put(j + 16, (((p[qs + j] >> 4) | h1) - off) * d, m);
      }
      return;
    }
    case DType.Q8_0: {
      const d = f16(0);
      for (let j = 0; j < 32; j++) put(j, s8(2 + j) * d, 0);
      return;
    }
    case DType.Q2_K: {
      const d = f16(80), dmin = f16(82);
      let e = 0, is = 0, q = at + 16;
      for (let half = 0; half < 2; half++) {
        for (let shift = 0; shift < 8; shift += 2) {
          for (let part = 0; part < 2; part++) {
            const sc = p[at + is++];
            for (let l = 0; l < 16; l++) {
              put(e++, d * (sc & 0xF) * ((p[q + l + 16 * part] >> shift) & 3), -dmin * (sc >> 4));
            }
          }
        }
        q += 32;
      }
      return;
    }
    case DType.Q3_K: {
      const d = f16(108);
      const scales = q3kScales(p, at + 96);
      let e = 0, is = 0, q = at + 32, m = 1;
      for (let half = 0; half < 2; half++) {
        for (let shift = 0; shift < 8; shift += 2) {
          for (let part = 0; part < 2; part++) {
            const dl = d * (scales[is++] - 32);
            for (let l = 0; l < 16; l++) {
              const i = l + 16 * part;
              put(e++, dl * (((p[q + i] >> shift) & 3) - ((p[at + i] & m) ? 0 : 4)), 0);
            }
          }
          m <<= 1;
        }
        q += 32;
      }
      return;
    }
    case DType.Q4_K:
    case DType.Q5_K: {
      const isQ5 = dtype === DType.Q5_K;
      const d = f16(0), dmin = f16(2);
      let e = 0, ql = at + (isQ5 ? 48 : 16), u1 = 1, u2 = 2;
      const qh = at + 16;
      for (let is = 0; is < 8; is += 2) {
        const [sc1, m1] = k4ScaleMin(is, p, at + 4), [sc2, m2] = k4ScaleMin(is + 1, p, at + 4);
        for (let l = 0; l < 32; l++) {
          const hi = isQ5 && (p[qh + l] & u1) ? 16 : 0;
          put(e++, d * sc1 * ((p[ql + l] & 0xF) + hi), -dmin * m1);
        }
        for (let l = 0; l < 32; l++) {
          const hi = isQ5 && (p[qh + l] & u2) ? 16 : 0;
          put(e++, d * sc2 * ((p[ql + l] >> 4) + hi), -dmin * m2);
        }
        ql += 32;
        u1 <<= 2;
        u2 <<= 2;
      }
      return;
    }
    case DType.Q6_K: {
      const d = f16(208);
      let ql = at, qh = at + 128, sc = at + 192, e = 0;
      for (let half = 0; half < 2; half++) {
        for (let l = 0; l < 32; l++) {
          const is = Math.floor(l / 16);
          const q1 = ((p[ql + l] & 0xF) | (((p[qh + l] >> 0) & 3) << 4)) - 32;
          const q2 = ((p[ql + l + 32] & 0xF) | (((p[qh + l] >> 2) & 3) << 4)) - 32;
          const q3 = ((p[ql + l] >> 4) | (((p[qh + l] >> 4) & 3) << 4)) - 32;
          const q4 = ((p[ql + l + 32] >> 4) | (((p[qh + l] >> 6) & 3) << 4)) - 32;
          const s = (i: number) => v.getInt8(sc + i);
          put(e + l, d * s(is) * q1, 0);
          put(e + l + 32, d * s(is + 2) * q2, 0);
          put(e + l + 64, d * s(is + 4) * q3, 0);
          put(e + l + 96, d * s(is + 6) * q4, 0);
        }
        e += 128;
        ql += 64;
        qh += 32;
        sc += 8;
      }
      return;
    }
    case DType.Q8_K: {
      const d = v.getFloat32(at, true);
      for (let j = 0; j < 256; j++) put(j, d * s8(4 + j), 0);
      return;
    }
    case DType.INT4: {
      const d = f16(0), m = f16(2);
      for (let j = 0; j < 64; j++) {
        put(j, (p[at + 4 + j] & 15) * d, m);
        put(j + 64, (p[at + 4 + j] >> 4) * d, m);
      }
      return;
    }
    default:
      throw new RangeError(`Expected a block format, found ${nameOf(dtype)}`);
  }
}

function dequantize(dtype: DTypeId, bytes: Uint8Array, n: number, k: number): Dequantized {
  const info = formatInfo(dtype);
  const w = new Float64Array(n * k), mag = new Float64Array(n * k), min = new Float64Array(n * k);
  blockMins = min;
  if (dtype === DType.INT8) {
    const v = new DataView(bytes.buffer, bytes.byteOffset);
    for (let r = 0; r < n; r++) {
      const scale = v.getFloat32(n * k + 4 * r, true);
      for (let j = 0; j < k; j++) w[r * k + j] = scale * v.getInt8(r * k + j);
    }
    for (let i = 0; i < w.length; i++) mag[i] = Math.abs(w[i]);
    return { w, mag, min };
  }
  for (let b = 0; b < (n * k) / info.blockLen; b++) {
    dequantBlock(dtype, bytes, b * info.blockBytes, w, mag, b * info.blockLen);
  }
  return { w, mag, min };
}

// --- Activation quantization (the kernels' contract, in f32)

const ROUND_MAGIC = 12582912; // 1.5 * 2^23: adding it in f32 rounds to an integer, ties to even

/**
 * x [m, k] as the kernel quantizes it, dequantized: d * q per element, and per block of 32 the s
 * the min term uses. Blocks of 32 keep d and s = d * sum(q) rounded to f16 (ggml's q8_0 / q8_1).
 */
function quantizeActivations(
  x: Float32Array,
  m: number,
  k: number,
  block: number,
): { xq: Float64Array; s: Float64Array } {
  const f = Math.fround;
  const f16 = (v: number) => ref.f16BitsToF32(ref.f32ToF16Bits(v));
  const out = new Float64Array(m * k), s = new Float64Array(m * Math.ceil(k / block));
  for (let r = 0; r < m; r++) {
    for (let b0 = 0; b0 < k; b0 += block) {
      const b1 = Math.min(k, b0 + block);
      let amax = 0;
      for (let j = b0; j < b1; j++) amax = Math.max(amax, Math.abs(x[r * k + j]));
      const d = f(amax / 127), id = amax > 0 ? f(127 / amax) : 0;
      const dq = block === 32 ? f16(d) : d;
      let sum = 0;
      for (let j = b0; j < b1; j++) {
        const q = f(f(x[r * k + j] * id) + ROUND_MAGIC) - ROUND_MAGIC;
        out[r * k + j] = dq * q;
        sum += q;
      }
      s[r * Math.ceil(k / block) + b0 / block] = block === 32 ? f16(f(d * sum)) : dq * sum;
    }
  }
  return { xq: out, s };
}

// --- One matmul case

interface Case {
  dtype: DTypeId;
  m: number;
  n: number;
  k: number;
  hasBias: boolean;
}

interface Problem extends Case {
  x: Float32Array;
  w: Uint8Array;
  bias: Float32Array | null;
  expected: Float64Array;
  scale: Float64Array; // the tolerance's sum_k mag_k |xq_k| (+ |bias|), per output
}

function makeProblem(rand: () => number, c: Case): Problem {
  const { dtype, m, n, k } = c;
  const actBlock = QUANTIZED.find((q) => q.dtype === dtype)!.actBlock;
  const x = ref.randomF32(rand, m * k, -2, 2);
  const w = randomWeights(rand, dtype, n, k);
  const bias = c.hasBias ? ref.randomF32(rand, n) : null;
  const deq = dequantize(dtype, w, n, k);
  const { xq, s } = quantizeActivations(x, m, k, actBlock);
  const expected = new Float64Array(m * n), scale = new Float64Array(m * n);
  const numBlocks = Math.ceil(k / actBlock);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = bias ? bias[j] : 0, abs = 0;
      for (let e = 0; e < k; e++) {
        // Blocks of 32: a weight's min times the block's f16 s, as the kernel sums it.
        const min = actBlock === 32 ? deq.min[j * k + e] : 0;
        sum += (deq.w[j * k + e] - min) * xq[i * k + e];
        if (e % actBlock === 0) sum += min * s[i * numBlocks + e / actBlock];
        abs += deq.mag[j * k + e] * Math.abs(xq[i * k + e]);
      }
      expected[i * n + j] = sum;
      scale[i * n + j] = 2e-6 * (numBlocks + 4) * abs + (bias ? 1e-7 * Math.abs(bias[j]) : 0);
    }
  }
  return { ...c, x, w, bias, expected, scale };
}

function runProblem(b: DeviceBuffers, p: Problem, outRowStride = p.n): Float32Array {
  const out = b.zeros(p.m * outRowStride * 4);
  backend.matmul({
    out,
    x: b.from(p.x),
    w: b.from(p.w),
    wDtype: p.dtype,
    bias: p.bias ? b.from(p.bias) : null,
    m: p.m,
    n: p.n,
    k: p.k,
    outRowStride,
  });
  return b.f32(out, p.m * outRowStride);
}

/** Odd shapes per format: one block, a few blocks (INT8: k with a partial block). */
function kValues(dtype: DTypeId): number[] {
  const blockLen = formatInfo(dtype).blockLen;
  if (dtype === DType.INT8) return [1, 33, 200];
  if (blockLen === 256) return [256, 768];
  if (blockLen === 128) return [128, 384];
  return [32, 96, 224];
}

function labelOf(c: Case): string {
  return `${nameOf(c.dtype)} m=${c.m} n=${c.n} k=${c.k}${c.hasBias ? " bias" : ""}`;
}

// --- Tests

Deno.test("quantized matmul matches the dequantized reference on every format and odd shape", async (t) => {
  const rand = ref.mulberry32(101);
  for (const { dtype } of QUANTIZED) {
    await t.step(nameOf(dtype), () => {
      withDeviceBuffers(backend, (b) => {
        for (const k of kValues(dtype)) {
          for (const m of [1, 2, 3, 5, 17]) {
            for (const n of [7, 37]) {
              const p = makeProblem(rand, { dtype, m, n, k, hasBias: (m + n) % 2 === 0 });
              assertClose(runProblem(b, p), p.expected, (i) => p.scale[i], labelOf(p));
            }
          }
        }
      });
    });
  }
});

Deno.test("quantized matmul rows are bit-identical whatever the batch and the row's place in it", async (t) => {
  const rand = ref.mulberry32(102);
  const batch = 21;
  for (const { dtype } of QUANTIZED) {
    await t.step(nameOf(dtype), () => {
      withDeviceBuffers(backend, (b) => {
        const k = kValues(dtype).at(-1)!, n = 37;
        const x = ref.randomF32(rand, batch * k, -2, 2);
        const w = b.from(randomWeights(rand, dtype, n, k));
        const bias = b.from(ref.randomF32(rand, n));
        const outAll = b.zeros(batch * n * 4);
        backend.matmul({ out: outAll, x: b.from(x), w, wDtype: dtype, bias, m: batch, n, k });
        const all = b.f32(outAll, batch * n);
        for (const m of [1, 2, 3, 4, 5, 8, 9]) {
          for (const first of [0, 1, batch - m]) {
            const out = b.zeros(m * n * 4);
            const xPart = b.from(x.subarray(first * k, (first + m) * k));
            backend.matmul({ out, x: xPart, w, wDtype: dtype, bias, m, n, k });
            const part = b.f32(out, m * n), whole = all.subarray(first * n, (first + m) * n);
            for (let i = 0; i < part.length; i++) {
              if (!Object.is(part[i], whole[i])) {
                assert.fail(
                  `${nameOf(dtype)} rows ${first}..${
                    first + m - 1
                  } of ${batch} alone: element ${i} ` +
                    `is ${part[i]}, expected ${whole[i]} as in the full batch`,
                );
              }
            }
          }
        }
      });
    });
  }
});

Deno.test("quantized matmul with out_row_stride > n writes its columns and nothing else", () => {
  const rand = ref.mulberry32(103);
  const SENTINEL = -12345.5;
  withDeviceBuffers(backend, (b) => {
    for (const { dtype } of QUANTIZED) {
      for (const m of [1, 6]) {
        const p = makeProblem(rand, { dtype, m, n: 37, k: kValues(dtype)[1], hasBias: true });
        const stride = 53, col = 9;
        const out = b.from(new Float32Array(m * stride).fill(SENTINEL));
        backend.matmul({
          out: Deno.UnsafePointer.offset(out, col * 4) as DevicePtr,
          x: b.from(p.x),
          w: b.from(p.w),
          wDtype: dtype,
          bias: b.from(p.bias!),
          m,
          n: p.n,
          k: p.k,
          outRowStride: stride,
        });
        const all = b.f32(out, m * stride);
        const written = new Float32Array(m * p.n);
        for (let i = 0; i < m; i++) {
          written.set(all.subarray(i * stride + col, i * stride + col + p.n), i * p.n);
          for (let j = 0; j < stride; j++) {
            if ((j < col || j >= col + p.n) && all[i * stride + j] !== SENTINEL) {
              assert.fail(`${labelOf(p)} stride ${stride}: row ${i} column ${j} changed`);
            }
          }
        }
        assertClose(written, p.expected, (i) => p.scale[i], `${labelOf(p)} stride ${stride}`);
      }
    }
  });
});

Deno.test("quantized matmul checks its arguments", () => {
  withDeviceBuffers(backend, (b) => {
    const buf = b.zeros(1 << 16), out = b.zeros(1 << 16);
    const base = { out, x: buf, w: buf, m: 2, n: 3 };
    assert.throws(
      () => backend.matmul({ ...base, wDtype: DType.Q4_K, k: 300 }),
      (e: Error) =>
        e instanceof NativeError &&
        /multiple of the q4_k block length 256, found 300/.test(e.message),
    );
    assert.throws(
      () => backend.matmul({ ...base, wDtype: DType.INT4, k: 64 }),
      (e: Error) =>
        e instanceof NativeError &&
        /multiple of the int4 block length 128, found 64/.test(e.message),
    );
    assert.throws(
      () => backend.matmul({ ...base, wDtype: 99 as DTypeId, k: 32 }),
      (e: Error) => e instanceof NativeError && /w_dtype/.test(e.message),
    );
  });
});

Deno.test("quantized matmul allocates nothing after dl_reserve_workspace covers its rows", () => {
  const own = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
  try {
    const rand = ref.mulberry32(104);
    const maxRows = 9, maxK = 768;
    const reserved = own.reserveWorkspace({
      maxNumTokens: maxRows,
      numHeads: 1,
      numKvHeads: 1,
      headDim: 8,
      blockSize: 4,
      maxBlocksPerSeq: 1,
      maxMatmulK: maxK,
    });
    // The q8 rows of the largest call: 9 rows of 768 / 32 blocks of 40 bytes, 64-byte aligned.
    assert.ok(
      reserved >= Math.ceil((maxRows * (maxK / 32) * 40) / 64) * 64,
      `reserved ${reserved}`,
    );
    withDeviceBuffers(own, (b) => {
      const x = b.from(ref.randomF32(rand, maxRows * maxK));
      const out = b.zeros(maxRows * 64 * 4);
      const weights = QUANTIZED.map(({ dtype }) => b.from(randomWeights(rand, dtype, 64, maxK)));
      const before = own.memoryStats();
      QUANTIZED.forEach(({ dtype }, i) => {
        for (const m of [1, 4, maxRows]) {
          own.matmul({ out, x, w: weights[i], wDtype: dtype, m, n: 64, k: maxK });
        }
      });
      assert.deepEqual(own.memoryStats(), before);
      // A call needing more rows than the reservation fails cleanly instead of allocating.
      const rows = Math.ceil(reserved / ((maxK / 32) * 40)) + 1;
      const bigX = b.zeros(rows * maxK * 4), bigOut = b.zeros(rows * 64 * 4);
      assert.throws(
        () =>
          own.matmul({
            out: bigOut,
            x: bigX,
            w: weights[0],
            wDtype: DType.Q4_0,
            m: rows,
            n: 64,
            k: maxK,
          }),
        (e: Error) =>
          e instanceof NativeError && e.status === 2 &&
          /dl_reserve_workspace reserved/.test(e.message),
      );
    });
  } finally {
    own.close();
  }
});

Deno.test("embedding dequantizes rows of every quantized table", () => {
  const rand = ref.mulberry32(105);
  withDeviceBuffers(backend, (b) => {
    for (const { dtype } of QUANTIZED) {
      const vocab = 11, dim = kValues(dtype).at(-1)!;
      const table = randomWeights(rand, dtype, vocab, dim);
      const deq = dequantize(dtype, table, vocab, dim);
      const ids = Int32Array.from([3, 0, 10, 3, 7]);
      const out = b.zeros(ids.length * dim * 4);
      backend.embedding({
        out,
        table: b.from(table),
        tableDtype: dtype,
        tokenIds: b.from(ids),
        numTokens: ids.length,
        vocabSize: vocab,
        dim,
      });
      const expected = new Float64Array(ids.length * dim), tol = new Float64Array(ids.length * dim);
      ids.forEach((id, t) => {
        expected.set(deq.w.subarray(id * dim, (id + 1) * dim), t * dim);
        for (let j = 0; j < dim; j++) tol[t * dim + j] = 1e-6 * deq.mag[id * dim + j];
      });
      // The f32 dequantizer rounds each product once or twice; the reference is exact.
      assertClose(
        b.f32(out, ids.length * dim),
        expected,
        (i) => tol[i],
        `embedding ${nameOf(dtype)}`,
      );
    }
  });
});

// --- Q4_0_R16: Q4_0 repacked into column lanes (dl_repack)

/** ffi/denollm.h's Q4_0_R16 layout, written here from its comment: the bytes of a Q4_0 matrix. */
function repackR16(q4: Uint8Array, n: number, k: number): Uint8Array {
  const nb = k / 32, rowBytes = nb * 18, grouped = Math.floor(n / 16) * 16;
  const out = new Uint8Array(q4.length);
  for (let g = 0; g < grouped; g += 16) {
    for (let b = 0; b < nb; b++) {
      const blk = g * rowBytes + b * 288;
      for (let lane = 0; lane < 16; lane++) {
        const plain = (g + lane) * rowBytes + b * 18;
        out.set(q4.subarray(plain, plain + 2), blk + 2 * lane);
        for (let t = 0; t < 4; t++) {
          const qs = plain + 2 + 4 * t;
          out.set(q4.subarray(qs, qs + 4), blk + 32 + 64 * t + 4 * lane);
        }
      }
    }
  }
  out.set(q4.subarray(grouped * rowBytes), grouped * rowBytes);
  return out;
}

/** A device copy of Q4_0 weights repacked by dl_repack into Q4_0_R16. */
function repackedOnDevice(b: DeviceBuffers, q4: Uint8Array, n: number, k: number): DevicePtr {
  const dst = b.zeros(q4.length);
  assert.ok(
    backend.repack({
      dst,
      dstDtype: DType.Q4_0_R16,
      src: b.from(q4),
      srcDtype: DType.Q4_0,
      rows: n,
      cols: k,
    }),
  );
  return dst;
}

/** Row counts with and without a tail of rows % 16 plain rows, and k of odd block counts. */
const R16_ROWS = [7, 16, 37, 48, 53];
const R16_K = [32, 96, 224];

Deno.test("dl_repack writes the Q4_0_R16 layout and back, and its values read as Q4_0's", () => {
  const rand = ref.mulberry32(107);
  withDeviceBuffers(backend, (b) => {
    for (const n of R16_ROWS) {
      for (const k of R16_K) {
        const label = `n=${n} k=${k}`;
        const q4 = randomWeights(rand, DType.Q4_0, n, k);
        const packed = repackedOnDevice(b, q4, n, k);
        assert.deepEqual(b.bytes(packed, q4.length), repackR16(q4, n, k), `${label}: layout`);
        const back = b.zeros(q4.length);
        backend.repack({
          dst: back,
          dstDtype: DType.Q4_0,
          src: packed,
          srcDtype: DType.Q4_0_R16,
          rows: n,
          cols: k,
        });
        assert.deepEqual(b.bytes(back, q4.length), q4, `${label}: round trip`);
        const plainF32 = b.zeros(n * k * 4), packedF32 = b.zeros(n * k * 4);
        backend.dequantize({
          dst: plainF32,
          src: b.from(q4),
          srcDtype: DType.Q4_0,
          rows: n,
          cols: k,
        });
        backend.dequantize({
          dst: packedF32,
          src: packed,
          srcDtype: DType.Q4_0_R16,
          rows: n,
          cols: k,
        });
        assert.deepEqual(
          b.f32(packedF32, n * k),
          b.f32(plainF32, n * k),
          `${label}: dl_dequantize`,
        );
        const ids = Int32Array.from([n - 1, 0, Math.floor(n / 2), n - 1, 15 % n]);
        const embed = (table: DevicePtr, tableDtype: DTypeId) => {
          const out = b.zeros(ids.length * k * 4);
          backend.embedding({
            out,
            table,
            tableDtype,
            tokenIds: b.from(ids),
            numTokens: ids.length,
            vocabSize: n,
            dim: k,
          });
          return b.f32(out, ids.length * k);
        };
        assert.deepEqual(
          embed(packed, DType.Q4_0_R16),
          embed(b.from(q4), DType.Q4_0),
          `${label}: dl_embedding`,
        );
      }
    }
  });
});

Deno.test("dl_repack checks its arguments", () => {
  withDeviceBuffers(backend, (b) => {
    const buf = b.zeros(4096), other = b.zeros(4096);
    const base = { dst: other, src: buf, rows: 3, cols: 64 };
    assert.throws(
      () => backend.repack({ ...base, dstDtype: DType.Q4_0_R16, srcDtype: DType.Q8_0 }),
      (e: Error) =>
        e instanceof NativeError && /expected q4_0 to q4_0_r16 or back, found q8_0/.test(e.message),
    );
    assert.throws(
      () => backend.repack({ ...base, dstDtype: DType.Q4_0_R16, srcDtype: DType.Q4_0, cols: 48 }),
      (e: Error) =>
        e instanceof NativeError &&
        /multiple of the q4_0 block length 32, found 48/.test(e.message),
    );
    assert.throws(
      () => backend.repack({ ...base, dst: buf, dstDtype: DType.Q4_0_R16, srcDtype: DType.Q4_0 }),
      (e: Error) => e instanceof NativeError && /overlap/.test(e.message),
    );
  });
});

Deno.test("Q4_0_R16 matmul matches the reference and the Q4_0 matmul on odd shapes", () => {
  const rand = ref.mulberry32(108);
  withDeviceBuffers(backend, (b) => {
    for (const k of R16_K) {
      for (const m of [1, 2, 3, 5, 17]) {
        for (const n of R16_ROWS) {
          const p = makeProblem(rand, { dtype: DType.Q4_0, m, n, k, hasBias: (m + n) % 2 === 0 });
          const out = b.zeros(m * n * 4);
          backend.matmul({
            out,
            x: b.from(p.x),
            w: repackedOnDevice(b, p.w, n, k),
            wDtype: DType.Q4_0_R16,
            bias: p.bias ? b.from(p.bias) : null,
            m,
            n,
            k,
          });
          const packed = b.f32(out, m * n);
          assertClose(packed, p.expected, (i) => p.scale[i], `q4_0_r16 m=${m} n=${n} k=${k}`);
          assertClose(
            packed,
            runProblem(b, p),
            (i) => p.scale[i],
            `q4_0_r16 against q4_0 m=${m} n=${n} k=${k}`,
            {
              actual: "q4_0_r16",
              expected: "q4_0",
            },
          );
        }
      }
    }
  });
});

Deno.test("Q4_0_R16 matmul rows are bit-identical for m in 1, 2, 5, 16, 37 and 512", () => {
  const rand = ref.mulberry32(109);
  withDeviceBuffers(backend, (b) => {
    const batch = 512;
    for (const [n, k] of [[53, 224], [64, 96], [9, 32]]) {
      const x = ref.randomF32(rand, batch * k, -2, 2);
      const w = repackedOnDevice(b, randomWeights(rand, DType.Q4_0, n, k), n, k);
      const bias = b.from(ref.randomF32(rand, n));
      const run = (first: number, m: number) => {
        const out = b.zeros(m * n * 4);
        const xPart = b.from(x.subarray(first * k, (first + m) * k));
        backend.matmul({ out, x: xPart, w, wDtype: DType.Q4_0_R16, bias, m, n, k });
        return b.f32(out, m * n);
      };
      const all = run(0, batch);
      for (const m of [1, 2, 5, 16, 37]) {
        for (const first of [0, 1, 250, batch - m]) {
          const part = run(first, m), whole = all.subarray(first * n, (first + m) * n);
          for (let i = 0; i < part.length; i++) {
            if (!Object.is(part[i], whole[i])) {
              assert.fail(
                `q4_0_r16 n=${n} k=${k} rows ${first}..${
                  first + m - 1
                } of ${batch} alone: element ${i} is ` +
                  `${part[i]}, expected ${whole[i]} as in the full batch`,
              );
            }
          }
        }
      }
    }
  });
});

// --- Every instruction-set path, and generic against SIMD

// The formats of the agreement cases, three cases (m = 1, 3, 12) each: Q4_0_R16 last (n = 53: three
// groups of 16 rows and a tail of 5).
const AGREEMENT_DTYPES: DTypeId[] = [...QUANTIZED.map((q) => q.dtype), DType.Q4_0_R16];

// A fixed set of cases whose outputs each path writes to a file, to compare the paths directly.
function agreementOutputs(): number[][] {
  const rand = ref.mulberry32(106);
  return withDeviceBuffers(
    backend,
    (b) =>
      AGREEMENT_DTYPES.flatMap((dtype) =>
        [1, 3, 12].map((m) => {
          if (dtype === DType.Q4_0_R16) {
            const p = makeProblem(rand, { dtype: DType.Q4_0, m, n: 53, k: 224, hasBias: true });
            const out = b.zeros(m * p.n * 4);
            const w = repackedOnDevice(b, p.w, p.n, p.k);
            backend.matmul({
              out,
              x: b.from(p.x),
              w,
              wDtype: dtype,
              bias: b.from(p.bias!),
              m,
              n: p.n,
              k: p.k,
            });
            return [...b.f32(out, m * p.n), ...p.scale];
          }
          const p = makeProblem(rand, {
            dtype,
            m,
            n: 37,
            k: kValues(dtype).at(-1)!,
            hasBias: true,
          });
          return [...runProblem(b, p), ...p.scale];
        })
      ),
  );
}

const DUMP = Deno.env.get("DENOLLM_QMM_DUMP");
if (DUMP !== undefined) {
  Deno.test("writes the agreement outputs of this path", () => {
    Deno.writeTextFileSync(DUMP, JSON.stringify(agreementOutputs()));
  });
}

// DENOLLM_CPU_ISA is read once per process, so the lower paths run this file again in a child
// process each (needs --allow-run; skipped without it, and in the children).
const canSpawn = Deno.env.get("DENOLLM_CPU_ISA") === undefined &&
  Deno.permissions.querySync({ name: "run" }).state === "granted" && Deno.build.arch === "x86_64";

async function runChild(isa: string, dump?: string): Promise<void> {
  const file = new URL(import.meta.url).pathname;
  const env: Record<string, string> = { DENOLLM_CPU_ISA: isa, NO_COLOR: "1" };
  if (dump !== undefined) env.DENOLLM_QMM_DUMP = dump;
  const args = ["test", "--allow-read", "--allow-ffi", "--allow-env", "--allow-write", file];
  if (dump !== undefined) args.splice(1, 0, "--filter", "agreement outputs");
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    assert.fail(`Expected the ${isa} run to pass, found exit code ${code}:\n${text.slice(-4000)}`);
  }
}

for (const isa of ["avx2", "generic"]) {
  Deno.test({
    name: `every quantized matmul test passes on the ${isa} path (child process)`,
    ignore: !canSpawn,
    fn: () => runChild(isa),
  });
}

Deno.test({
  name: "the generic, AVX2 and best paths agree within an eighth of the reference tolerance",
  ignore: !canSpawn,
  async fn() {
    const dir = Deno.makeTempDirSync();
    try {
      const paths: Record<string, number[][]> = {};
      for (const isa of ["generic", "avx2"]) {
        await runChild(isa, `${dir}/${isa}.json`);
        paths[isa] = JSON.parse(Deno.readTextFileSync(`${dir}/${isa}.json`));
      }
      const best = agreementOutputs();
      for (const [isa, outputs] of Object.entries(paths)) {
        assert.equal(outputs.length, best.length);
        outputs.forEach((o, c) => {
          const half = o.length / 2;
          assertClose(
            best[c].slice(0, half),
            o.slice(0, half),
            (i) => o[half + i] / 8,
            `case ${c} (${nameOf(AGREEMENT_DTYPES[Math.floor(c / 3)])}): best path against ${isa}`,
            { actual: "best", expected: isa },
          );
        });
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
