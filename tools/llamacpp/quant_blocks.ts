// Records llama.cpp's (ggml's) own output for every GGUF quantized type into tests/fixtures/quant/:
// blocks.json (raw blocks and the floats of ggml's dequantize_row_*, for the bit-identity test) and
// rmse.json (the RMSE of ggml's quantizer, ggml_quantize_chunk without an imatrix, on fixed data).
//
//   bash tools/llamacpp/install.sh
//   deno run --allow-read --allow-write --allow-ffi --allow-env tools/llamacpp/quant_blocks.ts
//
// It calls the prebuilt libggml-base.so of node-llama-cpp 3.21.1 through Deno FFI and copies none
// of its code. The data sets are exported so tests/quant_blocks_test.ts and tests/quantize_test.ts
// rebuild exactly the same floats (rmse.json records a hash of each to prove it).
import { FORMATS } from "../../ffi/formats.ts";
import { readSafetensors } from "../../src/formats/safetensors.ts";
import { TensorFileReader } from "../../src/formats/tensor.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const FIXTURES = `${ROOT}tests/fixtures/quant`;
const STORIES_DIR = new URL("../../../shared/models/stories260K/hf", import.meta.url).pathname;

/** GGUF's quantized types of the format table, in table order. */
export const GGML_QUANT_TYPES = [
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q8_0",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
  "Q8_K",
] as const;
export type GgmlQuantType = (typeof GGML_QUANT_TYPES)[number];

/** A row-major [rows, cols] f32 matrix to quantize, cols a multiple of 256. */
export interface QuantDataset {
  name: string;
  rows: number;
  cols: number;
  data: Float32Array;
}

// --- Deterministic data (no Math.random, no transcendental functions: every engine agrees)

