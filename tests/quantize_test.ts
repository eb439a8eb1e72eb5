// dl_quantize: quality against llama.cpp's own quantizer (tests/fixtures/quant/rmse.json, made by
// tools/llamacpp/quant_blocks.ts), INT8 and INT4 against plain TypeScript references, round trips
// on odd sizes, importance weights, and clear errors for bad input.
import assert from "node:assert/strict";
import { formatByGgufName, FORMATS, matrixBytes } from "../ffi/formats.ts";
import { type DevicePtr, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import {
  fnv1a,
  gaussianSource,
  GGML_QUANT_TYPES,
  quantDatasets,
  rmse,
  uniformSource,
} from "../tools/llamacpp/quant_blocks.ts";
import { withDeviceBuffers } from "./device_buffers.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const RMSE_FIXTURE = new URL("./fixtures/quant/rmse.json", import.meta.url);
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

const NULL = null as unknown as DevicePtr;
const DL_ERR_INVALID_ARGUMENT = 1;

/** Our quality may be at most this much worse than ggml's, per type and data set. */
const RMSE_RATIO_LIMIT = 1.02;

// --- Helpers

function dtypeOf(ggufName: string): DTypeId {
  const format = formatByGgufName(ggufName);
  if (format === undefined) throw new Error(`no format ${ggufName}`);
  return format.id as DTypeId;
}

function quantize(
  dtype: DTypeId,
  src: Float32Array,
  rows: number,
  cols: number,
  importance?: Float32Array,
  on: NativeBackend = backend,
): Uint8Array {
  return withDeviceBuffers(on, (b) => {
    const size = matrixBytes(dtype, rows, cols);
    const dst = b.zeros(size);
    on.quantize({
      dst,
      dstDtype: dtype,
      src: b.from(src),
      rows,
      cols,
      importance: importance ? b.from(importance) : null,
    });
    return b.bytes(dst, size);
  });
}

function dequantize(dtype: DTypeId, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  return withDeviceBuffers(backend, (b) => {
    const dst = b.zeros(rows * cols * 4);
    backend.dequantize({ dst, src: b.from(bytes), srcDtype: dtype, rows, cols });
    return b.f32(dst, rows * cols);
  });
}

function roundTrip(dtype: DTypeId, x: Float32Array, rows: number, cols: number, w?: Float32Array) {
  return dequantize(dtype, quantize(dtype, x, rows, cols, w), rows, cols);
}

function gaussian(n: number, seed: number, std = 1): Float32Array {
  const next = gaussianSource(seed);
  return Float32Array.from({ length: n }, () => std * next());
}

/** sqrt(Σ w (a - b)² / Σ w), w per column of a [rows, cols] matrix. */
function weightedRmse(a: Float32Array, b: Float32Array, w: Float32Array): number {
  let sum = 0, weight = 0;
  for (let i = 0; i < a.length; i++) {
    sum += w[i % w.length] * (a[i] - b[i]) ** 2;
    weight += w[i % w.length];
  }
  return Math.sqrt(sum / weight);
}

/** Round half to even, as the C side's lrintf. */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function assertNativeError(fn: () => void, status: number, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof NativeError, `expected a NativeError, found ${err}`);
    assert.equal(err.status, status, err.message);
    assert.match(err.message, pattern);
    return true;
  });
}

// --- Quality against llama.cpp

interface RmseFixture {
  datasets: Record<string, { rows: number; cols: number; fnv1a: string }>;
  ggml: Record<string, Record<string, number>>;
}

Deno.test("our quantizers are within 1.02x of ggml's RMSE for every GGUF type", async (t) => {
  const fixture: RmseFixture = JSON.parse(await Deno.readTextFile(RMSE_FIXTURE));
  const datasets = await quantDatasets();
  await t.step("the data sets are the ones ggml quantized", () => {
    for (const d of datasets) {
      assert.deepEqual(
        { rows: d.rows, cols: d.cols, fnv1a: fnv1a(d.data) },
        fixture.datasets[d.name],
        d.name,
      );
    }
  });
  const table: Record<string, Record<string, string>> = {};
  for (const type of GGML_QUANT_TYPES) {
    await t.step(type, () => {
      const dtype = dtypeOf(type);
      table[type] = {};
      for (const d of datasets) {
        const ours = rmse(d.data, roundTrip(dtype, d.data, d.rows, d.cols));
        const ggml = fixture.ggml[type][d.name];
        assert.ok(ggml > 0, `${type} ${d.name}: no ggml reference`);
        table[type][d.name] = `${(ours / ggml).toFixed(3)}x`;
        assert.ok(
          ours <= RMSE_RATIO_LIMIT * ggml,
          `${type} on ${d.name}: expected RMSE <= ${RMSE_RATIO_LIMIT} x ggml's ${ggml}, found ${ours}`,
        );
      }
    });
  }
  console.log("our RMSE / ggml's:");
  console.table(table);
});

