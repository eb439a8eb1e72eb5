// Tests every CPU kernel against the plain references in kernel_reference.ts, plus argument errors.
//
// Needs build/libdenollm_cpu.so. Tolerances (|native - reference| must not exceed):
// - exact: embedding, gather_rows, add (vs the f32-rounded sum), kv_write bytes, conversions (bits)
// - matmul: 1e-5 * sum_k |x w| + |bias| (the natural scale of f32 dot-product rounding)
// - rmsnorm, add_rmsnorm, silu_mul: 1e-5 * |ref| + 1e-6 (add_rmsnorm also exact against
//   dl_add + dl_rmsnorm)
// - rope: 1e-5 * (|a| + |b|) + 1e-6, with dims past rotary_dim and unrotated heads exact
// - paged attention: 1e-5 * |ref| + 1e-5 (inputs in [-1, 1], the output a convex mix of V rows)
import { type DevicePtr, DType, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import { type DeviceBuffers, withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";
import { assertClose } from "./assert_close.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

const DTYPES: ref.DtypeId[] = [DType.F32, DType.F16, DType.BF16];
const DTYPE_NAMES = ["f32", "f16", "bf16"];
const NULL = null as unknown as DevicePtr;

// --- Helpers

type Buffers = DeviceBuffers;

function withBuffers(body: (b: Buffers) => void): void {
  withDeviceBuffers(backend, body);
}

function fail(message: string): never {
  throw new Error(message);
}

function assertExact(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string): void {
  assertClose(actual, expected, () => 0, label);
}

/** Runs fn and checks it throws a NativeError with the status and a message matching pattern. */
function assertNativeError(fn: () => void, status: number, pattern: RegExp): void {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof NativeError)) throw error;
    if (error.status !== status) {
      fail(`Expected status ${status}, found ${error.status}: ${error.message}`);
    }
    if (!pattern.test(error.message)) {
      fail(`Expected a message matching ${pattern}, found "${error.message}"`);
    }
    return;
  }
  fail(`Expected a NativeError matching ${pattern}, but the call succeeded`);
}

const INVALID = 1;

/** Random values stored in `dtype`, with the f32 values they decode to. */
function randomStored(
  rand: () => number,
  n: number,
  dtype: ref.DtypeId,
): { stored: Float32Array | Uint16Array; values: Float64Array } {
  const stored = ref.encode(ref.randomF32(rand, n), dtype);
  return { stored, values: ref.decode(stored, dtype) };
}

function absAll(x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, Math.abs);
}

// --- Library identity and memory

Deno.test("library reports its backend and status names", () => {
  if (backend.name !== "cpu") fail(`Expected backend "cpu", found "${backend.name}"`);
  if (backend.statusString(0) !== "DL_OK") fail("Expected status 0 to be named DL_OK");
  if (backend.statusString(1) !== "DL_ERR_INVALID_ARGUMENT") {
    fail("Expected status 1 named DL_ERR_INVALID_ARGUMENT");
  }
  if (backend.statusString(99) !== "unknown status") fail("Expected unknown status for 99");
});

Deno.test("alloc returns zeroed 64-byte aligned memory, size 0 included", () => {
  withBuffers((b) => {
    for (const size of [0, 1, 63, 1000]) {
      const ptr = b.zeros(size);
      if (Deno.UnsafePointer.value(ptr) % 64n !== 0n) {
        fail(`Allocation of ${size} is not 64-byte aligned`);
      }
      const bytes = new Uint8Array(size);
      backend.download(bytes, ptr);
      if (bytes.some((x) => x !== 0)) fail(`Allocation of ${size} is not zeroed`);
    }
  });
});

// --- Conversions

/** f32 values that stress rounding to f16 and bf16: ties, near-ties, subnormals, overflow. */
function conversionInputs(rand: () => number): Float32Array {
  const values: number[] = [
    0,
    -0,
    1,
    -1,
    65504,
    65519.99,
    65520,
    -65520,
    1e6,
    Infinity,
    -Infinity,
    NaN,
    2 ** -14,
    2 ** -24,
    2 ** -25,
    1.5 * 2 ** -25,
    2 ** -26,
    3 * 2 ** -25,
    2 ** -149,
    2 ** -126,
    3.4028234663852886e38,
    3.3961776e38,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
  ];
  // Exact midpoints between neighbouring f16 values, and one f32 ulp either side.
  const ulp = (x: number) => {
    const bits = new Uint32Array(new Float32Array([x]).buffer)[0];
    return new Float32Array(new Uint32Array([bits + 1]).buffer)[0] - x;
  };
  for (let i = 0; i < 2000; i++) {
    const h = randomIntBits(rand, 0x7bff);
    const mid = (ref.f16BitsToF32(h) + ref.f16BitsToF32(h + 1)) / 2;
    values.push(mid, mid + ulp(mid), mid - ulp(mid) / 2, -mid);
  }
  // Random bit patterns over the whole f32 range.
  const bits = new Uint32Array(4000);
  for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(rand() * 2 ** 32);
  values.push(...new Float32Array(bits.buffer));
  // Values in the f16 range, where most real data lives.
  for (let i = 0; i < 2000; i++) {
    values.push((rand() - 0.5) * 2 ** randomIntBits(rand, 40) / 2 ** 26);
  }
  return Float32Array.from(values);
}

function randomIntBits(rand: () => number, max: number): number {
  return Math.floor(rand() * (max + 1));
}

