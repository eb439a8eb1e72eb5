// Benchmark (not a test): quantized dl_matmul per weight format on the projection shapes of
// smollm-135m and qwen2.5-0.5b, for decode (m = 1, 16) and prefill (m = 512), next to the F16 path
// and a memory read-bandwidth loop measured in the same run. Medians of --runs rounds, each round
// alternating the formats; the 1-minute load average is printed with the table.
//
//   deno task bench:quant-matmul [--formats q4_0,q4_0_r16,q8_0,q4_k,q6_k,q5_0,int8,int4|all]
//     [--rows 1,16,512]
//     [--threads 1] [--runs 3] [--min-ms 150]
//
// Weights are random blocks with sane scales, in enough copies (>= 96 MiB, cycled call by call) that
// decode reads them from DRAM as a model's decode step does, not from the 32 MiB L3. GB/s counts
// weight bytes only. The read loop is a small C program built here with $CXX (default g++), the
// library's compiler: one pass of 256-bit loads summing a 512 MiB buffer per thread count.
import { parseArgs } from "node:util";
import { DType, type DTypeId, NativeBackend } from "../ffi/native.ts";
import { formatByName, formatInfo } from "../ffi/formats.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    formats: { type: "string", default: "q4_0,q8_0,q4_k,q6_k,q5_0,int8,int4" },
    rows: { type: "string", default: "1,16,512" },
    threads: { type: "string", default: "1" },
    runs: { type: "string", default: "3" },
    "min-ms": { type: "string", default: "150" },
  },
});
const ALL = "q4_0,q4_1,q5_0,q5_1,q8_0,q2_k,q3_k,q4_k,q5_k,q6_k,q8_k,int8,int4," +
  "w8a8,w8a8_mixed,f16_2_4,int8_2_4,w8a8_2_4,int4_2_4,q4_0_r16";
const formats: DTypeId[] = [
  DType.F16,
  ...(v.formats === "all" ? ALL : v.formats).split(",").map((name) => {
    const f = formatByName(name);
    if (f === undefined) throw new TypeError(`Expected a format name in ${ALL}, found "${name}"`);
    return f.id as DTypeId;
  }),
];
const rowCounts = v.rows.split(",").map(Number);
const numThreads = Number(v.threads), runs = Number(v.runs), minMs = Number(v["min-ms"]);

/** [name, n, k] of each projection: the K formats need k a multiple of 256 (the down projections). */
const SHAPES: [string, number, number][] = [
  ["smollm-135m gate/up", 1536, 576],
  ["smollm-135m down", 576, 1536],
  ["qwen2.5-0.5b gate/up", 4864, 896],
  ["qwen2.5-0.5b down", 896, 4864],
];
const COPIES_BYTES = 96 * 1024 * 1024;

// --- Read bandwidth

const READ_LOOP = `
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char** argv) {
  const size_t bytes = (size_t)512 << 20;
  const int threads = atoi(argv[1]);
  char* buf = (char*)aligned_alloc(64, bytes);
  memset(buf, 1, bytes);
  double best = 0;
  for (int pass = 0; pass < 5; pass++) {
    double t0 = omp_get_wtime();
    long long total = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : total)
    for (long long c = 0; c < (long long)(bytes / 4096); c++) {
      __m256i acc = _mm256_setzero_si256();
      const __m256i* p = (const __m256i*)(buf + c * 4096);
      for (int i = 0; i < 128; i += 4) {
        acc = _mm256_add_epi64(acc, _mm256_xor_si256(_mm256_load_si256(p + i), _mm256_load_si256(p + i + 1)));
        acc = _mm256_add_epi64(acc, _mm256_xor_si256(_mm256_load_si256(p + i + 2), _mm256_load_si256(p + i + 3)));
      }
      total += _mm256_extract_epi64(acc, 0);
    }
    double gbs = bytes / (omp_get_wtime() - t0) / 1e9;
    if (gbs > best) best = gbs;
    if (total == 42) puts("");
  }
  printf("%.2f\\n", best);
  return 0;
}`;

