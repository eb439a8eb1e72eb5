// Quantize on load (`--quantization int8|int4|q8_0|…`): which weights a target quantizes, into
// which format when a tensor's rows do not fit the target's block, and the per-tensor transform
// the weight loader applies (read one tensor as f32, quantize it into its place, free the f32).
import {
  type Format,
  formatByGgufName,
  formatByName,
  formatInfo,
  FORMATS,
  isQuantized,
  matrixBytes,
} from "../../ffi/formats.ts";
import {
  type DevicePtr,
  DType,
  type DTypeId,
  type NativeBackend,
  offset,
} from "../../ffi/native.ts";
import { ModelFormatError } from "../formats/errors.ts";
import { readTensorBytes, type TensorInfo } from "../formats/tensor.ts";
import type { DeviceMatrix, WeightTransform } from "./weights.ts";

/** vLLM's and llama.cpp's users' names for denollm's own formats; every other name is a format's. */
const ALIASES: Record<string, string> = {
  int8: "int8",
  int4: "int4",
  w8a16: "int8",
  w4a16: "int4",
};

/**
 * Formats `--quantization` accepts: INT8, INT4 and every GGUF block format a model may be stored
 * in. Q8_K is left out: ggml uses it only for activations, and llama.cpp has no preset writing it.
 */
export const QUANTIZATION_TARGETS: readonly Format[] = FORMATS.filter((f) =>
  isQuantized(f.id) && f.name !== "q8_k" && f.id < DType.W8A8
);

/** The activation-quantized targets (src/model/compress.ts loads them): w8a8, w8a8-mixed. */
const W8A8_TARGETS: Record<string, string> = {
  "w8a8": "w8a8",
  "w8a8-mixed": "w8a8_mixed",
  "w8a8_mixed": "w8a8_mixed",
};

/** "int8, int4, q4_0, …": the accepted names, for --help and errors. */
export function quantizationNames(): string {
  const names = QUANTIZATION_TARGETS.map((f) => f.name);
  const rest = names.filter((n) => n !== "int8" && n !== "int4");
  return ["int8", "int4", ...rest, "w8a8", "w8a8-mixed"].join(", ");
}

/** The format a `--quantization` value names (any case); RangeError listing the choices. */
export function parseQuantization(name: string): Format {
  const lower = name.trim().toLowerCase();
  if (W8A8_TARGETS[lower] !== undefined) return formatByName(W8A8_TARGETS[lower])!;
  const format = formatByName(ALIASES[lower] ?? lower);
  if (format === undefined || !QUANTIZATION_TARGETS.includes(format)) {
    throw new RangeError(
      `Expected --quantization to be one of ${quantizationNames()}, found ${JSON.stringify(name)}`,
    );
  }
  return format;
}

/**
 * The formats to try for a tensor quantized to `target`, best first: INT4 falls back to INT8 (any
 * k), a K format (256-element blocks) to the legacy 32-element format of about its bits, as
 * llama.cpp does for such rows (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0; Q2_K and Q3_K to Q4_1,
 * where llama.cpp, which has IQ4_NL, picks that). A row that fits none keeps its caller's
 * fallback: the checkpoint's own format on load, F16 in `deno task quantize`.
 */
export function fallbackChain(target: Format): Format[] {
  const next: Record<string, string> = {
    int4: "int8",
    q2_k: "q4_1",
    q3_k: "q4_1",
    q4_k: "q5_0",
    q5_k: "q5_1",
    q6_k: "q8_0",
  };
  const chain = [target];
  for (let name = next[target.name]; name !== undefined; name = next[name]) {
    chain.push(formatByName(name)!);
  }
  return chain;
}

/** Whether rows of `cols` elements split into whole blocks of `format`. */
export function fitsRows(format: Format, cols: number): boolean {
  return cols % format.blockLen === 0;
}

/** Throws the error a tensor whose rows do not split into `format`'s blocks gets. */
export function checkFits(file: string, name: string, shape: readonly number[], format: Format) {
  const cols = shape[shape.length - 1];
  if (!fitsRows(format, cols)) {
    throw new ModelFormatError(
      file,
      `tensor ${name} of shape [${shape.join(", ")}] cannot be quantized to ${format.ggufName}: ` +
        `its rows of ${cols} elements are not a multiple of ${format.ggufName}'s block length ` +
        `${format.blockLen}`,
    );
  }
}

