// Tests dl_matmul on the W8A8 and 2:4 formats (W8A8, W8A8_MIXED, F16_2_4, INT8_2_4, W8A8_2_4,
// INT4_2_4) at odd sizes against a reference written here from ffi/denollm.h's layout comments:
// the packed bytes decoded, the activations quantized as the contract says (per token for the W8A8
// formats, q8 blocks of 32 with d rounded to f16 for INT8_2_4, f32 for F16_2_4 and INT4_2_4),
// summed in f64. The int32 sums of the W8A8 formats are exact, so what is left is f32 rounding of
// the scales' product and, for the f32 formats, of the sums (|err| <= 1e-5 * sum |w x| + 1e-6).
// Each lower instruction set (DENOLLM_CPU_ISA=avx2, generic) runs this file again in a child.
import assert from "node:assert/strict";
import { DType, type DTypeId, NativeBackend, NativeError } from "../ffi/native.ts";
import { formatInfo, matrixBytes } from "../ffi/formats.ts";
import { withDeviceBuffers } from "./device_buffers.ts";
import { f16BitsToF32, f32ToF16Bits, mulberry32, randomF32 } from "./kernel_reference.ts";
import {
  is2of4,
  MIXED_OUTLIERS,
  NO_OUTLIER,
  pack2of4,
  packW8a8,
  packW8a8Mixed,
  prune2of4,
  type SparseFormat,
} from "../src/model/sparsity.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

const f32 = Math.fround;

/** Round half to even, as rintf in the default rounding mode. */
function rint(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The W8A8 contract's activation row: scale and int8 values, outlier columns left out. */
function perToken(x: Float32Array, skip: ReadonlySet<number>): { scale: number; q: Int8Array } {
  let amax = 0;
  x.forEach((v, j) => {
    if (!skip.has(j)) amax = Math.max(amax, Math.abs(v));
  });
  const id = amax > 0 ? f32(127 / amax) : 0;
  const q = new Int8Array(x.length);
  x.forEach((v, j) => {
    q[j] = skip.has(j) ? 0 : rint(f32(v * id));
  });
  return { scale: f32(amax / 127), q };
}

/** ggml-style q8 blocks of 32: d = f16(amax / 127), q = rint(x * (127 / amax)). */
function q8Blocks(x: Float32Array): { d: number[]; q: Int8Array } {
  const d: number[] = [];
  const q = new Int8Array(x.length);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 32 * b; j < 32 * b + 32; j++) amax = Math.max(amax, Math.abs(x[j]));
    const id = amax > 0 ? f32(127 / amax) : 0;
    for (let j = 32 * b; j < 32 * b + 32; j++) q[j] = rint(f32(x[j] * id));
    d.push(f16BitsToF32(f32ToF16Bits(f32(amax / 127))));
  }
  return { d, q };
}

/** The dense weights a packed 2:4 row stores (pruned elements 0), and its int values and scale. */
function decode2of4(
  bytes: Uint8Array,
  format: SparseFormat,
  rows: number,
  cols: number,
): { dense: Float64Array; ints?: Int8Array; scales?: Float64Array } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dense = new Float64Array(rows * cols);
  const nib = (posAt: number, grp: number) => (bytes[posAt + (grp >> 1)] >> (4 * (grp & 1))) & 15;
  if (format === "f16_2_4") {
    for (let b = 0; b < rows * cols / 32; b++) {
      for (let grp = 0; grp < 8; grp++) {
        const n = nib(36 * b + 32, grp);
        dense[32 * b + 4 * grp + (n & 3)] = f16BitsToF32(view.getUint16(36 * b + 4 * grp, true));
        dense[32 * b + 4 * grp + (n >> 2)] = f16BitsToF32(
          view.getUint16(36 * b + 4 * grp + 2, true),
        );
      }
    }
    return { dense };
  }
  if (format === "int4_2_4") {
    for (let b = 0; b < rows * cols / 128; b++) {
      const d = f16BitsToF32(view.getUint16(52 * b, true));
      const m = f16BitsToF32(view.getUint16(52 * b + 2, true));
      for (let grp = 0; grp < 32; grp++) {
        const n = nib(52 * b + 36, grp);
        const q = bytes[52 * b + 4 + grp];
        dense[128 * b + 4 * grp + (n & 3)] = f32(f32(d * (q & 15)) + m);
        dense[128 * b + 4 * grp + (n >> 2)] = f32(f32(d * (q >> 4)) + m);
      }
    }
    return { dense };
  }
  const rowBytes = (cols / 32) * 20;
  const dataBytes = format === "w8a8_2_4" ? 8 : 4;
  const ints = new Int8Array(rows * cols);
  const scales = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    scales[r] = view.getFloat32(rows * rowBytes + dataBytes * r, true);
    for (let b = 0; b < cols / 32; b++) {
      const at = r * rowBytes + 20 * b;
      for (let grp = 0; grp < 8; grp++) {
        const n = nib(at + 16, grp);
        ints[r * cols + 32 * b + 4 * grp + (n & 3)] = view.getInt8(at + 2 * grp);
        ints[r * cols + 32 * b + 4 * grp + (n >> 2)] = view.getInt8(at + 2 * grp + 1);
      }
    }
  }
  for (let i = 0; i < rows * cols; i++) dense[i] = ints[i] * scales[Math.floor(i / cols)];
  return { dense, ints, scales };
}

