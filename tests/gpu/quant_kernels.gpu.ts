// The CUDA build's quantized-weight kernels (dl_dequantize, dl_quantize, dl_embedding and dl_matmul
// over every quantized format) against a plain TypeScript dequantizer and the CPU build, on random
// blocks.
//
// Not picked up by `deno task test` (no _test suffix); tests/gpu/emu.sh runs it under the dl_emu
// shim (in CI) and tests/gpu/run.sh on a GPU:
//   deno test -A tests/gpu/quant_kernels.gpu.ts
// Environment as tests/gpu/cuda_kernels.gpu.ts: DENOLLM_GPU_TEST_LIBRARY picks the device library,
// DENOLLM_GPU_TEST_BACKEND=cpu runs the "device" side on the CPU build.
//
// The reference here, dequantRef, is written from ggml's block layouts (native/dl_quant.h) with each
// f32 operation rounded as C rounds it, independently of native/dl_dequant.h and cuda/quant.cuh.
// Tolerances, |device - expected| must not exceed:
// - bit for bit: dl_dequantize and dl_embedding, against dequantRef and the CPU build; dl_quantize's
//   bytes against the CPU build's
// - matmul against the f32 matmul of dequantRef's weights (the CPU build's f32 dl_matmul), with
//   scale = sum_k |x w| + |bias|: gemv (m <= 8) 4e-5 * scale + 1e-6 (f32 FMAs, only the order
//   differs); tiled WMMA (m > 8) 6e-4 * scale + 1e-6 (weights rounded to f16: 2^-11 relative; x
//   split into two f16 halves: 2^-22)
// - matmul against the CPU build's quantized dl_matmul, which quantizes x to int8 per block:
//   1e-2 * scale + 1e-5 (an int8 step of x is 1/254 of its block's largest |x|)
import { assertClose } from "../assert_close.ts";
import { stridedMatmul, withDeviceBuffers } from "../device_buffers.ts";
import { formatInfo, matrixBytes } from "../../ffi/formats.ts";
import { DType, type DTypeId, NativeBackend, NativeError, offset } from "../../ffi/native.ts";
import * as ref from "../kernel_reference.ts";
import assert from "node:assert/strict";

const DEVICE_BACKEND = (Deno.env.get("DENOLLM_GPU_TEST_BACKEND") ?? "cuda") as "cpu" | "cuda";
const cpu = NativeBackend.open({ backend: "cpu", numThreads: 0 });
const gpu = NativeBackend.open({
  backend: DEVICE_BACKEND,
  libraryPath: Deno.env.get("DENOLLM_GPU_TEST_LIBRARY"),
});

const QUANT_DTYPES: DTypeId[] = [
  DType.Q4_0,
  DType.Q4_1,
  DType.Q5_0,
  DType.Q5_1,
  DType.Q8_0,
  DType.Q2_K,
  DType.Q3_K,
  DType.Q4_K,
  DType.Q5_K,
  DType.Q6_K,
  DType.Q8_K,
  DType.INT8,
  DType.INT4,
];

globalThis.addEventListener("unload", () => {
  gpu.close();
  cpu.close();
});

// --- Random blocks and the reference dequantizer

const fr = Math.fround;