Deno.test("convert f32 -> f16 / bf16 rounds to nearest even, bit for bit", () => {
  const rand = ref.mulberry32(1);
  const input = conversionInputs(rand);
  withBuffers((b) => {
    const src = b.from(input);
    for (const dtype of [DType.F16, DType.BF16]) {
      const dst = b.zeros(input.length * 2);
      backend.convert(dst, dtype, src, DType.F32, input.length);
      const got = b.u16(dst, input.length);
      const expected = ref.encode(input, dtype);
      for (let i = 0; i < input.length; i++) {
        if (Number.isNaN(input[i])) {
          const decoded = ref.decode(new Uint16Array([got[i]]), dtype)[0];
          if (!Number.isNaN(decoded)) fail(`NaN converted to non-NaN bits ${got[i]}`);
        } else if (got[i] !== expected[i]) {
          fail(
            `${DTYPE_NAMES[dtype]}: ${input[i]} converted to 0x${got[i].toString(16)}, ` +
              `expected 0x${expected[i].toString(16)}`,
          );
        }
      }
    }
  });
});

Deno.test("convert f16 / bf16 -> f32 and f16 <-> bf16 are exact for all 65536 patterns", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  withBuffers((b) => {
    const src = b.from(all);
    for (const dtype of [DType.F16, DType.BF16]) {
      const dst = b.zeros(all.length * 4);
      backend.convert(dst, DType.F32, src, dtype, all.length);
      const got = b.f32(dst, all.length);
      const expected = ref.decode(all, dtype);
      for (let i = 0; i < all.length; i++) {
        const same = Number.isNaN(expected[i])
          ? Number.isNaN(got[i])
          : Object.is(got[i], expected[i]);
        if (!same) {
          fail(
            `${DTYPE_NAMES[dtype]} 0x${i.toString(16)} decoded to ${got[i]}, expected ${
              expected[i]
            }`,
          );
        }
      }
      // Across the 16-bit formats: decode then re-encode in the other format.
      const other = dtype === DType.F16 ? DType.BF16 : DType.F16;
      const cross = b.zeros(all.length * 2);
      backend.convert(cross, other, src, dtype, all.length);
      const crossed = b.u16(cross, all.length);
      const crossExpected = ref.encode(expected, other);
      for (let i = 0; i < all.length; i++) {
        if (!Number.isNaN(expected[i]) && crossed[i] !== crossExpected[i]) {
          fail(
            `${DTYPE_NAMES[dtype]} 0x${i.toString(16)} -> ${DTYPE_NAMES[other]} gave ${crossed[i]}`,
          );
        }
      }
    }
  });
});

// --- Kernels

Deno.test("embedding gathers and widens rows for every table dtype", () => {
  const rand = ref.mulberry32(2);
  const vocabSize = 50, dim = 67, numTokens = 13;
  const tokenIds = Int32Array.from(
    { length: numTokens },
    () => ref.randomInt(rand, 0, vocabSize - 1),
  );
  tokenIds[0] = vocabSize - 1;
  withBuffers((b) => {
    for (const dtype of DTYPES) {
      const table = randomStored(rand, vocabSize * dim, dtype);
      const out = b.zeros(numTokens * dim * 4);
      backend.embedding({
        out,
        table: b.from(table.stored),
        tableDtype: dtype,
        tokenIds: b.from(tokenIds),
        numTokens,
        vocabSize,
        dim,
      });
      assertExact(
        b.f32(out, numTokens * dim),
        ref.embedding(table.values, tokenIds, dim),
        DTYPE_NAMES[dtype],
      );
    }
  });
});

Deno.test("rmsnorm matches the reference, in place too", () => {
  const rand = ref.mulberry32(3);
  withBuffers((b) => {
    for (const [numTokens, dim] of [[1, 67], [5, 333], [3, 4096], [2, 1]]) {
      const x = ref.randomF32(rand, numTokens * dim, -3, 3);
      const weight = ref.randomF32(rand, dim, 0.5, 1.5);
      const expected = ref.rmsnorm(x, weight, numTokens, dim, 1e-5);
      const tolerance = (i: number) => 1e-5 * Math.abs(expected[i]) + 1e-6;
      const xPtr = b.from(x), wPtr = b.from(weight), out = b.zeros(x.byteLength);
      backend.rmsnorm({ out, x: xPtr, weight: wPtr, numTokens, dim, eps: 1e-5 });
      assertClose(b.f32(out, x.length), expected, tolerance, `rmsnorm ${numTokens}x${dim}`);
      backend.rmsnorm({ out: xPtr, x: xPtr, weight: wPtr, numTokens, dim, eps: 1e-5 });
      assertClose(
        b.f32(xPtr, x.length),
        expected,
        tolerance,
        `in-place rmsnorm ${numTokens}x${dim}`,
      );
    }
  });
});