interface Case {
  m: number;
  n: number;
  k: number;
  seed: number;
}

/** Runs dl_matmul with bias and a padded out_row_stride; returns [m, n] results. */
function runMatmul(
  wBytes: Uint8Array,
  dtype: DTypeId,
  x: Float32Array,
  bias: Float32Array,
  c: Case,
): Float32Array {
  assert.equal(wBytes.length, matrixBytes(dtype, c.n, c.k), `${formatInfo(dtype).name} bytes`);
  const stride = c.n + 3;
  return withDeviceBuffers(backend, (buf) => {
    const out = buf.zeros(c.m * stride * 4);
    backend.matmul({
      out,
      x: buf.from(x),
      w: buf.from(wBytes),
      wDtype: dtype,
      bias: buf.from(bias),
      m: c.m,
      n: c.n,
      k: c.k,
      outRowStride: stride,
    });
    const all = buf.f32(out, c.m * stride);
    const result = new Float32Array(c.m * c.n);
    for (let i = 0; i < c.m; i++) result.set(all.subarray(i * stride, i * stride + c.n), i * c.n);
    return result;
  });
}

function checkClose(got: Float32Array, want: Float64Array, mag: Float64Array, what: string) {
  for (let i = 0; i < want.length; i++) {
    const tol = 1e-5 * mag[i] + 1e-6;
    assert.ok(
      Math.abs(got[i] - want[i]) <= tol,
      `${what}: output ${i}: expected ${want[i]} (±${tol}), found ${got[i]}`,
    );
  }
}

/** Random weights with a few large input channels, and activations with outliers too. */
function problem(c: Case, outlierCols: number[]) {
  const rand = mulberry32(c.seed);
  const w = randomF32(rand, c.n * c.k, -0.5, 0.5);
  const x = randomF32(rand, c.m * c.k, -1, 1);
  for (const j of outlierCols) for (let i = 0; i < c.m; i++) x[i * c.k + j] *= 60;
  const bias = randomF32(rand, c.n, -0.1, 0.1);
  return { w, x, bias };
}

const DENSE_CASES: Case[] = [
  { m: 1, n: 1, k: 1, seed: 1 },
  { m: 3, n: 5, k: 31, seed: 2 },
  { m: 5, n: 17, k: 33, seed: 3 },
  { m: 7, n: 33, k: 95, seed: 4 },
  { m: 4, n: 18, k: 130, seed: 5 },
  { m: 9, n: 3, k: 257, seed: 6 },
  // k over the VNNI kernel's chunk of 1024, with a partial last step: three chunks.
  { m: 6, n: 7, k: 2100, seed: 7 },
];