/** Byte offsets of each format's f16 scale fields (d, and dmin or m), as native/dl_quant.h lays them. */
const F16_SCALE_FIELDS: Record<number, number[]> = {
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

/** A random f16 of either sign with magnitude in [2^-8, 2^-4): a plausible block scale. */
function randomScaleBits(rand: () => number): number {
  const exponent = 7 + Math.floor(rand() * 4); // 2^(e - 15)
  const sign = rand() < 0.5 ? 0x8000 : 0;
  return sign | (exponent << 10) | Math.floor(rand() * 1024);
}

/** A [rows, cols] matrix of `dtype` with random quantized values and plausible scales. */
function randomQuantized(
  rand: () => number,
  dtype: DTypeId,
  rows: number,
  cols: number,
): Uint8Array {
  const info = formatInfo(dtype);
  const bytes = new Uint8Array(matrixBytes(dtype, rows, cols));
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
  const view = new DataView(bytes.buffer);
  if (dtype === DType.INT8) {
    for (let r = 0; r < rows; r++) {
      view.setFloat32(rows * cols + 4 * r, 2 ** -7 * (0.5 + rand()), true);
    }
    return bytes;
  }
  const numBlocks = (rows * cols) / info.blockLen;
  for (let b = 0; b < numBlocks; b++) {
    const o = b * info.blockBytes;
    if (dtype === DType.Q8_K) view.setFloat32(o, (rand() - 0.5) * 2 ** -5, true);
    for (const field of F16_SCALE_FIELDS[dtype] ?? []) {
      view.setUint16(o + field, randomScaleBits(rand), true);
    }
  }
  return bytes;
}

/** Q4_K / Q5_K sub-block j's 6-bit scale and min from the 12 packed bytes at p. */
function kScaleMin(b: Uint8Array, p: number, j: number): [number, number] {
  if (j < 4) return [b[p + j] & 63, b[p + j + 4] & 63];
  return [
    (b[p + j + 4] & 0xf) | ((b[p + j - 4] >> 6) << 4),
    (b[p + j + 4] >> 4) | ((b[p + j] >> 6) << 4),
  ];
}

/** One block of `dtype` at byte o of b, expanded into y[0 .. blockLen). */
function dequantBlock(
  dtype: DTypeId,
  b: Uint8Array,
  view: DataView,
  o: number,
  y: Float32Array,
): void {
  const h = (at: number) => ref.f16BitsToF32(view.getUint16(at, true));
  const i8 = (at: number) => (b[at] << 24) >> 24;
  switch (dtype) {
    case DType.Q4_0:
    case DType.Q4_1:
    case DType.Q5_0:
    case DType.Q5_1: {
      const hasMin = dtype === DType.Q4_1 || dtype === DType.Q5_1;
      const five = dtype === DType.Q5_0 || dtype === DType.Q5_1;
      const d = h(o), m = hasMin ? h(o + 2) : 0;
      const qhAt = o + (hasMin ? 4 : 2);
      const qh = five ? view.getUint32(qhAt, true) : 0;
      const qs = five ? qhAt + 4 : qhAt;
      const bias = hasMin ? 0 : five ? 16 : 8;
      for (let j = 0; j < 32; j++) {
        const nibble = j < 16 ? b[qs + j] & 0xf : b[qs + j - 16] >> 4;
        const q = nibble + (five ? ((qh >>> j) & 1) << 4 : 0) - bias;
        y[j] = hasMin ? fr(fr(q * d) + m) : fr(q * d);
      }
      return;
    }
    case DType.Q8_0: {
      const d = h(o);
      for (let j = 0; j < 32; j++) y[j] = fr(i8(o + 2 + j) * d);
      return;
    }
    case DType.Q2_K:
    case DType.Q3_K: {
      // Element e: half e >> 7, 2-bit shift 2 ((e >> 5) & 3), 16-element sub-block e >> 4.
      const isQ2 = dtype === DType.Q2_K;
      const qs = isQ2 ? o + 16 : o + 32;
      const d = isQ2 ? h(o + 80) : h(o + 108), dmin = isQ2 ? h(o + 82) : 0;
      for (let e = 0; e < 256; e++) {
        const half = e >> 7, s = (e >> 5) & 3, i = e & 31, sub = e >> 4;
        const q = (b[qs + 32 * half + i] >> (2 * s)) & 3;
        if (isQ2) {
          const sc = b[o + sub];
          y[e] = fr(fr(fr(d * (sc & 0xf)) * q) - fr(dmin * (sc >> 4)));
        } else {
          const p = o + 96;
          const low = sub < 8 ? b[p + sub] & 0xf : b[p + sub - 8] >> 4;
          const high = (b[p + 8 + (sub % 4)] >> (2 * (sub >> 2))) & 3;
          const highBit = (b[o + i] >> (4 * half + s)) & 1;
          y[e] = fr(fr(d * ((low | (high << 4)) - 32)) * (q - (highBit ? 0 : 4)));
        }
      }
      return;
    }
    case DType.Q4_K:
    case DType.Q5_K: {
      const isQ5 = dtype === DType.Q5_K;
      const d = h(o), dmin = h(o + 2);
      const qs = isQ5 ? o + 48 : o + 16;
      for (let e = 0; e < 256; e++) {
        const sub = e >> 5, l = e & 31;
        const [sc, mn] = kScaleMin(b, o + 4, sub);
        let q = (b[qs + 32 * (sub >> 1) + l] >> (4 * (sub & 1))) & 0xf;
        if (isQ5) q += ((b[o + 16 + l] >> sub) & 1) << 4;
        y[e] = fr(fr(fr(d * sc) * q) - fr(dmin * mn));
      }
      return;
    }
    case DType.Q6_K: {
      const d = h(o + 208);
      for (let e = 0; e < 256; e++) {
        const half = e >> 7, g = (e >> 5) & 3, l = e & 31;
        const low = (b[o + 64 * half + l + 32 * (g & 1)] >> (4 * (g >> 1))) & 0xf;
        const high = (b[o + 128 + 32 * half + l] >> (2 * g)) & 3;
        const sc = i8(o + 192 + 8 * half + (l >> 4) + 2 * g);
        y[e] = fr(fr(d * sc) * ((low | (high << 4)) - 32));
      }
      return;
    }
    case DType.Q8_K: {
      const d = view.getFloat32(o, true);
      for (let j = 0; j < 256; j++) y[j] = fr(d * i8(o + 4 + j));
      return;
    }
    case DType.INT4: {
      const d = h(o), m = h(o + 2);
      for (let j = 0; j < 128; j++) {
        const q = j < 64 ? b[o + 4 + j] & 0xf : b[o + 4 + j - 64] >> 4;
        y[j] = fr(fr(q * d) + m);
      }
      return;
    }
  }
  throw new RangeError(`dequantBlock: no reference for ${formatInfo(dtype).name}`);
}

/** The [rows, cols] f32 matrix a quantized one stands for. */
function dequantRef(dtype: DTypeId, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === DType.INT8) {
    for (let r = 0; r < rows; r++) {
      const scale = view.getFloat32(rows * cols + 4 * r, true);
      for (let c = 0; c < cols; c++) {
        out[r * cols + c] = fr(scale * ((bytes[r * cols + c] << 24) >> 24));
      }
    }
    return out;
  }
  const info = formatInfo(dtype);
  for (let blk = 0; blk < (rows * cols) / info.blockLen; blk++) {
    dequantBlock(dtype, bytes, view, blk * info.blockBytes, out.subarray(blk * info.blockLen));
  }
  return out;
}