/** mulberry32: a small seeded generator of uniform floats in [0, 1). */
export function uniformSource(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Approximately standard normal values (Irwin-Hall: the sum of 12 uniforms, minus 6). */
export function gaussianSource(seed: number): () => number {
  const uniform = uniformSource(seed);
  return () => {
    let sum = 0;
    for (let i = 0; i < 12; i++) sum += uniform();
    return sum - 6;
  };
}

function gaussianMatrix(name: string, rows: number, cols: number, seed: number, std: number) {
  const next = gaussianSource(seed);
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = std * next();
  return { name, rows, cols, data };
}

/** Gaussian rows where one value in 64 is 8x to 32x larger: the outliers real weights have. */
function outlierMatrix(name: string, rows: number, cols: number, seed: number) {
  const m = gaussianMatrix(name, rows, cols, seed, 0.02);
  const uniform = uniformSource(seed ^ 0x5bd1e995);
  for (let i = 0; i < m.data.length; i++) {
    if (uniform() < 1 / 64) m.data[i] *= 8 + 24 * uniform();
  }
  return m;
}

/**
 * stories260K's 2-D weights (F32, from the HF copy in ../shared/models), in name order,
 * concatenated and cut into rows of 256: its rows (64 or 172 long) are shorter than a K-format
 * super-block, and what is measured here is how values of real weights quantize.
 */
async function storiesMatrix(): Promise<QuantDataset> {
  const file = await readSafetensors(`${STORIES_DIR}/model.safetensors`);
  const infos = [...file.tensors.values()]
    .filter((t) => t.shape.length === 2 && t.dtype === "F32")
    .sort((a, b) => a.name.localeCompare(b.name));
  const parts: Float32Array[] = [];
  using reader = new TensorFileReader();
  for (const info of infos) {
    const bytes = new Uint8Array(info.byteLength);
    await reader.read(info, bytes);
    parts.push(new Float32Array(bytes.buffer));
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const cols = 256, rows = Math.floor(total / cols);
  const data = new Float32Array(rows * cols);
  let at = 0;
  for (const p of parts) {
    const take = Math.min(p.length, data.length - at);
    data.set(p.subarray(0, take), at);
    at += take;
  }
  return { name: "stories260k", rows, cols, data };
}

/** The data sets the RMSE comparison runs on. */
export async function quantDatasets(): Promise<QuantDataset[]> {
  return [
    gaussianMatrix("gaussian", 32, 1024, 1, 0.02),
    outlierMatrix("outliers", 32, 1024, 2),
    await storiesMatrix(),
  ];
}

/** FNV-1a of a view's bytes, as 8 hex digits: proves two runs built the same data. */
export function fnv1a(view: ArrayBufferView): string {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** Root-mean-square difference, accumulated in f64. */
export function rmse(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += (a[i] - b[i]) ** 2;
  return Math.sqrt(sum / a.length);
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

// --- ggml through FFI

function ggmlLibraryPath(): string {
  const fromEnv = Deno.env.get("LLAMACPP_GGML_BASE");
  if (fromEnv) return fromEnv;
  const path =
    `${ROOT}.bench/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so`;
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(
      `Expected node-llama-cpp's libggml-base.so at ${path} (run bash tools/llamacpp/install.sh, ` +
        `or set LLAMACPP_GGML_BASE), found nothing`,
    );
  }
  return path;
}

function ggmlSymbols() {
  const s: Record<string, Deno.ForeignFunction> = {
    ggml_quantize_chunk: {
      parameters: ["i32", "pointer", "pointer", "i64", "i64", "i64", "pointer"],
      result: "usize",
    },
  };
  for (const t of GGML_QUANT_TYPES) {
    // dequantize_row_q4_0(const block_q4_0 * x, float * y, int64_t k), and quantize_row_*_ref.
    s[`dequantize_row_${t.toLowerCase().replace("_k", "_K")}`] = {
      parameters: ["pointer", "pointer", "i64"],
      result: "void",
    };
  }
  s.quantize_row_q8_K_ref = { parameters: ["pointer", "pointer", "i64"], result: "void" };
  return s;
}

class Ggml {
  #lib: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>>;

  constructor(path: string) {
    this.#lib = Deno.dlopen(path, ggmlSymbols());
  }

  close(): void {
    this.#lib.close();
  }

  #format(type: GgmlQuantType) {
    return FORMATS.find((f) => f.ggufName === type)!;
  }

  /** ggml's quantizer as llama.cpp's quantize tool calls it (no imatrix); Q8_K by its ref row. */
  quantize(type: GgmlQuantType, src: Float32Array, rows: number, cols: number): Uint8Array {
    const f = this.#format(type);
    const dst = new Uint8Array(rows * cols / f.blockLen * f.blockBytes);
    if (type === "Q8_K") {
      // ggml_quantize_chunk has no Q8_K case (it is only an activation format there).
      this.#lib.symbols.quantize_row_q8_K_ref(
        Deno.UnsafePointer.of(src),
        Deno.UnsafePointer.of(dst),
        BigInt(rows * cols),
      );
      return dst;
    }
    const written = this.#lib.symbols.ggml_quantize_chunk(
      f.ggmlType,
      Deno.UnsafePointer.of(src),
      Deno.UnsafePointer.of(dst),
      0n,
      BigInt(rows),
      BigInt(cols),
      null,
    ) as bigint;
    if (Number(written) !== dst.length) {
      throw new Error(
        `ggml_quantize_chunk(${type}) wrote ${written} bytes, expected ${dst.length}`,
      );
    }
    return dst;
  }

  dequantize(type: GgmlQuantType, blocks: Uint8Array, numElements: number): Float32Array {
    const out = new Float32Array(numElements);
    const fn = `dequantize_row_${type.toLowerCase().replace("_k", "_K")}`;
    this.#lib.symbols[fn](
      Deno.UnsafePointer.of(blocks),
      Deno.UnsafePointer.of(out),
      BigInt(numElements),
    );
    return out;
  }
}

// --- Random blocks: random bytes, with every scale field a sane (finite) value

/** Byte offsets of each type's f16 scale fields (Q8_K: its f32 d at 0), from native/dl_quant.h. */
const SCALE_FIELDS: Record<GgmlQuantType, number[]> = {
  Q4_0: [0],
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q8_0: [0],
  Q2_K: [80, 82],
  Q3_K: [108],
  Q4_K: [0, 2],
  Q5_K: [0, 2],
  Q6_K: [208],
  Q8_K: [],
};