Deno.test("add_rmsnorm matches the reference and dl_add + dl_rmsnorm bit for bit", async (t) => {
  const rand = ref.mulberry32(31);
  const shapes = [[1, 67], [5, 333], [3, 4096], [2, 1], [7, 1031]];
  await t.step("odd sizes, out apart from x and out equal to x", () => {
    withBuffers((b) => {
      for (const [numTokens, dim] of shapes) {
        const residual = ref.randomF32(rand, numTokens * dim, -3, 3);
        const x = ref.randomF32(rand, numTokens * dim, -3, 3);
        const weight = ref.randomF32(rand, dim, 0.5, 1.5);
        const summed = residual.map((r, i) => r + x[i]); // f32 adds, as the kernel does
        const expected = ref.rmsnorm(summed, weight, numTokens, dim, 1e-5);
        const tolerance = (i: number) => 1e-5 * Math.abs(expected[i]) + 1e-6;
        const wPtr = b.from(weight);
        for (const inPlace of [false, true]) {
          const rPtr = b.from(residual), xPtr = b.from(x);
          const out = inPlace ? xPtr : b.zeros(x.byteLength);
          backend.addRmsnorm({
            out,
            residual: rPtr,
            x: xPtr,
            weight: wPtr,
            numTokens,
            dim,
            eps: 1e-5,
          });
          const label = `${inPlace ? "out = x " : ""}${numTokens}x${dim}`;
          assertExact(b.f32(rPtr, x.length), summed, `residual ${label}`);
          assertClose(b.f32(out, x.length), expected, tolerance, `add_rmsnorm ${label}`);

          // The unfused pair the forward pass ran before: the same floats, bit for bit.
          const r2 = b.from(residual), x2 = b.from(x), out2 = b.zeros(x.byteLength);
          backend.add({ out: r2, a: r2, b: x2, numElements: numTokens * dim });
          backend.rmsnorm({ out: out2, x: r2, weight: wPtr, numTokens, dim, eps: 1e-5 });
          assertExact(b.f32(out, x.length), b.f32(out2, x.length), `bits ${label}`);
        }
      }
    });
  });
  await t.step("bad arguments get a clear error", () => {
    withBuffers((b) => {
      const buf = b.zeros(64), other = b.zeros(64), w = b.zeros(16);
      const args = {
        out: other,
        residual: buf,
        x: other,
        weight: w,
        numTokens: 1,
        dim: 4,
        eps: 1e-5,
      };
      assertNativeError(
        () => backend.addRmsnorm({ ...args, x: buf }),
        INVALID,
        /expected residual not to overlap x, found overlapping buffers/,
      );
      assertNativeError(
        () => backend.addRmsnorm({ ...args, out: Deno.UnsafePointer.offset(buf, 8) as DevicePtr }),
        INVALID,
        /expected residual not to overlap out, found overlapping buffers/,
      );
      assertNativeError(
        () => backend.addRmsnorm({ ...args, residual: NULL }),
        INVALID,
        /expected residual to be non-NULL/,
      );
      assertNativeError(
        () => backend.addRmsnorm({ ...args, eps: -1 }),
        INVALID,
        /expected a finite eps >= 0, found -1/,
      );
      backend.addRmsnorm({ ...args, residual: NULL, numTokens: 0 }); // nothing to do, no pointers
    });
  });
});

Deno.test("matmul matches the reference for every weight dtype, tile remainder and bias", () => {
  const rand = ref.mulberry32(4);
  const shapes: [number, number, number][] = [
    [1, 129, 333], // decode GEMV with a k tail
    [3, 67, 67],
    [5, 129, 333], // a 4-row tile plus a 1-row remainder
    [17, 31, 1],
    [1, 1, 16],
    [8, 24, 64],
    [33, 130, 100],
    [64, 37, 1024],
  ];
  withBuffers((b) => {
    for (const [m, n, k] of shapes) {
      for (const dtype of DTYPES) {
        for (const hasBias of [false, true]) {
          const x = ref.randomF32(rand, m * k);
          const w = randomStored(rand, n * k, dtype);
          const bias = hasBias ? ref.randomF32(rand, n) : null;
          const out = b.zeros(m * n * 4);
          backend.matmul({
            out,
            x: b.from(x),
            w: b.from(w.stored),
            wDtype: dtype,
            bias: bias ? b.from(bias) : null,
            m,
            n,
            k,
          });
          const expected = ref.matmul(x, w.values, bias, m, n, k);
          const scale = ref.matmul(
            absAll(x),
            absAll(w.values),
            bias ? absAll(bias) : null,
            m,
            n,
            k,
          );
          const label = `matmul m=${m} n=${n} k=${k} ${DTYPE_NAMES[dtype]}${
            hasBias ? " bias" : ""
          }`;
          assertClose(b.f32(out, m * n), expected, (i) => 1e-5 * scale[i], label);
        }
      }
    }
  });
});

Deno.test("matmul rows are bit-identical whatever the batch size and the row's place in it", () => {
  // Decode (m <= 4) and prefill take different tile shapes and weight streams; the engine's batch
  // invariance needs every output element summed in the same order all the same.
  const rand = ref.mulberry32(40);
  const batch = 37;
  const shapes: [number, number][] = [[130, 333], [1000, 64], [7, 48]];
  withBuffers((b) => {
    for (const [n, k] of shapes) {
      for (const dtype of DTYPES) {
        const x = ref.randomF32(rand, batch * k);
        const w = b.from(randomStored(rand, n * k, dtype).stored);
        const bias = b.from(ref.randomF32(rand, n));
        const xAll = b.from(x);
        const outAll = b.zeros(batch * n * 4);
        backend.matmul({ out: outAll, x: xAll, w, wDtype: dtype, bias, m: batch, n, k });
        const all = b.f32(outAll, batch * n);
        for (const m of [1, 2, 3, 4, 5, 8]) {
          for (const first of [0, 1, batch - m]) {
            const out = b.zeros(m * n * 4);
            const xPart = b.from(x.subarray(first * k, (first + m) * k));
            backend.matmul({ out, x: xPart, w, wDtype: dtype, bias, m, n, k });
            assertExact(
              b.f32(out, m * n),
              all.subarray(first * n, (first + m) * n),
              `matmul rows ${first}..${first + m - 1} of ${batch} alone, n=${n} k=${k} ` +
                DTYPE_NAMES[dtype],
            );
          }
        }
      }
    }
  });
});

