// The CUDA build's dl_matmul on the W8A8 and 2:4 formats (W8A8, W8A8_MIXED, W8A8_2_4 with int8
// activations; F16_2_4, INT8_2_4, INT4_2_4 with f32 ones) against the CPU build, on odd sizes, then
// greedy generation on stories260K with --quantization w8a8 and --sparsity 2:4 on both backends.
//
// Not picked up by `deno task test` (no _test suffix); tests/gpu/emu.sh runs it under the dl_emu
// shim (in CI) and tests/gpu/run.sh on a GPU:
//   deno test -A tests/gpu/compress_kernels.gpu.ts
// Environment as tests/gpu/cuda_kernels.gpu.ts: DENOLLM_GPU_TEST_LIBRARY picks the device library,
// DENOLLM_GPU_TEST_BACKEND=cpu runs the "device" side on the CPU build.
//
// Weights come from the loader's own packers (src/model/sparsity.ts) on random floats, pruned to
// 2:4 for the sparse formats. Tolerances, |device - expected| must not exceed, with
// scale = sum_k |x w| + |bias|:
// - the W8A8 formats against the CPU build: 1e-6 * scale + 1e-6. Both quantize each activation row
//   with the same IEEE operations and sum int8 products exactly in int32, so only the f32 epilogue
//   (and W8A8_MIXED's 16 outlier products) may round differently.
// - the f32-activation 2:4 formats against the CPU build's f32 matmul of the decoded dense weights
//   (decoded here from ffi/denollm.h's layout): gemv (m <= 8) 4e-5 * scale + 1e-6, tiled WMMA
//   6e-4 * scale + 1e-6 (weights rounded to f16, x split into two f16 halves), as
//   quant_kernels.gpu.ts; and against the CPU build's own kernel: the same, except INT8_2_4 whose
//   CPU kernel quantizes x to int8 per block of 32 (1e-2 * scale + 1e-5).
import { assertClose } from "../assert_close.ts";
import { stridedMatmul, withDeviceBuffers } from "../device_buffers.ts";
import { formatInfo, matrixBytes } from "../../ffi/formats.ts";
import { DType, type DTypeId, NativeBackend, NativeError, offset } from "../../ffi/native.ts";
import { LLM } from "../../src/engine/llm.ts";
import { loadModel } from "../../src/model/load.ts";
import {
  pack2of4,
  packW8a8,
  packW8a8Mixed,
  prune2of4,
  type SparseFormat,
} from "../../src/model/sparsity.ts";
import { GREEDY } from "../../src/sampling.ts";
import * as ref from "../kernel_reference.ts";
import assert from "node:assert/strict";

const DEVICE_BACKEND = (Deno.env.get("DENOLLM_GPU_TEST_BACKEND") ?? "cuda") as "cpu" | "cuda";
const MODEL_DIR = `${
  Deno.env.get("DENOLLM_STORIES260K") ??
    new URL("../../../shared/models/stories260K", import.meta.url).pathname
}/hf`;
const cpu = NativeBackend.open({ backend: "cpu", numThreads: 0 });
const gpu = NativeBackend.open({
  backend: DEVICE_BACKEND,
  libraryPath: Deno.env.get("DENOLLM_GPU_TEST_LIBRARY"),
});
globalThis.addEventListener("unload", () => {
  gpu.close();
  cpu.close();
});

const fr = Math.fround;

interface Case {
  m: number;
  n: number;
  k: number;
  stride: number;
  withBias: boolean;
}

/** m over gemv and both sides of the tile sizes; odd n; a stride past n; the given k. */
function cases(ks: number[]): Case[] {
  const out: Case[] = [];
  for (const [i, m] of [1, 3, 8, 9, 17, 33].entries()) {
    const k = ks[i % ks.length];
    out.push({ m, n: 67, k, stride: 67, withBias: m % 2 === 1 });
  }
  out.push({ m: 5, n: 13, k: ks.at(-1)!, stride: 17, withBias: true });
  out.push({ m: 70, n: 13, k: ks[0], stride: 17, withBias: false });
  return out;
}

/**
 * Activation rows: random in [-1, 1], one row all zeros (a zero scale), one with a large value
 * (most of its row quantizes to small integers), and exact halves of an int8 step (ties).
 */