// --- Helpers

function assertBits(actual: Float32Array, expected: Float32Array, label: string): void {
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  assert.equal(a.length, e.length, `${label}: lengths differ`);
  for (let i = 0; i < e.length; i++) {
    if (a[i] !== e[i]) {
      throw new Error(
        `${label}: element ${i} is ${actual[i]}, expected ${expected[i]} (bit for bit)`,
      );
    }
  }
}

/** Columns per row for each format: a few blocks, an odd count where the format allows. */
function colsFor(dtype: DTypeId): number[] {
  if (dtype === DType.INT8) return [37, 333];
  const blockLen = formatInfo(dtype).blockLen;
  return blockLen === 32 ? [96, 160] : blockLen === 128 ? [384] : [512];
}

function name(dtype: DTypeId): string {
  return formatInfo(dtype).name;
}

function dequantizeOn(
  backend: NativeBackend,
  dtype: DTypeId,
  w: Uint8Array,
  rows: number,
  cols: number,
) {
  return withDeviceBuffers(backend, (s) => {
    const dst = s.zeros(rows * cols * 4);
    backend.dequantize({ dst, src: s.from(w), srcDtype: dtype, rows, cols });
    return s.f32(dst, rows * cols);
  });
}

/** out = x · wᵀ (+ bias) of f32 values on the CPU build's f32 path. */
function cpuF32Matmul(
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | null,
  m: number,
  n: number,
  k: number,
) {
  return withDeviceBuffers(cpu, (s) => {
    const out = s.zeros(m * n * 4);
    cpu.matmul({
      out,
      x: s.from(x),
      w: s.from(w),
      wDtype: DType.F32,
      bias: bias ? s.from(bias) : null,
      m,
      n,
      k,
    });
    return s.f32(out, m * n);
  });
}