// --- denollm's formats against TypeScript references

Deno.test("INT8 is per row, symmetric, scale = max|w| / 127", () => {
  const rows = 3, cols = 97;
  const x = gaussian(rows * cols, 11);
  x.fill(0, cols, 2 * cols); // an all-zero row: scale 0, every q 0
  const bytes = quantize(dtypeOf("INT8"), x, rows, cols);
  assert.equal(bytes.length, rows * cols + 4 * rows);
  const q = new Int8Array(bytes.buffer, 0, rows * cols);
  const scales = new DataView(bytes.buffer, rows * cols);
  const expected = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * cols, (r + 1) * cols);
    const amax = row.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const scale = Math.fround(amax / 127);
    assert.equal(scales.getFloat32(4 * r, true), scale, `row ${r} scale`);
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    for (let j = 0; j < cols; j++) {
      const want = Math.max(-127, Math.min(127, roundEven(Math.fround(row[j] * inv)))) | 0;
      assert.equal(q[r * cols + j], want, `row ${r} column ${j}`);
      expected[r * cols + j] = Math.fround(scale * want);
    }
  }
  assert.deepEqual(dequantize(dtypeOf("INT8"), bytes, rows, cols), expected);
});

Deno.test("INT4 is never worse than plain min/max, group by group", () => {
  const rows = 3, cols = 384, group = 128;
  const x = gaussian(rows * cols, 12, 0.02);
  for (let i = 0; i < x.length; i += 37) x[i] *= 10; // outliers
  const y = roundTrip(dtypeOf("INT4"), x, rows, cols);
  for (let g = 0; g < x.length / group; g++) {
    const xs = x.subarray(g * group, (g + 1) * group), ys = y.subarray(g * group, (g + 1) * group);
    const lo = Math.min(...xs), hi = Math.max(...xs);
    const d = Math.f16round((hi - lo) / 15), m = Math.f16round(lo);
    const plain = xs.map((v) => {
      const q = Math.max(0, Math.min(15, roundEven(Math.fround((v - m) / d))));
      return Math.fround(Math.fround(q * d) + m);
    });
    assert.ok(rmse(xs, ys) <= rmse(xs, plain) * (1 + 1e-9), `group ${g}`);
  }
});

// --- Round trips on odd sizes

/** Expected RMSE / std of Gaussian data per type (about 1.3x what the quantizers reach). */
const ROUND_TRIP_BOUNDS: Record<string, number> = {
  Q4_0: 0.1,
  Q4_1: 0.1,
  Q5_0: 0.05,
  Q5_1: 0.05,
  Q8_0: 0.007,
  Q2_K: 0.35,
  Q3_K: 0.18,
  Q4_K: 0.09,
  Q5_K: 0.045,
  Q6_K: 0.022,
  Q8_K: 0.009,
  INT8: 0.015,
  INT4: 0.12,
};

function oddCols(type: string): number[] {
  const blockLen = formatByGgufName(type)!.blockLen;
  if (blockLen === 1) return [97, 288];
  return blockLen === 32 ? [96, 288] : [3 * blockLen, blockLen];
}

Deno.test("quantize then dequantize round-trips within each type's error", async (t) => {
  for (const type of Object.keys(ROUND_TRIP_BOUNDS)) {
    await t.step(type, () => {
      const dtype = dtypeOf(type);
      for (const cols of oddCols(type)) {
        const rows = 3;
        const x = gaussian(rows * cols, cols, 0.5);
        const y = roundTrip(dtype, x, rows, cols);
        const relative = rmse(x, y) / 0.5;
        assert.ok(
          relative <= ROUND_TRIP_BOUNDS[type],
          `${type} [${rows}, ${cols}]: expected RMSE / std <= ${
            ROUND_TRIP_BOUNDS[type]
          }, found ${relative}`,
        );
        // Zeros come back exactly (no NaN from a zero scale).
        const zeros = new Float32Array(rows * cols);
        assert.deepEqual(roundTrip(dtype, zeros, rows, cols), zeros, `${type}: zeros`);
      }
    });
  }
});

