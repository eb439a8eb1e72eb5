// GPU speed check of the quantized matmul kernels (not a test): the dequantizing gemv (m = 1 and
// 8) as GB/s of weight bytes against an f32 device copy measured in the same run, and the tiled
// WMMA kernel (m = 512) as TFLOP/s against the f16-weight WMMA matmul on the same shape. Medians
// of 3 timed loops. Random blocks: speed does not depend on the values.
//
//   deno run -A tests/gpu/quant_bench.ts [--backend cuda] [--n 4096] [--k 4096] [--copy-mib 256]
//       [--library build/emu/libdenollm_cuda_emu.so]   (another build of the library, for checking)
import { parseArgs } from "node:util";
import { formatInfo, matrixBytes } from "../../ffi/formats.ts";
import { DType, type DTypeId, NativeBackend } from "../../ffi/native.ts";
import { withDeviceBuffers } from "../device_buffers.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    backend: { type: "string", default: "cuda" },
    n: { type: "string", default: "4096" },
    k: { type: "string", default: "4096" },
    "copy-mib": { type: "string", default: "256" },
    library: { type: "string" },
  },
});
const n = Number(v.n), k = Number(v.k);
const backend = NativeBackend.open({
  backend: v.backend as "cpu" | "cuda",
  libraryPath: v.library,
});
const FORMATS: DTypeId[] = [DType.Q4_0, DType.Q8_0, DType.Q4_K, DType.Q6_K, DType.INT8, DType.INT4];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Median seconds per call of `body` over 3 loops of `reps` calls, after one warm-up call. */
function time(body: () => void, reps: number): number {
  body();
  backend.synchronize();
  const runs: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) body();
    backend.synchronize();
    runs.push((performance.now() - t0) / 1000 / reps);
  }
  return median(runs);
}

function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  let s = 12345;
  for (let i = 0; i < size; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = s >>> 24;
  }
  // Keep every f16 / f32 scale finite: clear the top exponent bit of every other byte.
  for (let i = 1; i < size; i += 2) out[i] &= 0x3b;
  return out;
}

withDeviceBuffers(backend, (s) => {
  const copyElems = Number(v["copy-mib"]) * (1 << 18); // f32 elements, each way
  const src = s.zeros(copyElems * 4), dst = s.zeros(copyElems * 4);
  const copySeconds = time(() => backend.convert(dst, DType.F32, src, DType.F32, copyElems), 5);
  const copyGbs = (2 * copyElems * 4) / copySeconds / 1e9;
  console.log(`device copy (read + write): ${copyGbs.toFixed(0)} GB/s`);
  console.log(
    `| format | gemv m=1 GB/s | % of copy | gemv m=8 GB/s | wmma m=512 TFLOP/s | f16 wmma TFLOP/s |`,
  );
  console.log(
    `| ------ | ------------- | --------- | ------------- | ------------------ | ---------------- |`,
  );
  const x = s.zeros(512 * k * 4), out = s.zeros(512 * n * 4);
  const wf16 = s.from(randomBytes(n * k * 2));
  const f16Seconds = time(
    () => backend.matmul({ out, x, w: wf16, wDtype: DType.F16, m: 512, n, k }),
    5,
  );
  for (const dtype of FORMATS) {
    const bytes = matrixBytes(dtype, n, k);
    const w = s.from(randomBytes(bytes));
    const gemv = (m: number) =>
      time(() => backend.matmul({ out, x, w, wDtype: dtype, m, n, k }), 20);
    const g1 = bytes / gemv(1) / 1e9, g8 = bytes / gemv(8) / 1e9;
    const tiled = time(() => backend.matmul({ out, x, w, wDtype: dtype, m: 512, n, k }), 5);
    const tflops = (seconds: number) => (2 * 512 * n * k / seconds / 1e12).toFixed(1);
    console.log(
      `| ${formatInfo(dtype).name} | ${g1.toFixed(0)} | ${(100 * g1 / copyGbs).toFixed(0)}% | ` +
        `${g8.toFixed(0)} | ${tflops(tiled)} | ${tflops(f16Seconds)} |`,
    );
  }
});
backend.close();