function activations(rand: () => number, m: number, k: number): Float32Array {
  const x = ref.randomF32(rand, m * k);
  if (m > 2) x.fill(0, k, 2 * k);
  if (m > 3) x[3 * k + (k >> 1)] = 40;
  if (m > 4) {
    for (let j = 0; j < k; j++) x[4 * k + j] = j === 0 ? 1 : Math.round(rand() * 254 - 127) / 254;
  }
  return x;
}

/** dl_matmul on one backend; returns the n columns of each row and checks the gaps kept NaN. */
function runMatmul(
  backend: NativeBackend,
  dtype: DTypeId,
  w: Uint8Array,
  x: Float32Array,
  bias: Float32Array | null,
  c: Case,
): Float32Array {
  assert.equal(w.length, matrixBytes(dtype, c.n, c.k), `${formatInfo(dtype).name} bytes`);
  return stridedMatmul(backend, dtype, w, x, bias, c);
}

/** out = x · wᵀ (+ bias) of f32 values on the CPU build's f32 path. */
function f32Matmul(
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | null,
  c: Case,
): Float32Array {
  const bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  return runMatmul(cpu, DType.F32, bytes, x, bias, { ...c, stride: c.n });
}

/** sum_k |x w| + |bias| per output, the scale of every tolerance here. */
function errorScale(x: Float32Array, w: Float32Array, bias: Float32Array | null, c: Case) {
  return f32Matmul(absolute(x), absolute(w), bias ? absolute(bias) : null, c);
}

function absolute(v: Float32Array): Float32Array {
  return Float32Array.from(v, Math.abs);
}

/** Half the int8 step of each x's block of 32 (max |x| / 254), the q8 rounding's largest error. */
function halfSteps(x: Float32Array, k: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let at = 0; at < x.length; at += 32) {
    let amax = 0;
    for (let j = at; j < at + 32; j++) amax = Math.max(amax, Math.abs(x[j]));
    out.fill(amax / 254, at, at + 32);
  }
  assert.equal(k % 32, 0);
  return out;
}

/** Random weights pruned to 2:4 (two of each group of 4 kept by magnitude). */
function sparseWeights(rand: () => number, n: number, k: number): Float32Array {
  const w = ref.randomF32(rand, n * k);
  prune2of4(w, k);
  return w;
}

/** The dense f32 weights a packed weight-only 2:4 matrix stands for (pruned elements 0). */
function decode2of4(bytes: Uint8Array, format: SparseFormat, n: number, k: number): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = (at: number) => ref.f16BitsToF32(view.getUint16(at, true));
  const dense = new Float32Array(n * k);
  const nib = (posAt: number, grp: number) => (bytes[posAt + (grp >> 1)] >> (4 * (grp & 1))) & 15;
  const place = (at: number, n4: number, v0: number, v1: number) => {
    dense[at + (n4 & 3)] = v0;
    dense[at + (n4 >> 2)] = v1;
  };
  if (format === "f16_2_4") {
    for (let b = 0; b < n * k / 32; b++) {
      for (let g = 0; g < 8; g++) {
        place(32 * b + 4 * g, nib(36 * b + 32, g), h(36 * b + 4 * g), h(36 * b + 4 * g + 2));
      }
    }
  } else if (format === "int4_2_4") {
    for (let b = 0; b < n * k / 128; b++) {
      const d = h(52 * b), m = h(52 * b + 2);
      for (let g = 0; g < 32; g++) {
        const q = bytes[52 * b + 4 + g];
        place(
          128 * b + 4 * g,
          nib(52 * b + 36, g),
          fr(fr(d * (q & 15)) + m),
          fr(fr(d * (q >> 4)) + m),
        );
      }
    }
  } else {
    const rowBytes = k / 32 * 20;
    for (let r = 0; r < n; r++) {
      const scale = view.getFloat32(n * rowBytes + 4 * r, true);
      for (let b = 0; b < k / 32; b++) {
        const at = r * rowBytes + 20 * b;
        for (let g = 0; g < 8; g++) {
          const q0 = view.getInt8(at + 2 * g), q1 = view.getInt8(at + 2 * g + 1);
          place(r * k + 32 * b + 4 * g, nib(at + 16, g), fr(scale * q0), fr(scale * q1));
        }
      }
    }
  }
  return dense;
}

// --- W8A8 formats: int8 activations, exact int32 sums