Deno.test("matmul with out_row_stride > n writes its columns and leaves the rest untouched", () => {
  const rand = ref.mulberry32(14);
  // Decode and prefill tiles, odd sizes; each case writes columns [col, col + n) of rows of stride.
  const shapes: { m: number; n: number; k: number; stride: number; col: number }[] = [
    { m: 1, n: 67, k: 333, stride: 131, col: 5 },
    { m: 3, n: 13, k: 67, stride: 29, col: 16 },
    { m: 5, n: 129, k: 100, stride: 200, col: 71 },
    { m: 33, n: 31, k: 17, stride: 97, col: 1 },
    { m: 64, n: 37, k: 1024, stride: 37 + 64, col: 64 },
  ];
  const SENTINEL = -12345.5;
  withBuffers((b) => {
    for (const { m, n, k, stride, col } of shapes) {
      for (const dtype of DTYPES) {
        const x = ref.randomF32(rand, m * k);
        const w = randomStored(rand, n * k, dtype);
        const bias = ref.randomF32(rand, n);
        const out = b.from(new Float32Array(m * stride).fill(SENTINEL));
        backend.matmul({
          out: Deno.UnsafePointer.offset(out, col * 4) as DevicePtr,
          x: b.from(x),
          w: b.from(w.stored),
          wDtype: dtype,
          bias: b.from(bias),
          m,
          n,
          k,
          outRowStride: stride,
        });
        const expected = ref.matmul(x, w.values, bias, m, n, k);
        const scale = ref.matmul(absAll(x), absAll(w.values), absAll(bias), m, n, k);
        const all = b.f32(out, m * stride);
        const label = `matmul m=${m} n=${n} k=${k} stride=${stride} ${DTYPE_NAMES[dtype]}`;
        const written = new Float32Array(m * n);
        for (let i = 0; i < m; i++) {
          written.set(all.subarray(i * stride + col, i * stride + col + n), i * n);
          for (let j = 0; j < stride; j++) {
            if ((j < col || j >= col + n) && all[i * stride + j] !== SENTINEL) {
              fail(`${label}: row ${i} column ${j} outside the written columns changed`);
            }
          }
        }
        assertClose(written, expected, (i) => 1e-5 * scale[i], label);
      }
    }
    const buf = b.zeros(4096);
    assertNativeError(
      () =>
        backend.matmul({
          out: buf,
          x: b.zeros(64),
          w: b.zeros(64),
          wDtype: DType.F32,
          m: 1,
          n: 4,
          k: 4,
          outRowStride: 3,
        }),
      INVALID,
      /expected out_row_stride >= n \(4\), found 3/,
    );
  });
});

Deno.test("rope rotates the leading heads, NEOX and interleaved, partial rotary_dim", () => {
  const rand = ref.mulberry32(5);
  const cases = [
    { headDim: 8, rotaryDim: 8, numHeads: 3, rowHeads: 5 },
    { headDim: 64, rotaryDim: 32, numHeads: 4, rowHeads: 4 },
    { headDim: 80, rotaryDim: 80, numHeads: 2, rowHeads: 3 },
    { headDim: 80, rotaryDim: 20, numHeads: 3, rowHeads: 6 },
  ];
  withBuffers((b) => {
    for (const c of cases) {
      for (const style of [0, 1] as const) {
        const numTokens = 7, rowStride = c.rowHeads * c.headDim + 3;
        const x = ref.randomF32(rand, numTokens * rowStride);
        const positions = Int32Array.from(
          { length: numTokens },
          () => ref.randomInt(rand, 0, 5000),
        );
        positions[0] = 0;
        const invFreq = Float32Array.from(
          { length: c.rotaryDim / 2 },
          (_, i) => 10000 ** (-2 * i / c.rotaryDim),
        );
        const xPtr = b.from(x);
        backend.rope({
          x: xPtr,
          positions: b.from(positions),
          invFreq: b.from(invFreq),
          numTokens,
          numHeads: c.numHeads,
          headDim: c.headDim,
          rotaryDim: c.rotaryDim,
          rowStride,
          style,
        });
        const expected = ref.rope(
          x,
          positions,
          invFreq,
          numTokens,
          c.numHeads,
          c.headDim,
          c.rotaryDim,
          rowStride,
          style,
        );
        // Each output mixes two inputs of magnitude <= 1.
        assertClose(
          b.f32(xPtr, x.length),
          expected,
          (i) => (expected[i] === x[i] ? 0 : 2e-5 + 1e-6),
          `rope ${JSON.stringify(c)} style ${style}`,
        );
      }
    }
  });
});

Deno.test("silu_mul, add and gather_rows match the reference", () => {
  const rand = ref.mulberry32(6);
  withBuffers((b) => {
    const numTokens = 9, dim = 67;
    const gateUp = ref.randomF32(rand, numTokens * 2 * dim, -8, 8);
    const out = b.zeros(numTokens * dim * 4);
    backend.siluMul({ out, gateUp: b.from(gateUp), numTokens, dim });
    const expected = ref.siluMul(gateUp, numTokens, dim);
    assertClose(
      b.f32(out, numTokens * dim),
      expected,
      (i) => 1e-5 * Math.abs(expected[i]) + 1e-6,
      "silu_mul",
    );

    const n = 100_003; // past the single-thread cutoff, odd length
    const a = ref.randomF32(rand, n), c = ref.randomF32(rand, n);
    const aPtr = b.from(a), cPtr = b.from(c);
    backend.add({ out: aPtr, a: aPtr, b: cPtr, numElements: n });
    const sum = Float32Array.from(ref.add(a, c)); // the f32 rounding of the exact sum
    assertExact(b.f32(aPtr, n), sum, "add in place");

    const numSrcRows = 11;
    const x = ref.randomF32(rand, numSrcRows * dim);
    const rows = Int32Array.from([10, 0, 3, 3, 7]);
    const gathered = b.zeros(rows.length * dim * 4);
    backend.gatherRows({
      out: gathered,
      x: b.from(x),
      rows: b.from(rows),
      numRows: rows.length,
      numSrcRows,
      dim,
    });
    assertExact(b.f32(gathered, rows.length * dim), ref.gatherRows(x, rows, dim), "gather_rows");
  });
});