/** The first format of `target`'s fallback chain that fits rows of `cols`, or undefined. */
export function fittingFormat(target: Format, cols: number): Format | undefined {
  return fallbackChain(target).find((f) => fitsRows(f, cols));
}

const LINEAR = /^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/;

/**
 * Whether `--quantization` quantizes the tensor of this (Hugging Face) name: every linear
 * projection, the LM head, and the token embeddings when they are not tied. Tied embeddings, one
 * matrix that is both the embedding and the LM head, keep the checkpoint's format (vLLM does the
 * same): the head's error reaches every logit, and the table is small next to the layers. Norms and
 * biases always stay f32.
 */
export function isQuantizedWeight(name: string, options: { isTied: boolean }): boolean {
  if (LINEAR.test(name) || name === "lm_head.weight") return true;
  return name === "model.embed_tokens.weight" && !options.isTied;
}

/**
 * Refuses `--quantization` on a model whose weights are already quantized, unless every quantized
 * tensor already is the target (then they load as they are and the rest is quantized).
 */
export function checkNotQuantized(
  path: string,
  tensors: Map<string, TensorInfo>,
  target: Format,
): void {
  const counts = new Map<string, number>();
  for (const info of tensors.values()) {
    const format = formatByGgufName(info.dtype);
    if (format !== undefined && isQuantized(format.id)) {
      counts.set(format.ggufName, (counts.get(format.ggufName) ?? 0) + 1);
    }
  }
  if (counts.size === 0 || (counts.size === 1 && counts.has(target.ggufName))) return;
  const held = [...counts].map(([name, n]) => `${name} (${n} tensors)`).join(", ");
  throw new ModelFormatError(
    path,
    `--quantization ${target.name} expects F32, F16 or BF16 weights, but the model is already ` +
      `quantized: it holds ${held}. Load it without --quantization, or quantize its F32/F16 ` +
      `original`,
  );
}

/** One tensor that could not take the target format. */
export interface QuantizationFallback {
  name: string;
  shape: number[];
  /** The format asked for, and the one it got (the checkpoint's own when none fitted). */
  target: string;
  format: string;
}

/** What a quantizing load did, for the load log. */
export interface QuantizationSummary {
  target: string;
  numQuantized: number;
  fallbacks: QuantizationFallback[];
}

/** "int4: 34 tensors; 5 fell back (…)": one line for logs. */
export function describeQuantization(s: QuantizationSummary): string {
  const head = `--quantization ${s.target}: ${s.numQuantized} tensors quantized`;
  if (s.fallbacks.length === 0) return head;
  const byFormat = new Map<string, string[]>();
  for (const f of s.fallbacks) {
    const key = `${f.format}`;
    byFormat.set(key, [...(byFormat.get(key) ?? []), `${f.name} [${f.shape.join(", ")}]`]);
  }
  const parts = [...byFormat].map(([format, names]) => `${format}: ${names.join(", ")}`);
  return `${head}; rows not a multiple of ${formatByName(s.target)!.blockLen} kept ` +
    `another format (${parts.join("; ")})`;
}

/**
 * Reads a 2-D tensor of the checkpoint (F32, F16 or BF16) as f32 into new device memory; the caller
 * frees it. The source bytes take a staging buffer only when they need converting.
 */
export async function readAsF32(backend: NativeBackend, info: TensorInfo): Promise<DevicePtr> {
  const source = formatByGgufName(info.dtype);
  if (source === undefined || isQuantized(source.id)) {
    throw new ModelFormatError(
      info.file,
      `tensor ${info.name} is ${info.dtype}; quantizing expects F32, F16 or BF16`,
    );
  }
  const numElements = info.shape.reduce((a, b) => a * b, 1);
  const f32 = backend.alloc(numElements * 4);
  try {
    const into = async (ptr: DevicePtr) => {
      const view = backend.hostView(ptr, info.byteLength);
      if (view !== null) return await readTensorBytes(info, view);
      const staging = new Uint8Array(info.byteLength);
      await readTensorBytes(info, staging);
      backend.upload(ptr, staging);
    };
    if (source.id === DType.F32) {
      await into(f32);
    } else {
      const staging = backend.alloc(info.byteLength);
      try {
        await into(staging);
        backend.convert(f32, DType.F32, staging, source.id, numElements);
      } finally {
        backend.free(staging);
      }
    }
    return f32;
  } catch (error) {
    backend.free(f32);
    throw error;
  }
}