// --- Dequantize

Deno.test("dequantize: every quantized format, odd rows, bit for bit with the reference", () => {
  const rand = ref.mulberry32(101);
  for (const dtype of QUANT_DTYPES) {
    for (const cols of colsFor(dtype)) {
      const rows = 7;
      const w = randomQuantized(rand, dtype, rows, cols);
      const got = dequantizeOn(gpu, dtype, w, rows, cols);
      assertBits(
        got,
        dequantRef(dtype, w, rows, cols),
        `dequantize ${name(dtype)} [${rows}, ${cols}]`,
      );
    }
  }
});

Deno.test("dequantize: every quantized format bit for bit with the CPU build's dl_dequantize", () => {
  const rand = ref.mulberry32(102);
  for (const dtype of QUANT_DTYPES) {
    for (const cols of colsFor(dtype)) {
      const rows = 5;
      const w = randomQuantized(rand, dtype, rows, cols);
      assertBits(
        dequantizeOn(gpu, dtype, w, rows, cols),
        dequantizeOn(cpu, dtype, w, rows, cols),
        `dequantize ${name(dtype)} [${rows}, ${cols}] against the CPU build`,
      );
    }
  }
});

Deno.test("dequantize: plain formats widen exactly; bad arguments name what was expected", () => {
  const rand = ref.mulberry32(103);
  const values = ref.randomF32(rand, 3 * 37);
  for (const dtype of [DType.F32, DType.F16, DType.BF16] as const) {
    const stored = ref.encode(values, dtype);
    const bytes = new Uint8Array(stored.buffer);
    assertBits(
      dequantizeOn(gpu, dtype, bytes, 3, 37),
      Float32Array.from(ref.decode(stored, dtype)),
      `dequantize ${name(dtype)}`,
    );
  }
  withDeviceBuffers(gpu, (s) => {
    const dst = s.zeros(4 * 256), src = s.zeros(256);
    const cases: [number, number, number, RegExp][] = [
      [
        DType.Q4_K,
        1,
        100,
        /expected cols to be a multiple of the q4_k block length 256, found 100/,
      ],
      [DType.Q8_0, -1, 32, /rows/],
      [99, 1, 32, /src_dtype/],
    ];
    for (const [dtype, rows, cols, pattern] of cases) {
      assert.throws(
        () => gpu.dequantize({ dst, src, srcDtype: dtype as DTypeId, rows, cols }),
        (e: unknown) =>
          e instanceof NativeError && /DL_ERR_INVALID_ARGUMENT/.test(e.message) &&
          pattern.test(e.message),
      );
    }
  });
});

// --- Quantize

Deno.test("quantize: every format writes the CPU build's bytes, with and without importance", () => {
  const rand = ref.mulberry32(107);
  for (const dtype of QUANT_DTYPES) {
    const cols = colsFor(dtype)[0], rows = 3;
    const src = ref.randomF32(rand, rows * cols);
    const importance = dtype % 2 === 0 ? ref.randomF32(rand, cols, 0, 2) : null;
    const [want, got] = [cpu, gpu].map((backend) =>
      withDeviceBuffers(backend, (s) => {
        const size = matrixBytes(dtype, rows, cols);
        const dst = s.zeros(size);
        backend.quantize({
          dst,
          dstDtype: dtype,
          src: s.from(src),
          rows,
          cols,
          importance: importance ? s.from(importance) : null,
        });
        return s.bytes(dst, size);
      })
    );
    assert.deepEqual(
      got,
      want,
      `quantize ${name(dtype)} [${rows}, ${cols}]${importance ? " importance" : ""}`,
    );
  }
  withDeviceBuffers(gpu, (s) => {
    const bad = Float32Array.from({ length: 32 }, (_, i) => (i === 5 ? NaN : 0));
    assert.throws(
      () =>
        gpu.quantize({
          dst: s.zeros(64),
          dstDtype: DType.Q8_0,
          src: s.from(bad),
          rows: 1,
          cols: 32,
        }),
      /expected finite values in src, found nan at row 0, column 5/,
    );
  });
});