Deno.test("kv_write stores K and V heads at their slots in every cache dtype, skipping padding", () => {
  const rand = ref.mulberry32(7);
  withBuffers((b) => {
    for (const dtype of DTYPES) {
      for (const blockSize of [16, 5]) {
        const numKvHeads = 3, headDim = 8, numBlocks = 7, numTokens = 20;
        const numHeads = 6;
        // Fused QKV rows: [q (numHeads * headDim) | k | v], k and v pointing into the same buffer.
        const rowStride = (numHeads + 2 * numKvHeads) * headDim;
        const qkv = ref.randomF32(rand, numTokens * rowStride);
        // Distinct slots (a shuffled prefix of all of them), the last slot included, every sixth
        // token padding.
        const numSlots = numBlocks * blockSize;
        const order = Array.from({ length: numSlots }, (_, i) => i);
        for (let i = numSlots - 1; i > 0; i--) {
          const j = ref.randomInt(rand, 0, i);
          [order[i], order[j]] = [order[j], order[i]];
        }
        const last = order.indexOf(numSlots - 1);
        [order[1], order[last]] = [order[last], order[1]];
        const slots = Int32Array.from({ length: numTokens }, (_, t) => t % 6 === 5 ? -1 : order[t]);
        const cacheLength = numBlocks * numKvHeads * blockSize * headDim;
        const initial = randomStored(rand, cacheLength, dtype);
        const kCache = b.from(initial.stored), vCache = b.from(initial.stored);
        const qkvPtr = b.from(qkv);
        const kOffset = numHeads * headDim, vOffset = (numHeads + numKvHeads) * headDim;
        backend.kvWrite({
          kCache,
          vCache,
          cacheDtype: dtype,
          k: Deno.UnsafePointer.offset(qkvPtr, kOffset * 4) as DevicePtr,
          v: Deno.UnsafePointer.offset(qkvPtr, vOffset * 4) as DevicePtr,
          slotMapping: b.from(slots),
          numTokens,
          numKvHeads,
          headDim,
          rowStride,
          blockSize,
          numBlocks,
        });
        const kExpected = Float64Array.from(initial.values),
          vExpected = Float64Array.from(initial.values);
        ref.kvWrite(
          kExpected,
          vExpected,
          qkv.subarray(kOffset),
          qkv.subarray(vOffset),
          slots,
          numKvHeads,
          headDim,
          rowStride,
          blockSize,
        );
        const label = `kv_write ${DTYPE_NAMES[dtype]} block_size ${blockSize}`;
        const read = (ptr: DevicePtr) =>
          dtype === DType.F32 ? b.f32(ptr, cacheLength) : b.u16(ptr, cacheLength);
        assertExact(read(kCache), ref.encode(kExpected, dtype), `${label} K`);
        assertExact(read(vCache), ref.encode(vExpected, dtype), `${label} V`);
      }
    }
  });
});

interface AttentionCase {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  /** [prefix tokens already cached, new query tokens] per sequence. */
  seqs: [number, number][];
  extraQColumns: number;
  /** Queries uniform in [-qRange, qRange] (default 1). */
  qRange?: number;
}

function runAttentionCase(b: Buffers, c: AttentionCase, dtype: ref.DtypeId, seed: number): void {
  const rand = ref.mulberry32(seed);
  const { numHeads, numKvHeads, headDim, blockSize } = c;
  const numSeqs = c.seqs.length;
  const seqLens = Int32Array.from(c.seqs, ([prefix, numNew]) => prefix + numNew);
  const queryStart = new Int32Array(numSeqs + 1);
  c.seqs.forEach(([, numNew], s) => queryStart[s + 1] = queryStart[s] + numNew);
  const numTokens = queryStart[numSeqs];
  const maxBlocksPerSeq = Math.max(...Array.from(seqLens, (n) => Math.ceil(n / blockSize))) + 1;
  const numBlocks = numSeqs * maxBlocksPerSeq + 2;
  // Each sequence gets distinct blocks in shuffled order; unused table entries hold garbage.
  const ids = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = ref.randomInt(rand, 0, i);
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  const blockTables = new Int32Array(numSeqs * maxBlocksPerSeq).fill(-7);
  let next = 0;
  for (let s = 0; s < numSeqs; s++) {
    for (let blk = 0; blk < Math.ceil(seqLens[s] / blockSize); blk++) {
      blockTables[s * maxBlocksPerSeq + blk] = ids[next++];
    }
  }
  const cacheLength = numBlocks * numKvHeads * blockSize * headDim;
  const kCache = randomStored(rand, cacheLength, dtype);
  const vCache = randomStored(rand, cacheLength, dtype);
  const qRowStride = numHeads * headDim + c.extraQColumns;
  const qRange = c.qRange ?? 1;
  const q = ref.randomF32(rand, numTokens * qRowStride, -qRange, qRange);
  const scale = 1 / Math.sqrt(headDim);
  const out = b.zeros(numTokens * numHeads * headDim * 4);
  backend.pagedAttention({
    out,
    q: b.from(q),
    kCache: b.from(kCache.stored),
    vCache: b.from(vCache.stored),
    cacheDtype: dtype,
    blockTables: b.from(blockTables),
    seqLens: b.from(seqLens),
    queryStart: b.from(queryStart),
    numSeqs,
    numTokens,
    numHeads,
    numKvHeads,
    headDim,
    qRowStride,
    blockSize,
    maxBlocksPerSeq,
    numBlocks,
    scale,
  });
  const expected = ref.pagedAttention({
    q,
    kCache: kCache.values,
    vCache: vCache.values,
    blockTables,
    seqLens,
    queryStart,
    numSeqs,
    numTokens,
    numHeads,
    numKvHeads,
    headDim,
    qRowStride,
    blockSize,
    maxBlocksPerSeq,
    scale: Math.fround(scale),
  });
  assertClose(
    b.f32(out, expected.length),
    expected,
    (i) => 1e-5 * Math.abs(expected[i]) + 1e-5,
    `attention ${JSON.stringify(c)} ${DTYPE_NAMES[dtype]} seed ${seed}`,
  );
}