function randomBlocks(type: GgmlQuantType, count: number, seed: number): Uint8Array {
  const f = FORMATS.find((x) => x.ggufName === type)!;
  const uniform = uniformSource(seed);
  const bytes = new Uint8Array(count * f.blockBytes);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(uniform() * 256);
  const view = new DataView(bytes.buffer);
  for (let b = 0; b < count; b++) {
    const base = b * f.blockBytes;
    for (const at of SCALE_FIELDS[type]) {
      // Exponent field 0..20: subnormals (one block in five) up to 2^5, either sign.
      const exponent = b % 5 === 4 ? 0 : 1 + Math.floor(uniform() * 20);
      const h = (uniform() < 0.5 ? 0x8000 : 0) | (exponent << 10) |
        Math.floor(uniform() * 1024);
      view.setUint16(base + at, h, true);
    }
    if (type === "Q8_K") view.setFloat32(base, (uniform() - 0.5) * 2 ** (8 * uniform() - 10), true);
  }
  return bytes;
}

// --- Main

const RANDOM_BLOCKS = 5;

async function main(): Promise<void> {
  const ggml = new Ggml(ggmlLibraryPath());
  const datasets = await quantDatasets();
  const blockTypes: Record<string, { numBlocks: number; blocks: string; floats: string }> = {};
  const rmseTable: Record<string, Record<string, number>> = {};
  for (const [t, type] of GGML_QUANT_TYPES.entries()) {
    const f = FORMATS.find((x) => x.ggufName === type)!;
    // Random blocks, then one row of 2 blocks quantized by ggml from Gaussian floats and one from
    // outlier-heavy floats.
    const gauss = gaussianMatrix("g", 1, 2 * f.blockLen, 100 + t, 0.05).data;
    const outl = outlierMatrix("o", 1, 2 * f.blockLen, 200 + t).data;
    const parts = [
      randomBlocks(type, RANDOM_BLOCKS, 300 + t),
      ggml.quantize(type, gauss, 1, gauss.length),
      ggml.quantize(type, outl, 1, outl.length),
    ];
    const blocks = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) blocks.set(p, at), at += p.length;
    const numBlocks = blocks.length / f.blockBytes;
    const floats = ggml.dequantize(type, blocks, numBlocks * f.blockLen);
    blockTypes[type] = {
      numBlocks,
      blocks: toBase64(blocks),
      floats: toBase64(new Uint8Array(floats.buffer)),
    };

    rmseTable[type] = {};
    for (const d of datasets) {
      const q = ggml.quantize(type, d.data, d.rows, d.cols);
      rmseTable[type][d.name] = rmse(d.data, ggml.dequantize(type, q, d.data.length));
    }
  }
  ggml.close();

  await Deno.mkdir(FIXTURES, { recursive: true });
  const source =
    "node-llama-cpp 3.21.1 libggml-base.so (linux-x64), via tools/llamacpp/quant_blocks.ts";
  await Deno.writeTextFile(
    `${FIXTURES}/blocks.json`,
    JSON.stringify(
      {
        about:
          `${RANDOM_BLOCKS} blocks of random bytes with finite scales, then 2 blocks quantized ` +
          `by ggml from Gaussian floats and 2 from outlier-heavy ones; floats are ggml's ` +
          `dequantize_row_* output as little-endian f32 (base64)`,
        source,
        types: blockTypes,
      },
      null,
      2,
    ) + "\n",
  );
  await Deno.writeTextFile(
    `${FIXTURES}/rmse.json`,
    JSON.stringify(
      {
        about: "RMSE of ggml's quantizer (ggml_quantize_chunk, no imatrix; Q8_K: " +
          "quantize_row_q8_K_ref) then ggml's dequantizer, on quantDatasets()",
        source,
        datasets: Object.fromEntries(
          datasets.map((d) => [d.name, { rows: d.rows, cols: d.cols, fnv1a: fnv1a(d.data) }]),
        ),
        ggml: rmseTable,
      },
      null,
      2,
    ) + "\n",
  );
  console.log("ggml RMSE per type and data set:");
  console.table(rmseTable);
}

if (import.meta.main) await main();