Deno.test("matmul: W8A8, W8A8_MIXED and W8A8_2_4, dp4a gemv and int8 WMMA tiles, equal the CPU build", () => {
  const rand = ref.mulberry32(1101);
  const worst: Record<string, number> = {};
  const formats: [DTypeId, number[]][] = [
    [DType.W8A8, [37, 208, 333, 96]], // k % 16 != 0 (byte path) and == 0 (128-bit loads)
    [DType.W8A8_MIXED, [160, 37, 208]],
    [DType.W8A8_2_4, [96, 160, 224]], // whole blocks of 32, not of the 64 of a k slice
  ];
  for (const [dtype, ks] of formats) {
    for (const c of cases(ks)) {
      const { m, n, k } = c;
      const w = dtype === DType.W8A8_2_4 ? sparseWeights(rand, n, k) : ref.randomF32(rand, n * k);
      const outliers = [k - 1, 0, 5, Math.floor(k / 2), 17].filter((v, i, a) => a.indexOf(v) === i);
      const bytes = dtype === DType.W8A8
        ? packW8a8(w, n, k)
        : dtype === DType.W8A8_MIXED
        ? packW8a8Mixed(w, n, k, outliers)
        : pack2of4(w, n, k, "w8a8_2_4");
      const x = activations(rand, m, k);
      if (dtype === DType.W8A8_MIXED) {
        // The outlier channels far above the rest, as LLM.int8() finds them.
        for (let i = 0; i < m; i++) for (const o of outliers) x[i * k + o] *= 30;
      }
      const bias = c.withBias ? ref.randomF32(rand, n) : null;
      const got = runMatmul(gpu, dtype, bytes, x, bias, c);
      const want = runMatmul(cpu, dtype, bytes, x, bias, { ...c, stride: n });
      const scale = errorScale(x, w, bias, c);
      const label = `matmul ${formatInfo(dtype).name} m ${m} n ${n} k ${k} stride ${c.stride}${
        bias ? " bias" : ""
      }`;
      const name = formatInfo(dtype).name;
      worst[name] = Math.max(
        worst[name] ?? 0,
        assertClose(got, want, (i) => 1e-6 * scale[i] + 1e-6, label),
      );
    }
  }
  const parts = Object.entries(worst).map(([name, w]) => `${name} ${(w * 100).toFixed(1)}%`);
  console.log(`  worst error: ${parts.join(", ")} of tolerance`);
});

// --- Weight-only 2:4 formats: f32 activations

Deno.test("matmul: F16_2_4, INT8_2_4 and INT4_2_4, gemv and tiled WMMA, against f32 and the CPU build", () => {
  const rand = ref.mulberry32(1102);
  const worst = { gemv: 0, wmma: 0 };
  const formats: [DTypeId, SparseFormat, number[]][] = [
    [DType.F16_2_4, "f16_2_4", [96, 160, 224]],
    [DType.INT8_2_4, "int8_2_4", [160, 96]],
    [DType.INT4_2_4, "int4_2_4", [384, 128]],
  ];
  for (const [dtype, format, ks] of formats) {
    for (const c of cases(ks)) {
      const { m, n, k } = c;
      const bytes = pack2of4(sparseWeights(rand, n, k), n, k, format);
      const dense = decode2of4(bytes, format, n, k);
      const x = activations(rand, m, k);
      const bias = c.withBias ? ref.randomF32(rand, n) : null;
      const got = runMatmul(gpu, dtype, bytes, x, bias, c);
      const scale = errorScale(x, dense, bias, c);
      const path = m <= 8 ? "gemv" : "wmma";
      const rel = path === "gemv" ? 4e-5 : 6e-4;
      const label = `matmul ${format} m ${m} n ${n} k ${k} stride ${c.stride}${
        bias ? " bias" : ""
      }`;
      worst[path] = Math.max(
        worst[path],
        assertClose(got, f32Matmul(x, dense, bias, c), (i) => rel * scale[i] + 1e-6, label),
      );
      // INT8_2_4's CPU kernel rounds each x to its block's int8 step: at most half a step each.
      const steps = dtype === DType.INT8_2_4
        ? f32Matmul(halfSteps(x, k), absolute(dense), null, c)
        : null;
      assertClose(
        got,
        runMatmul(cpu, dtype, bytes, x, bias, { ...c, stride: n }),
        (i) => (steps ? 1.01 * steps[i] + 1e-5 * scale[i] + 1e-5 : rel * scale[i] + 1e-6),
        `${label} vs the CPU build's kernel`,
      );
    }
  }
  console.log(
    `  worst error: gemv ${(worst.gemv * 100).toFixed(1)}%, wmma ${
      (worst.wmma * 100).toFixed(1)
    }% of tolerance`,
  );
});