Deno.test("paged attention gives a query the same bits alone as in a batch", () => {
  const rand = ref.mulberry32(41);
  const [numHeads, numKvHeads, headDim, blockSize] = [6, 2, 64, 16];
  const seqs: [number, number][] = [[70, 1], [0, 21], [33, 1], [5, 4]]; // [prefix, new tokens]
  const maxBlocksPerSeq = 8;
  const numBlocks = seqs.length * maxBlocksPerSeq;
  const blockTables = Int32Array.from({ length: numBlocks }, (_, i) => (i * 7) % numBlocks);
  const seqLens = Int32Array.from(seqs, ([prefix, numNew]) => prefix + numNew);
  const queryStart = new Int32Array(seqs.length + 1);
  seqs.forEach(([, numNew], s) => queryStart[s + 1] = queryStart[s] + numNew);
  const numTokens = queryStart[seqs.length];
  const rowWidth = numHeads * headDim;
  const cacheLength = numBlocks * numKvHeads * blockSize * headDim;
  withBuffers((b) => {
    for (const dtype of DTYPES) {
      const kCache = b.from(randomStored(rand, cacheLength, dtype).stored);
      const vCache = b.from(randomStored(rand, cacheLength, dtype).stored);
      const q = ref.randomF32(rand, numTokens * rowWidth, -4, 4);
      const shape = {
        kCache,
        vCache,
        cacheDtype: dtype,
        numHeads,
        numKvHeads,
        headDim,
        qRowStride: rowWidth,
        blockSize,
        maxBlocksPerSeq,
        numBlocks,
        scale: 1 / Math.sqrt(headDim),
      };
      const outAll = b.zeros(numTokens * rowWidth * 4);
      backend.pagedAttention({
        ...shape,
        out: outAll,
        q: b.from(q),
        blockTables: b.from(blockTables),
        seqLens: b.from(seqLens),
        queryStart: b.from(queryStart),
        numSeqs: seqs.length,
        numTokens,
      });
      const all = b.f32(outAll, numTokens * rowWidth);
      seqs.forEach(([, numNew], s) => {
        const rows = [queryStart[s], queryStart[s + 1]];
        const out = b.zeros(numNew * rowWidth * 4);
        backend.pagedAttention({
          ...shape,
          out,
          q: b.from(q.subarray(rows[0] * rowWidth, rows[1] * rowWidth)),
          blockTables: b.from(blockTables.subarray(s * maxBlocksPerSeq, (s + 1) * maxBlocksPerSeq)),
          seqLens: b.from(Int32Array.of(seqLens[s])),
          queryStart: b.from(Int32Array.of(0, numNew)),
          numSeqs: 1,
          numTokens: numNew,
        });
        assertExact(
          b.f32(out, numNew * rowWidth),
          all.subarray(rows[0] * rowWidth, rows[1] * rowWidth),
          `attention of sequence ${s} alone, ${DTYPE_NAMES[dtype]} cache`,
        );
      });
    }
  });
});

Deno.test("copy_blocks copies whole blocks and rejects bad pairs", () => {
  const rand = ref.mulberry32(11);
  withBuffers((b) => {
    const numBlocks = 6, blockFloats = 40;
    const initial = ref.randomF32(rand, numBlocks * blockFloats);
    const cache = b.from(initial);
    const pairs = Int32Array.of(1, 4, 0, 5, 1, 2);
    backend.copyBlocks({
      cache,
      pairs: b.from(pairs),
      numPairs: 3,
      blockBytes: blockFloats * 4,
      numBlocks,
    });
    const expected = initial.slice();
    for (let i = 0; i < 3; i++) {
      const [src, dst] = [pairs[2 * i], pairs[2 * i + 1]];
      expected.set(initial.subarray(src * blockFloats, (src + 1) * blockFloats), dst * blockFloats);
    }
    assertExact(b.f32(cache, numBlocks * blockFloats), expected, "copy_blocks");
    const copy = (p: Int32Array) => () =>
      backend.copyBlocks({
        cache,
        pairs: b.from(p),
        numPairs: p.length / 2,
        blockBytes: blockFloats * 4,
        numBlocks,
      });
    assertNativeError(copy(Int32Array.of(0, 6)), 1, /block ids in \[0, 6\), found 6/);
    assertNativeError(copy(Int32Array.of(3, 3)), 1, /onto itself/);
  });
});

Deno.test("paged attention matches naive softmax attention: MHA, GQA, MQA, every cache dtype", () => {
  const rand = ref.mulberry32(8);
  const randomSeqs = (count: number): [number, number][] =>
    Array.from({ length: count }, () => [ref.randomInt(rand, 0, 100), ref.randomInt(rand, 1, 40)]);
  const cases: AttentionCase[] = [
    {
      numHeads: 4,
      numKvHeads: 4,
      headDim: 8,
      blockSize: 16,
      seqs: randomSeqs(3),
      extraQColumns: 0,
    },
    {
      numHeads: 8,
      numKvHeads: 2,
      headDim: 64,
      blockSize: 5,
      seqs: randomSeqs(3),
      extraQColumns: 32,
    },
    {
      numHeads: 6,
      numKvHeads: 1,
      headDim: 80,
      blockSize: 16,
      seqs: randomSeqs(2),
      extraQColumns: 160,
    },
    // Pure prefill (no prefix), decode (one new token) and an exact block boundary.
    {
      numHeads: 4,
      numKvHeads: 2,
      headDim: 64,
      blockSize: 16,
      seqs: [[0, 37], [99, 1], [16, 16], [0, 1]],
      extraQColumns: 0,
    },
    // Decode alone over a long context (fewer tokens than threads, so the KV heads are split
    // between threads), with queries scaled up so the softmax exps span a wide range.
    {
      numHeads: 9,
      numKvHeads: 3,
      headDim: 64,
      blockSize: 16,
      seqs: [[2047, 1]],
      extraQColumns: 0,
      qRange: 8,
    },
  ];
  withBuffers((b) => {
    cases.forEach((c, i) => {
      for (const dtype of DTYPES) runAttentionCase(b, c, dtype, 100 + i * 3 + dtype);
    });
  });
});