Deno.test("values at the limits of f16 and tiny values quantize to finite floats", async (t) => {
  for (const type of Object.keys(ROUND_TRIP_BOUNDS)) {
    await t.step(type, () => {
      const dtype = dtypeOf(type);
      const cols = Math.max(formatByGgufName(type)!.blockLen, 32);
      const x = gaussian(3 * cols, 18);
      for (let i = 0; i < cols; i++) x[i] = i % 2 ? 65504 : -65504 * (i / cols); // huge
      for (let i = cols; i < 2 * cols; i++) x[i] *= 1e-30; // below f16's smallest scale
      const y = roundTrip(dtype, x, 3, cols);
      for (let i = 0; i < y.length; i++) assert.ok(Number.isFinite(y[i]), `${type} element ${i}`);
      // The huge row still quantizes to within its range's resolution.
      const huge = rmse(x.subarray(0, cols), y.subarray(0, cols));
      assert.ok(huge <= 65504 * ROUND_TRIP_BOUNDS[type], `${type}: huge row RMSE ${huge}`);
    });
  }
});

Deno.test("plain formats quantize by conversion", () => {
  const x = gaussian(3 * 5, 13, 3);
  assert.deepEqual(roundTrip(dtypeOf("F32"), x, 3, 5), x);
  assert.deepEqual(roundTrip(dtypeOf("F16"), x, 3, 5), x.map((v) => Math.f16round(v)));
  const bf16 = roundTrip(dtypeOf("BF16"), x, 3, 5);
  for (let i = 0; i < x.length; i++) {
    assert.ok(Math.abs(bf16[i] - x[i]) <= Math.abs(x[i]) * 2 ** -8, `bf16 element ${i}`);
  }
});

Deno.test("Q8_K blocks carry the sums of each 16 values", () => {
  const bytes = quantize(dtypeOf("Q8_K"), gaussian(512, 14), 1, 512);
  const view = new DataView(bytes.buffer);
  for (let b = 0; b < 2; b++) {
    const base = b * 292;
    for (let g = 0; g < 16; g++) {
      let sum = 0;
      for (let l = 0; l < 16; l++) sum += view.getInt8(base + 4 + g * 16 + l);
      assert.equal(view.getInt16(base + 260 + 2 * g, true), sum, `block ${b} group ${g}`);
    }
  }
});

Deno.test("the thread count does not change the bytes", () => {
  const single = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 1 });
  try {
    const rows = 64, cols = 512;
    const x = gaussian(rows * cols, 15, 0.02);
    for (const type of ["Q4_K", "Q6_K", "Q4_0", "INT4", "INT8"]) {
      const dtype = dtypeOf(type);
      assert.deepEqual(
        quantize(dtype, x, rows, cols),
        quantize(dtype, x, rows, cols, undefined, single),
        type,
      );
    }
  } finally {
    single.close();
  }
});

// --- Importance

Deno.test("importance weights lower the weighted error they name", async (t) => {
  const rows = 8, cols = 512;
  const x = gaussian(rows * cols, 16, 0.02);
  const uniform = uniformSource(17);
  // A few columns matter 100x more, as a few input channels of real activations do.
  const w = Float32Array.from({ length: cols }, () => (uniform() < 0.1 ? 100 : 1));
  for (const type of [...GGML_QUANT_TYPES, "INT4"]) {
    await t.step(type, () => {
      const dtype = dtypeOf(type);
      const plain = weightedRmse(x, roundTrip(dtype, x, rows, cols), w);
      const weighted = weightedRmse(x, roundTrip(dtype, x, rows, cols, w), w);
      assert.ok(weighted < plain, `${type}: expected weighted RMSE < ${plain}, found ${weighted}`);
    });
  }
  await t.step("an all-zero importance falls back to equal weights", () => {
    const dtype = dtypeOf("Q4_K");
    const zeros = new Float32Array(cols);
    assert.deepEqual(quantize(dtype, x, rows, cols, zeros), quantize(dtype, x, rows, cols));
  });
});

// --- Errors