// --- Embedding

Deno.test("embedding: quantized tables of every format, bit for bit with the reference", () => {
  const rand = ref.mulberry32(104);
  for (const dtype of QUANT_DTYPES) {
    const dim = colsFor(dtype).at(-1)!;
    const vocab = 11;
    const table = randomQuantized(rand, dtype, vocab, dim);
    const rows = dequantRef(dtype, table, vocab, dim);
    const ids = Int32Array.from({ length: 9 }, () => ref.randomInt(rand, 0, vocab - 1));
    const got = withDeviceBuffers(gpu, (s) => {
      const out = s.zeros(ids.length * dim * 4);
      gpu.embedding({
        out,
        table: s.from(table),
        tableDtype: dtype,
        tokenIds: s.from(ids),
        numTokens: ids.length,
        vocabSize: vocab,
        dim,
      });
      return s.f32(out, ids.length * dim);
    });
    const want = new Float32Array(ids.length * dim);
    ids.forEach((id, t) => want.set(rows.subarray(id * dim, (id + 1) * dim), t * dim));
    assertBits(got, want, `embedding ${name(dtype)} dim ${dim}`);
  }
});

// --- Matmul

interface MatmulCase {
  m: number;
  n: number;
  k: number;
  stride: number;
  withBias: boolean;
}

function matmulCases(dtype: DTypeId): MatmulCase[] {
  const cases: MatmulCase[] = [];
  const [k0, k1] = [...colsFor(dtype), ...colsFor(dtype)];
  for (const m of [1, 3, 9, 33]) {
    cases.push({ m, n: 67, k: k0, stride: 67, withBias: m % 2 === 1 });
  }
  // Another k, n below one tile and a row stride past n (its extra columns must stay untouched).
  cases.push({ m: 5, n: 13, k: k1, stride: 17, withBias: true });
  cases.push({ m: 70, n: 13, k: k1, stride: 17, withBias: false });
  return cases;
}

/** Runs one case on the device; returns the output rows' n columns and checks the gaps kept NaN. */
function deviceMatmul(
  dtype: DTypeId,
  w: Uint8Array,
  x: Float32Array,
  bias: Float32Array | null,
  c: MatmulCase,
) {
  return stridedMatmul(gpu, dtype, w, x, bias, c);
}

Deno.test("matmul: every quantized format, gemv and tiled WMMA, against f32 on the dequantized weights", () => {
  const rand = ref.mulberry32(105);
  const worst = { gemv: 0, wmma: 0 };
  for (const dtype of QUANT_DTYPES) {
    for (const c of matmulCases(dtype)) {
      const { m, n, k } = c;
      const w = randomQuantized(rand, dtype, n, k);
      const wf = dequantRef(dtype, w, n, k);
      const x = ref.randomF32(rand, m * k);
      const bias = c.withBias ? ref.randomF32(rand, n) : null;
      const got = deviceMatmul(dtype, w, x, bias, c);
      const want = cpuF32Matmul(x, wf, bias, m, n, k);
      const scale = cpuF32Matmul(
        Float32Array.from(x, Math.abs),
        Float32Array.from(wf, Math.abs),
        bias ? Float32Array.from(bias, Math.abs) : null,
        m,
        n,
        k,
      );
      const path = m <= 8 ? "gemv" : "wmma";
      const rel = path === "gemv" ? 4e-5 : 6e-4;
      const label = `matmul ${name(dtype)} m ${m} n ${n} k ${k} stride ${c.stride}${
        bias ? " bias" : ""
      }`;
      worst[path] = Math.max(
        worst[path],
        assertClose(got, want, (i) => rel * scale[i] + 1e-6, label),
      );
    }
  }
  console.log(
    `  worst error: gemv ${(worst.gemv * 100).toFixed(1)}%, wmma ${
      (worst.wmma * 100).toFixed(1)
    }% of tolerance`,
  );
});