Deno.test("paged attention edge cases: odd head dims, GQA groups to 128, block sizes 1 to 64, empty sequences", () => {
  const cases: AttentionCase[] = [];
  const base = { numHeads: 4, numKvHeads: 2, headDim: 64, blockSize: 16, extraQColumns: 0 };
  for (const headDim of [1, 3, 17, 65, 129, 255, 256]) {
    cases.push({ ...base, headDim, seqs: [[0, 5], [20, 2], [40, 1]] });
  }
  for (const [numHeads, numKvHeads] of [[32, 1], [64, 2], [128, 1], [256, 2]]) {
    cases.push({ ...base, numHeads, numKvHeads, seqs: [[63, 1], [64, 1], [129, 1], [0, 3]] });
  }
  for (const blockSize of [1, 2, 3, 7, 8, 17, 32, 33, 64]) {
    cases.push({
      ...base,
      blockSize,
      seqs: [[0, 2 * blockSize + 1], [blockSize, 3], [3 * blockSize - 1, 1]],
    });
  }
  // Sequences without new tokens (first, between, last), a batch of one token per sequence that
  // is not one per sequence, and no tokens at all.
  cases.push({ ...base, seqs: [[5, 0], [0, 3], [10, 0], [20, 1], [33, 0]] });
  cases.push({ ...base, seqs: [[9, 0], [4, 2]] });
  cases.push({ ...base, seqs: [[4, 0], [0, 0], [17, 0]] });
  withBuffers((b) => {
    cases.forEach((c, i) => {
      for (const dtype of DTYPES) runAttentionCase(b, c, dtype, 300 + i * 3 + dtype);
    });
  });
});

Deno.test("paged attention matches the reference on random batches", () => {
  const rand = ref.mulberry32(9);
  const pick = <T>(items: T[]): T => items[ref.randomInt(rand, 0, items.length - 1)];
  const heads: [number, number][] = [[1, 1], [4, 4], [8, 2], [8, 1], [12, 4], [16, 2], [32, 8]];
  withBuffers((b) => {
    for (let iteration = 0; iteration < 40; iteration++) {
      const [numHeads, numKvHeads] = pick(heads);
      const kind = pick(["decode", "mixed", "prefill"]);
      const seqs = Array.from({ length: ref.randomInt(rand, 1, 8) }, (): [number, number] => [
        kind === "prefill" ? 0 : ref.randomInt(rand, 0, rand() < 0.3 ? 300 : 40),
        kind === "decode" ? 1 : ref.randomInt(rand, kind === "prefill" ? 1 : 0, 24),
      ]);
      const c: AttentionCase = {
        numHeads,
        numKvHeads,
        headDim: pick([8, 16, 17, 32, 64, 80]),
        blockSize: pick([1, 2, 4, 5, 8, 16, 32, 64]),
        seqs,
        extraQColumns: pick([0, 8, 33]),
      };
      runAttentionCase(b, c, pick(DTYPES), 1000 + iteration);
    }
  });
});

// --- Argument errors