Deno.test("w8a8: per-token int8 activations, int32 sums, at odd sizes", () => {
  for (const c of DENSE_CASES) {
    const { w, x, bias } = problem(c, []);
    const bytes = packW8a8(w, c.n, c.k);
    const q = new Int8Array(bytes.buffer, 0, c.n * c.k);
    const scales = new DataView(bytes.buffer, c.n * c.k);
    for (let r = 0; r < c.n; r++) {
      let sum = 0;
      for (let j = 0; j < c.k; j++) sum += q[r * c.k + j];
      assert.equal(scales.getInt32(8 * r + 4, true), sum, "the row sum W8A8 stores");
    }
    const want = new Float64Array(c.m * c.n);
    const mag = new Float64Array(c.m * c.n);
    for (let i = 0; i < c.m; i++) {
      const a = perToken(x.subarray(i * c.k, (i + 1) * c.k), new Set());
      for (let r = 0; r < c.n; r++) {
        let acc = 0;
        for (let j = 0; j < c.k; j++) acc += a.q[j] * q[r * c.k + j];
        const sw = scales.getFloat32(8 * r, true);
        want[i * c.n + r] = f32(acc) * f32(a.scale * sw) + bias[r];
        mag[i * c.n + r] = Math.abs(acc * a.scale * sw) + Math.abs(bias[r]);
      }
    }
    checkClose(runMatmul(bytes, DType.W8A8, x, bias, c), want, mag, `w8a8 ${JSON.stringify(c)}`);
  }
});

Deno.test("w8a8_mixed: outlier channels in f16 weights times f32 activations, the rest W8A8", () => {
  for (const c of DENSE_CASES) {
    const rand = mulberry32(c.seed + 100);
    const count = Math.min(c.k - 1, 1 + Math.floor(rand() * MIXED_OUTLIERS));
    const cols = [...new Set(Array.from({ length: count }, () => Math.floor(rand() * c.k)))];
    const { w, x, bias } = problem(c, cols);
    const bytes = packW8a8Mixed(w, c.n, c.k, cols);
    const q = new Int8Array(bytes.buffer, 0, c.n * c.k);
    const data = new DataView(bytes.buffer, c.n * c.k);
    const want = new Float64Array(c.m * c.n);
    const mag = new Float64Array(c.m * c.n);
    for (let i = 0; i < c.m; i++) {
      const xi = x.subarray(i * c.k, (i + 1) * c.k);
      const a = perToken(xi, new Set(cols));
      for (let r = 0; r < c.n; r++) {
        let acc = 0;
        for (let j = 0; j < c.k; j++) acc += a.q[j] * q[r * c.k + j];
        const sw = data.getFloat32(72 * r, true);
        let outl = 0;
        for (let t = 0; t < MIXED_OUTLIERS; t++) {
          const id = data.getUint16(72 * r + 8 + 2 * t, true);
          const wv = f16BitsToF32(data.getUint16(72 * r + 40 + 2 * t, true));
          if (t < cols.length) assert.equal(id, cols[t]);
          else assert.equal(id, NO_OUTLIER);
          if (id !== NO_OUTLIER) outl += xi[id] * wv;
        }
        want[i * c.n + r] = f32(acc) * f32(a.scale * sw) + outl + bias[r];
        mag[i * c.n + r] = Math.abs(acc * a.scale * sw) + Math.abs(outl) + Math.abs(bias[r]);
      }
    }
    checkClose(runMatmul(bytes, DType.W8A8_MIXED, x, bias, c), want, mag, `mixed ${cols}`);
  }
});

Deno.test("w8a8_mixed refuses an outlier id outside [0, k)", () => {
  const c = { m: 2, n: 3, k: 40, seed: 9 };
  const { w, x, bias } = problem(c, []);
  const bytes = packW8a8Mixed(w, c.n, c.k, [3]);
  new DataView(bytes.buffer, c.n * c.k).setUint16(8, 40, true);
  assert.throws(() => runMatmul(bytes, DType.W8A8_MIXED, x, bias, c), (e: unknown) => {
    assert.ok(e instanceof NativeError);
    assert.match(e.message, /outlier column ids distinct and below k = 40.*found 40/);
    return true;
  });
});

const SPARSE: { format: SparseFormat; dtype: DTypeId; block: number }[] = [
  { format: "f16_2_4", dtype: DType.F16_2_4, block: 32 },
  { format: "int8_2_4", dtype: DType.INT8_2_4, block: 32 },
  { format: "w8a8_2_4", dtype: DType.W8A8_2_4, block: 32 },
  { format: "int4_2_4", dtype: DType.INT4_2_4, block: 128 },
];