Deno.test({
  name: "matmul: every quantized format within the int8-activation tolerance of the CPU build's",
  fn() {
    const rand = ref.mulberry32(106);
    for (const dtype of QUANT_DTYPES) {
      for (const c of matmulCases(dtype)) {
        const { m, n, k } = c;
        const w = randomQuantized(rand, dtype, n, k);
        const wf = dequantRef(dtype, w, n, k);
        const x = ref.randomF32(rand, m * k);
        const got = deviceMatmul(dtype, w, x, null, { ...c, stride: n });
        const want = withDeviceBuffers(cpu, (s) => {
          const out = s.zeros(m * n * 4);
          cpu.matmul({ out, x: s.from(x), w: s.from(w), wDtype: dtype, m, n, k });
          return s.f32(out, m * n);
        });
        const scale = cpuF32Matmul(
          Float32Array.from(x, Math.abs),
          Float32Array.from(wf, Math.abs),
          null,
          m,
          n,
          k,
        );
        assertClose(
          got,
          want,
          (i) => 1e-2 * scale[i] + 1e-5,
          `matmul ${name(dtype)} m ${m} n ${n} k ${k} vs cpu`,
        );
      }
    }
  },
});

Deno.test("matmul and embedding: a k or dim that is not whole blocks fails with the block length", () => {
  withDeviceBuffers(gpu, (s) => {
    const buf = s.zeros(1 << 16);
    assert.throws(
      () =>
        gpu.matmul({
          out: buf,
          x: offset(buf, 1 << 15),
          w: buf,
          wDtype: DType.Q4_K,
          m: 2,
          n: 3,
          k: 300,
        }),
      /expected k to be a multiple of the q4_k block length 256, found 300/,
    );
    assert.throws(
      () =>
        gpu.embedding({
          out: buf,
          table: buf,
          tableDtype: DType.Q5_0,
          tokenIds: buf,
          numTokens: 1,
          vocabSize: 4,
          dim: 40,
        }),
      /expected dim to be a multiple of the q5_0 block length 32, found 40/,
    );
  });
});

Deno.test("Q4_0_R16 is the CPU build's layout: dl_repack says unsupported, the kernels refuse it", () => {
  withDeviceBuffers(gpu, (s) => {
    const n = 37, k = 64, bytes = matrixBytes(DType.Q4_0, n, k);
    const src = s.zeros(bytes), dst = s.zeros(bytes);
    const args = { dst, dstDtype: DType.Q4_0_R16, src, srcDtype: DType.Q4_0, cols: k };
    // The loader asks with zero rows first, then keeps Q4_0 (src/model/weights.ts).
    assert.equal(gpu.repack({ ...args, rows: 0 }), false);
    assert.equal(gpu.repack({ ...args, rows: n }), false);
    assert.throws(
      () => gpu.repack({ ...args, srcDtype: DType.Q8_0, rows: n }),
      (e: Error) =>
        e instanceof NativeError && /expected q4_0 to q4_0_r16 or back, found q8_0/.test(e.message),
    );
    const x = s.zeros(2 * k * 4), out = s.zeros(2 * n * 4);
    assert.throws(
      () => gpu.matmul({ out, x, w: dst, wDtype: DType.Q4_0_R16, m: 2, n, k }),
      (e: Error) => e instanceof NativeError && e.status === 3 && /q4_0_r16/.test(e.message),
    );
  });
});