Deno.test("invalid arguments fail with DL_ERR_INVALID_ARGUMENT and say what was expected", () => {
  withBuffers((b) => {
    const buf = b.zeros(4096);
    const ints = (values: number[]) => b.from(Int32Array.from(values));

    // matmul, convert, rmsnorm
    const matmul = { out: buf, x: buf, w: buf, wDtype: DType.F32, m: 1, n: 4, k: 4 };
    const out2 = b.zeros(64);
    assertNativeError(
      () => backend.matmul({ ...matmul, out: NULL }),
      INVALID,
      /expected out to be non-NULL/,
    );
    assertNativeError(
      () => backend.matmul({ ...matmul, out: out2, wDtype: 99 as DTypeId }),
      INVALID,
      /expected w_dtype to be a dl_dtype.*found 99/,
    );
    assertNativeError(
      () => backend.matmul({ ...matmul, out: out2, n: 0 }),
      INVALID,
      /expected n > 0, found 0/,
    );
    assertNativeError(
      () => backend.matmul({ ...matmul, out: out2, m: -1 }),
      INVALID,
      /expected m >= 0, found -1/,
    );
    assertNativeError(() => backend.matmul(matmul), INVALID, /expected out not to overlap x/);
    assertNativeError(
      () => backend.convert(buf, 99 as DTypeId, buf, DType.F32, 4),
      INVALID,
      /expected dst_dtype to be a dl_dtype/,
    );
    assertNativeError(
      () => backend.rmsnorm({ out: buf, x: buf, weight: NULL, numTokens: 1, dim: 4, eps: 1e-5 }),
      INVALID,
      /expected weight to be non-NULL/,
    );
    assertNativeError(
      () => backend.rmsnorm({ out: buf, x: buf, weight: buf, numTokens: 1, dim: 0, eps: 1e-5 }),
      INVALID,
      /expected dim > 0, found 0/,
    );

    // embedding, gather_rows
    const embedding = {
      out: buf,
      table: buf,
      tableDtype: DType.F16,
      numTokens: 3,
      vocabSize: 50,
      dim: 4,
    };
    assertNativeError(
      () => backend.embedding({ ...embedding, tokenIds: ints([1, 2, 50]) }),
      INVALID,
      /expected token_ids\[2\] in \[0, 50\), found 50/,
    );
    assertNativeError(
      () => backend.embedding({ ...embedding, tokenIds: ints([-1, 2, 3]) }),
      INVALID,
      /expected token_ids\[0\] in \[0, 50\), found -1/,
    );
    assertNativeError(
      () =>
        backend.gatherRows({
          out: buf,
          x: buf,
          rows: ints([0, 5]),
          numRows: 2,
          numSrcRows: 5,
          dim: 4,
        }),
      INVALID,
      /expected rows\[1\] in \[0, 5\), found 5/,
    );

    // rope
    const rope = {
      x: buf,
      positions: ints([0, 1]),
      invFreq: buf,
      numTokens: 2,
      numHeads: 2,
      headDim: 8,
      rotaryDim: 8,
      rowStride: 16,
      style: 0 as const,
    };
    assertNativeError(
      () => backend.rope({ ...rope, rotaryDim: 7 }),
      INVALID,
      /even rotary_dim <= head_dim \(8\), found 7/,
    );
    assertNativeError(
      () => backend.rope({ ...rope, rotaryDim: 10 }),
      INVALID,
      /even rotary_dim <= head_dim \(8\), found 10/,
    );
    assertNativeError(
      () => backend.rope({ ...rope, style: 2 as 0 }),
      INVALID,
      /expected style 0 \(NEOX\) or 1 \(INTERLEAVED\), found 2/,
    );
    assertNativeError(
      () => backend.rope({ ...rope, rowStride: 15 }),
      INVALID,
      /row_stride >= num_heads \* head_dim \(16\), found 15/,
    );

    // kv_write
    const kvWrite = {
      kCache: buf,
      vCache: buf,
      cacheDtype: DType.F16,
      k: buf,
      v: buf,
      numTokens: 2,
      numKvHeads: 1,
      headDim: 4,
      rowStride: 4,
      blockSize: 5,
      numBlocks: 3,
    };
    assertNativeError(
      () => backend.kvWrite({ ...kvWrite, slotMapping: ints([-1, 15]) }),
      INVALID,
      /expected slot_mapping\[1\] < num_blocks \* block_size \(15\) or negative, found 15/,
    );
    assertNativeError(
      () => backend.kvWrite({ ...kvWrite, slotMapping: ints([0, 1]), cacheDtype: 99 as DTypeId }),
      INVALID,
      /expected cache_dtype to be a dl_dtype/,
    );

    // paged attention: two sequences, 3 + 1 new tokens, block_size 4, 2 blocks per sequence
    const attention = {
      out: b.zeros(4 * 4 * 8 * 4),
      q: buf,
      kCache: buf,
      vCache: buf,
      cacheDtype: DType.F32,
      blockTables: ints([0, 1, 2, 3]),
      seqLens: ints([5, 8]),
      queryStart: ints([0, 3, 4]),
      numSeqs: 2,
      numTokens: 4,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 8,
      qRowStride: 32,
      blockSize: 4,
      maxBlocksPerSeq: 2,
      numBlocks: 4,
      scale: 0.35,
    };
    backend.pagedAttention(attention); // the valid baseline
    assertNativeError(
      () => backend.pagedAttention({ ...attention, numKvHeads: 3 }),
      INVALID,
      /expected num_heads \(4\) to be a multiple of num_kv_heads, found 3/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, blockTables: ints([0, 1, 2, 4]) }),
      INVALID,
      /expected block_tables\[1\]\[1\] in \[0, 4\), found 4/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, blockTables: ints([0, -1, 2, 3]) }),
      INVALID,
      /expected block_tables\[0\]\[1\] in \[0, 4\), found -1/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, seqLens: ints([2, 8]) }),
      INVALID,
      /expected seq_lens\[0\] >= its 3 new query tokens, found 2/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, seqLens: ints([5, 9]) }),
      INVALID,
      /expected seq_lens\[1\] <= max_blocks_per_seq \* block_size \(8\), found 9/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, queryStart: ints([0, 5, 4]) }),
      INVALID,
      /expected query_start non-decreasing/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, queryStart: ints([0, 3, 3]) }),
      INVALID,
      /expected query_start\[num_seqs\] == num_tokens \(4\), found 3/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, maxQueryLen: 2 }),
      INVALID,
      /expected at most max_query_len \(2\) new tokens, found 3 in sequence 0/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, maxQueryLen: 5 }),
      INVALID,
      /expected max_query_len in \[1, 4\], found 5/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, qRowStride: 31 }),
      INVALID,
      /expected q_row_stride >= num_heads \* head_dim \(32\), found 31/,
    );
    assertNativeError(
      () => backend.pagedAttention({ ...attention, q: NULL }),
      INVALID,
      /expected q to be non-NULL/,
    );
  });
});

// --- Every instruction-set path

// DENOLLM_CPU_ISA is read once per process, so the lower paths run this whole file again in a
// child process each. Needs --allow-run (as `deno task test` grants); skipped without it, and in
// the children themselves.
const canSpawn = Deno.env.get("DENOLLM_CPU_ISA") === undefined &&
  Deno.permissions.querySync({ name: "run" }).state === "granted";

for (const isa of ["avx2", "generic"]) {
  Deno.test({
    name: `every kernel test passes on the ${isa} path (DENOLLM_CPU_ISA=${isa}, child process)`,
    ignore: !canSpawn || Deno.build.arch !== "x86_64",
    async fn() {
      const file = new URL(import.meta.url).pathname;
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["test", "--allow-read", "--allow-ffi", "--allow-env", file],
        env: { DENOLLM_CPU_ISA: isa, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (code !== 0) {
        const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
        fail(`Expected the ${isa} run to pass, found exit code ${code}:\n${text.slice(-4000)}`);
      }
    },
  });
}