Deno.test("matmul: bad W8A8 and 2:4 shapes fail as on the CPU build, naming the format", () => {
  const messages = [cpu, gpu].map((backend) =>
    withDeviceBuffers(backend, (s) => {
      const buf = s.zeros(1 << 20);
      const attempt = (dtype: DTypeId, k: number) => {
        try {
          backend.matmul({
            out: buf,
            x: offset(buf, 1 << 19),
            w: buf,
            wDtype: dtype,
            m: 2,
            n: 3,
            k,
          });
          return "ok";
        } catch (error) {
          if (!(error instanceof NativeError)) throw error;
          return error.message;
        }
      };
      return [
        attempt(DType.W8A8_2_4, 100),
        attempt(DType.INT4_2_4, 96),
        // Beyond the exact int32 sum (x of 2 rows of 131104 floats fits the buffer's second half).
        withDeviceBuffers(backend, (t) => {
          const big = t.zeros(2 * 131104 * 4 + 3 * 131104 + 64);
          try {
            backend.matmul({
              out: buf,
              x: big,
              w: offset(big, 2 * 131104 * 4),
              wDtype: DType.W8A8,
              m: 2,
              n: 3,
              k: 131104,
            });
            return "ok";
          } catch (error) {
            if (!(error instanceof NativeError)) throw error;
            return error.message;
          }
        }),
      ];
    })
  );
  assert.match(
    messages[1][0],
    /expected k to be a multiple of the w8a8_2_4 block length 32, found 100/,
  );
  assert.match(
    messages[1][1],
    /expected k to be a multiple of the int4_2_4 block length 128, found 96/,
  );
  assert.match(messages[1][2], /w8a8 needs k <= 131072 for an exact int32 sum, found 131104/);
  assert.deepEqual(messages[1], messages[0], "the same messages as the CPU build");
});

// --- Generation on stories260K

async function greedyTokens(
  backend: NativeBackend,
  options: { quantization?: string; sparsity?: string },
): Promise<{ tokens: number[]; compression: string }> {
  const loaded = await loadModel(backend, MODEL_DIR, { showProgress: false, ...options });
  const llm = LLM.over(backend, loaded, { blockSize: 5, numKvBlocks: 40 });
  try {
    const result = llm.generate({
      promptIds: loaded.tokenizer.encode("Once upon a time"),
      maxTokens: 48,
      sampling: GREEDY,
      ignoreEos: true,
    });
    return { tokens: result.tokenIds, compression: loaded.compression ?? "" };
  } finally {
    llm.release();
    loaded.release();
  }
}

// The W8A8 formats and F16_2_4 compute what the CPU build does (the same int8 activations, or f32
// ones): all 48 tokens must agree. INT8_2_4 takes f32 activations on CUDA where the CPU build
// quantizes them per block of 32, so greedy decoding may part late: the first 16 must agree.
for (
  const [options, numEqual] of [
    [{ quantization: "w8a8" }, 48],
    [{ quantization: "w8a8", sparsity: "2:4" }, 48],
    [{ sparsity: "2:4" }, 48],
    [{ quantization: "int8", sparsity: "2:4" }, 16],
  ] as const
) {
  const flags = Object.entries(options).map(([key, value]) => `--${key} ${value}`).join(" ");
  Deno.test(`stories260K: greedy with ${flags}, the first ${numEqual} device tokens equal the CPU's`, async () => {
    const expected = await greedyTokens(cpu, options);
    const actual = await greedyTokens(gpu, options);
    console.log(`  ${actual.compression}`);
    assert.equal(actual.compression, expected.compression);
    const parted = actual.tokens.findIndex((t, i) => t !== expected.tokens[i]);
    console.log(`  ${parted === -1 ? "all 48" : `the first ${parted}`} tokens equal`);
    if (parted !== -1 && parted < numEqual) {
      throw new Error(
        `${flags}: device tokens ${JSON.stringify(actual.tokens)}\n  cpu tokens ${
          JSON.stringify(expected.tokens)
        }`,
      );
    }
  });
}