async function readBandwidthGBs(threads: number): Promise<number> {
  const dir = Deno.makeTempDirSync({ prefix: "denollm-bw-" });
  try {
    Deno.writeTextFileSync(`${dir}/read.c`, READ_LOOP);
    const cc = await new Deno.Command(Deno.env.get("CXX") ?? "g++", {
      args: ["-O2", "-mavx2", "-fopenmp", "-x", "c++", `${dir}/read.c`, "-o", `${dir}/read`],
    }).output();
    if (cc.code !== 0) {
      throw new Error(`Compiling the read loop failed:\n${new TextDecoder().decode(cc.stderr)}`);
    }
    const run = await new Deno.Command(`${dir}/read`, { args: [String(threads)] }).output();
    return Number(new TextDecoder().decode(run.stdout).trim());
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

// --- Random weights

let seed = 12345;
function rand(): number {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed / 2 ** 32;
}

/** f16 bits of a value in [0.005, 0.015): a sane block scale. */
function saneF16(): number {
  return 0x2000 + Math.floor(rand() * 0x800);
}

/** Byte offsets of each block's f16 scales (INT8's f32 row scales are set separately). */
const F16_FIELDS: Partial<Record<number, number[]>> = {
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
  [DType.INT4_2_4]: [0, 2],
};

function weightBytes(dtype: DTypeId, n: number, k: number): Uint8Array {
  const info = formatInfo(dtype);
  const rowBytes = (k / info.blockLen) * info.blockBytes;
  const bytes = new Uint8Array(n * (rowBytes + info.rowBytes));
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(rand() * 256);
  const view = new DataView(bytes.buffer);
  if (dtype === DType.F16) {
    for (let i = 0; i < n * k; i++) {
      view.setUint16(2 * i, saneF16() ^ (rand() < 0.5 ? 0x8000 : 0), true);
    }
  }
  for (let b = 0; b < (n * k) / info.blockLen; b++) {
    for (const field of F16_FIELDS[dtype] ?? []) {
      view.setUint16(b * info.blockBytes + field, saneF16(), true);
    }
    if (dtype === DType.Q8_K) view.setFloat32(b * info.blockBytes, 0.01, true);
  }
  if (dtype === DType.F16_2_4) {
    for (let b = 0; b < (n * k) / 32; b++) {
      for (let t = 0; t < 16; t++) view.setUint16(36 * b + 2 * t, saneF16(), true);
    }
  }
  // Formats with an f32 scale first in each row's data (the W8A8 formats: then an int32 sum, left
  // random; W8A8_MIXED: then 16 outlier ids, 4 used, and their f16 weights).
  if (info.rowBytes > 0) {
    for (let r = 0; r < n; r++) {
      const at = n * rowBytes + info.rowBytes * r;
      view.setFloat32(at, 0.01, true);
      if (dtype === DType.W8A8_MIXED) {
        for (let t = 0; t < 16; t++) view.setUint16(at + 8 + 2 * t, t < 4 ? 7 * t : 0xffff, true);
        for (let t = 0; t < 16; t++) view.setUint16(at + 40 + 2 * t, saneF16(), true);
      }
    }
  }
  return bytes;
}

// --- Timing

const backend = NativeBackend.open({ numThreads });

/** Seconds per call of one (shape, format, m) cell, cycling through the weight copies. */
function timeCell(dtype: DTypeId, n: number, k: number, m: number): number {
  // Q4_0_R16 is Q4_0 repacked on the device (dl_repack), as the loader does.
  const isR16 = dtype === DType.Q4_0_R16;
  const bytes = weightBytes(isR16 ? DType.Q4_0 : dtype, n, k);
  const copies = Math.max(1, Math.ceil(COPIES_BYTES / bytes.length));
  const staging = isR16 ? backend.alloc(bytes.length) : null;
  if (staging !== null) backend.upload(staging, bytes);
  const ws = Array.from({ length: copies }, () => {
    const p = backend.alloc(bytes.length);
    if (staging === null) backend.upload(p, bytes);
    else {backend.repack({
        dst: p,
        dstDtype: dtype,
        src: staging,
        srcDtype: DType.Q4_0,
        rows: n,
        cols: k,
      });}
    return p;
  });
  if (staging !== null) backend.free(staging);
  const xs = new Float32Array(m * k).map(() => rand() * 2 - 1);
  const x = backend.alloc(xs.byteLength), out = backend.alloc(m * n * 4);
  backend.upload(x, xs);
  try {
    const call = (i: number) =>
      backend.matmul({ out, x, w: ws[i % copies], wDtype: dtype, m, n, k });
    call(0);
    let calls = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < minMs || calls < 3) call(calls++);
    backend.synchronize();
    return (performance.now() - t0) / 1000 / calls;
  } finally {
    for (const p of [...ws, x, out]) backend.free(p);
  }
}

function weightBytesOf(dtype: DTypeId, n: number, k: number): number {
  const info = formatInfo(dtype);
  return n * ((k / info.blockLen) * info.blockBytes + info.rowBytes);
}

// --- Main

const bandwidth: number[] = [];
const seconds = new Map<string, number[]>();
const cells: { shape: string; n: number; k: number; dtype: DTypeId; m: number }[] = [];
for (const [shape, n, k] of SHAPES) {
  for (const m of rowCounts) {
    for (const dtype of formats) {
      if (k % formatInfo(dtype).blockLen === 0) cells.push({ shape, n, k, dtype, m });
    }
  }
}
for (let r = 0; r < runs; r++) {
  bandwidth.push(await readBandwidthGBs(numThreads));
  for (const c of cells) {
    const key = `${c.shape}|${c.dtype}|${c.m}`;
    seconds.set(key, [...(seconds.get(key) ?? []), timeCell(c.dtype, c.n, c.k, c.m)]);
  }
}
backend.close();

const readGBs = median(bandwidth);
console.log(
  `quantized dl_matmul, ${numThreads} thread(s), medians of ${runs}; load average ${
    Deno.loadavg().map((x) => x.toFixed(2)).join(" ")
  }`,
);
console.log(
  `read-bandwidth loop: ${readGBs.toFixed(1)} GB/s (runs: ${
    bandwidth.map((b) => b.toFixed(1)).join(", ")
  })\n`,
);
console.log(
  "| shape | n x k | m | format | us/call | weight GB/s | % of read loop | GFLOP/s | vs F16 time |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const c of cells) {
  const t = median(seconds.get(`${c.shape}|${c.dtype}|${c.m}`)!);
  const f16 = median(seconds.get(`${c.shape}|${DType.F16}|${c.m}`)!);
  const gbs = weightBytesOf(c.dtype, c.n, c.k) / t / 1e9;
  const gflops = (2 * c.m * c.n * c.k) / t / 1e9;
  console.log(
    `| ${c.shape} | ${c.n}x${c.k} | ${c.m} | ${formatInfo(c.dtype).name} | ${
      (t * 1e6).toFixed(1)
    } | ${gbs.toFixed(1)} | ${((100 * gbs) / readGBs).toFixed(0)}% | ${gflops.toFixed(1)} | ${
      (f16 / t).toFixed(2)
    }x |`,
  );
}