Deno.test("bad arguments and values fail with clear errors", async (t) => {
  const q4k = dtypeOf("Q4_K");
  await t.step("cols not a multiple of the block length names the format", () => {
    withDeviceBuffers(backend, (b) => {
      const [dst, src] = [b.zeros(1024), b.zeros(1024)];
      assertNativeError(
        () => backend.quantize({ dst, dstDtype: q4k, src, rows: 1, cols: 100 }),
        DL_ERR_INVALID_ARGUMENT,
        /dl_quantize: expected cols to be a multiple of the q4_k block length 256, found 100/,
      );
      assertNativeError(
        () => backend.dequantize({ dst, src, srcDtype: dtypeOf("Q8_0"), rows: 1, cols: 40 }),
        DL_ERR_INVALID_ARGUMENT,
        /dl_dequantize: expected cols to be a multiple of the q8_0 block length 32, found 40/,
      );
    });
  });
  await t.step("an unknown dtype", () => {
    withDeviceBuffers(backend, (b) => {
      const [dst, src] = [b.zeros(4), b.zeros(4)];
      assertNativeError(
        () => backend.dequantize({ dst, src, srcDtype: 99 as DTypeId, rows: 1, cols: 1 }),
        DL_ERR_INVALID_ARGUMENT,
        new RegExp(`expected src_dtype to be a dl_dtype in \\[0, ${FORMATS.length}\\), found 99`),
      );
    });
  });
  await t.step("non-finite and out-of-range values", () => {
    const x = new Float32Array(512);
    x[300] = NaN;
    assertNativeError(
      () => quantize(q4k, x, 2, 256),
      DL_ERR_INVALID_ARGUMENT,
      /expected finite values in src, found nan at row 1, column 44/,
    );
    x[300] = 1e6;
    assertNativeError(
      () => quantize(q4k, x, 2, 256),
      DL_ERR_INVALID_ARGUMENT,
      /expected values within f16's range .* for q4_k's f16 scales, found 1e\+06 at row 1/,
    );
    // INT8 and Q8_K keep f32 scales, so large finite values are fine there.
    assert.equal(quantize(dtypeOf("INT8"), x, 2, 256).length, 2 * 256 + 8);
  });
  await t.step("negative importance", () => {
    const w = new Float32Array(256);
    w[7] = -1;
    assertNativeError(
      () => quantize(q4k, new Float32Array(256), 1, 256, w),
      DL_ERR_INVALID_ARGUMENT,
      /expected finite importance >= 0, found -1 at column 7/,
    );
  });
  await t.step("shapes, pointers and overlap", () => {
    assertNativeError(
      () => backend.quantize({ dst: NULL, dstDtype: q4k, src: NULL, rows: -1, cols: 256 }),
      DL_ERR_INVALID_ARGUMENT,
      /expected rows >= 0, found -1/,
    );
    assertNativeError(
      () => backend.quantize({ dst: NULL, dstDtype: q4k, src: NULL, rows: 1, cols: 0 }),
      DL_ERR_INVALID_ARGUMENT,
      /expected cols > 0, found 0/,
    );
    withDeviceBuffers(backend, (b) => {
      const src = b.zeros(1024);
      assertNativeError(
        () => backend.quantize({ dst: NULL, dstDtype: q4k, src, rows: 1, cols: 256 }),
        DL_ERR_INVALID_ARGUMENT,
        /expected dst to be non-NULL/,
      );
    });
    // Nothing to do: NULL buffers are allowed.
    backend.quantize({ dst: NULL, dstDtype: q4k, src: NULL, rows: 0, cols: 256 });
    backend.dequantize({ dst: NULL, src: NULL, srcDtype: q4k, rows: 0, cols: 256 });
    withDeviceBuffers(backend, (b) => {
      const buf = b.zeros(2048);
      assertNativeError(
        () => backend.dequantize({ dst: buf, src: buf, srcDtype: q4k, rows: 1, cols: 256 }),
        DL_ERR_INVALID_ARGUMENT,
        /expected src not to overlap dst/,
      );
    });
    assertNativeError(
      () => backend.quantize({ dst: NULL, dstDtype: q4k, src: NULL, rows: 2 ** 60, cols: 256 }),
      DL_ERR_INVALID_ARGUMENT,
      /rows \* cols .* is too large/,
    );
  });
});