/** Copies device bytes, through the host unless device memory is host memory. */
function copyDevice(
  backend: NativeBackend,
  dst: DevicePtr,
  src: DevicePtr,
  sizeBytes: number,
): void {
  const from = backend.hostView(src, sizeBytes);
  const to = backend.hostView(dst, sizeBytes);
  if (from !== null && to !== null) {
    to.set(from);
    return;
  }
  const staging = new Uint8Array(sizeBytes);
  backend.download(staging, src);
  backend.upload(dst, staging);
}

/**
 * Quantizes the f32 [rows, cols] matrix at `src` into rows [rowOffset, rowOffset + rows) of `dst`,
 * a [dst.rows, cols] matrix of `dst.dtype`. A part of a fused matrix (Q of QKV) goes through a
 * scratch matrix, so formats with per-row data after all rows (INT8's scales) land right.
 */
export function quantizeRowsInto(
  backend: NativeBackend,
  src: DevicePtr,
  shape: { rows: number; cols: number },
  dst: DeviceMatrix,
  rowOffset: number,
): void {
  const { rows, cols } = shape;
  if (rowOffset === 0 && rows === dst.rows) {
    backend.quantize({ dst: dst.ptr, dstDtype: dst.dtype, src, rows, cols });
    return;
  }
  const format = formatInfo(dst.dtype);
  const blockRowBytes = (cols / format.blockLen) * format.blockBytes;
  const scratch = backend.alloc(matrixBytes(dst.dtype, rows, cols));
  try {
    backend.quantize({ dst: scratch, dstDtype: dst.dtype, src, rows, cols });
    copyDevice(backend, offset(dst.ptr, rowOffset * blockRowBytes), scratch, rows * blockRowBytes);
    if (format.rowBytes > 0) {
      copyDevice(
        backend,
        offset(dst.ptr, dst.rows * blockRowBytes + rowOffset * format.rowBytes),
        offset(scratch, rows * blockRowBytes),
        rows * format.rowBytes,
      );
    }
  } finally {
    backend.free(scratch);
  }
}

/**
 * The loader's per-tensor transform for `--quantization`: chooses each weight's device format and
 * quantizes it while loading, one tensor at a time (peak: that tensor in f32, plus its source
 * bytes when they need converting).
 */
export class QuantizeOnLoad implements WeightTransform {
  #backend: NativeBackend;
  #target: Format;
  #isTied: boolean;
  #numQuantized = 0;
  #fallbacks: QuantizationFallback[] = [];
  #seen = new Set<string>();

  constructor(backend: NativeBackend, target: Format, options: { isTied: boolean }) {
    this.#backend = backend;
    this.#target = target;
    this.#isTied = options.isTied;
  }

  formatOf(info: TensorInfo): DTypeId | undefined {
    const source = formatByGgufName(info.dtype);
    if (source !== undefined && isQuantized(source.id)) return undefined; // already the target
    if (info.shape.length !== 2 || !isQuantizedWeight(info.name, { isTied: this.#isTied })) {
      return undefined;
    }
    const format = fittingFormat(this.#target, info.shape[1]);
    if (format !== this.#target && !this.#seen.has(info.name)) {
      this.#seen.add(info.name);
      this.#fallbacks.push({
        name: info.name,
        shape: [...info.shape],
        target: this.#target.ggufName,
        format: format?.ggufName ?? info.dtype,
      });
    }
    return format?.id;
  }

  async writeRows(info: TensorInfo, dst: DeviceMatrix, rowOffset: number): Promise<void> {
    const [rows, cols] = info.shape;
    checkFits(info.file, info.name, info.shape, formatInfo(dst.dtype));
    const f32 = await readAsF32(this.#backend, info);
    try {
      quantizeRowsInto(this.#backend, f32, { rows, cols }, dst, rowOffset);
    } finally {
      this.#backend.free(f32);
    }
    this.#numQuantized++;
  }

  summary(): QuantizationSummary {
    return {
      target: this.#target.name,
      numQuantized: this.#numQuantized,
      fallbacks: [...this.#fallbacks],
    };
  }
}