Deno.test("2:4 formats: kernels against the decoded blocks at odd sizes", async (t) => {
  for (const { format, dtype, block } of SPARSE) {
    await t.step(format, () => {
      for (
        const c of [
          { m: 1, n: 1, k: block, seed: 11 },
          { m: 3, n: 5, k: 3 * block, seed: 12 },
          { m: 5, n: 17, k: block, seed: 13 },
          { m: 6, n: 33, k: 5 * block, seed: 14 },
          // 8 rows and more take the panel path of the VNNI W8A8_2_4 kernel.
          { m: 9, n: 21, k: 3 * block, seed: 15 },
          { m: 10, n: 5, k: (block === 32 ? 70 : 9) * block, seed: 16 },
        ]
      ) {
        const { w, x, bias } = problem(c, []);
        prune2of4(w, c.k);
        // A group with fewer than 2 non-zeros still packs (the zeros take the free slots).
        w[0] = 0;
        w[1] = 0;
        assert.ok(is2of4(w, c.k));
        const bytes = pack2of4(w, c.n, c.k, format);
        const decoded = decode2of4(bytes, format, c.n, c.k);
        const want = new Float64Array(c.m * c.n);
        const mag = new Float64Array(c.m * c.n);
        for (let i = 0; i < c.m; i++) {
          const xi = x.subarray(i * c.k, (i + 1) * c.k);
          const tok = perToken(xi, new Set());
          const blocks = q8Blocks(xi);
          for (let r = 0; r < c.n; r++) {
            let v = 0;
            let m = 0;
            if (format === "w8a8_2_4") {
              let acc = 0;
              for (let j = 0; j < c.k; j++) acc += tok.q[j] * decoded.ints![r * c.k + j];
              v = f32(acc) * f32(tok.scale * decoded.scales![r]);
              m = Math.abs(v);
            } else if (format === "int8_2_4") {
              for (let b = 0; b < c.k / 32; b++) {
                let acc = 0;
                for (let j = 32 * b; j < 32 * b + 32; j++) {
                  acc += blocks.q[j] * decoded.ints![r * c.k + j];
                }
                v += acc * blocks.d[b];
                m += Math.abs(acc * blocks.d[b]);
              }
              v *= decoded.scales![r];
              m *= decoded.scales![r];
            } else {
              for (let j = 0; j < c.k; j++) {
                v += decoded.dense[r * c.k + j] * xi[j];
                m += Math.abs(decoded.dense[r * c.k + j] * xi[j]);
              }
            }
            want[i * c.n + r] = v + bias[r];
            mag[i * c.n + r] = m + Math.abs(bias[r]);
          }
        }
        checkClose(
          runMatmul(bytes, dtype, x, bias, c),
          want,
          mag,
          `${format} ${JSON.stringify(c)}`,
        );
        // Pruned elements decode to 0 (in groups with two non-zeros: a kept 0 of INT4_2_4 is d*q+m).
        for (let j = 0; j < c.n * c.k; j += 4) {
          const group = [0, 1, 2, 3].filter((p) => w[j + p] !== 0);
          if (group.length !== 2) continue;
          for (let p = 0; p < 4; p++) {
            if (w[j + p] === 0) assert.equal(decoded.dense[j + p], 0, `${format}: pruned ${j + p}`);
          }
        }
      }
    });
  }
});

Deno.test("2:4 formats refuse rows that are not whole blocks", () => {
  withDeviceBuffers(backend, (buf) => {
    assert.throws(
      () =>
        backend.matmul({
          out: buf.zeros(64),
          x: buf.zeros(64 * 4),
          w: buf.zeros(256),
          wDtype: DType.INT8_2_4,
          m: 1,
          n: 1,
          k: 48,
        }),
      /int8_2_4/,
    );
  });
});

// DENOLLM_CPU_ISA is read once per process, so the lower paths run this file again in a child
// process each (needs --allow-run; skipped without it, and in the children).
const canSpawn = Deno.env.get("DENOLLM_CPU_ISA") === undefined &&
  Deno.permissions.querySync({ name: "run" }).state === "granted" && Deno.build.arch === "x86_64";

Deno.test({
  name: "every instruction set passes the same checks (children with DENOLLM_CPU_ISA)",
  ignore: !canSpawn,
  fn: async (t) => {
    for (const isa of ["avx2", "generic"]) {
      await t.step(isa, async () => {
        const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
          args: [
            "test",
            "--allow-read",
            "--allow-ffi",
            "--allow-env",
            new URL(import.meta.url).pathname,
          ],
          env: { DENOLLM_CPU_ISA: isa, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
        assert.equal(code, 0, `DENOLLM_CPU_ISA=${isa}:\n${text}`);
        assert.match(text, /ok \| 5 passed/);
      });
    }
  },
});
