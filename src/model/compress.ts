// The load-time transform of `--quantization w8a8|w8a8-mixed` and `--sparsity 2:4`, alone or with
// int8/int4: which layer projections get which format (DL_DTYPE_TABLE's rows from W8A8 on),
// SmoothQuant's folding (s into the QKV and gate/up columns, 1/s into the RMSNorm before them),
// LLM.int8()'s outlier channels, 2:4 pruning (magnitude or Wanda) or detection of an already
// pruned tensor, then the host packers of src/model/sparsity.ts. The start-up checks refuse
// combinations that have no kernels, before any weight is read.
import { type Format, formatByName, formatInfo, matrixBytes } from "../../ffi/formats.ts";
import {
  type DevicePtr,
  DType,
  type DTypeId,
  type NativeBackend,
  offset,
} from "../../ffi/native.ts";
import { ModelFormatError } from "../formats/errors.ts";
import type { TensorInfo } from "../formats/tensor.ts";
import { type Calibration, outlierChannels } from "./calibrate.ts";
import type { ActivationSite } from "./llama.ts";
import { readAsF32 } from "./quantize.ts";
import {
  is2of4,
  pack2of4,
  packW8a8,
  packW8a8Mixed,
  prune2of4,
  type SparseFormat,
} from "./sparsity.ts";
import type { DeviceMatrix, WeightTransform } from "./weights.ts";

export type SparsityMethod = "magnitude" | "wanda";

/** What `--quantization`, `--sparsity` and `--calibration` ask for, parsed. */
export interface CompressionPlan {
  /** "w8a8" (SmoothQuant when calibrated), "w8a8-mixed", "int8", "int4", or none (dense f16). */
  quantization?: "w8a8" | "w8a8-mixed" | "int8" | "int4";
  sparsity?: SparsityMethod;
  calibration?: Calibration;
}

/** Whether a `--quantization` value is one this transform handles (else quantize.ts's). */
export function isActivationQuantization(name: string | undefined): boolean {
  const n = name?.trim().toLowerCase();
  return n === "w8a8" || n === "w8a8-mixed" || n === "w8a8_mixed";
}

/** `--sparsity`: "2:4" (Wanda with --calibration, else magnitude), "2:4-magnitude", "2:4-wanda". */
export function parseSparsity(value: string, hasCalibration: boolean): SparsityMethod {
  const v = value.trim().toLowerCase();
  if (v === "2:4") return hasCalibration ? "wanda" : "magnitude";
  if (v === "2:4-magnitude") return "magnitude";
  if (v === "2:4-wanda") return "wanda";
  throw new RangeError(
    `Expected --sparsity to be 2:4, 2:4-magnitude or 2:4-wanda, found ${JSON.stringify(value)}`,
  );
}

/**
 * The plan of the flags, or a RangeError saying which combination is refused and why: the 2:4
 * formats exist dense (f16), with int8, w8a8 and int4 weights; w8a8-mixed and Wanda need a
 * calibration. Both builds have kernels for every one of these formats.
 */
export function planCompression(
  options: { quantization?: string; sparsity?: string },
  calibration: Calibration | undefined,
): CompressionPlan {
  const q = options.quantization?.trim().toLowerCase().replace("w8a8_mixed", "w8a8-mixed");
  const sparsity = options.sparsity === undefined
    ? undefined
    : parseSparsity(options.sparsity, calibration !== undefined);
  if (q !== undefined && !["w8a8", "w8a8-mixed", "int8", "int4", "w8a16", "w4a16"].includes(q)) {
    throw new RangeError(
      `--sparsity 2:4 combines with --quantization int8, int4 or w8a8 (or none: f16), found ${q}`,
    );
  }
  if (q === "w8a8-mixed" && sparsity !== undefined) {
    throw new RangeError(
      "--quantization w8a8-mixed has no 2:4 format; use --quantization w8a8 with --sparsity 2:4",
    );
  }
  if (q === "w8a8-mixed" && calibration === undefined) {
    throw new RangeError(
      "--quantization w8a8-mixed needs --calibration FILE (deno task calibrate) to pick its " +
        "outlier channels",
    );
  }
  if (sparsity === "wanda" && calibration === undefined) {
    throw new RangeError(
      "--sparsity 2:4-wanda needs --calibration FILE (deno task calibrate) for the activation norms",
    );
  }
  const quantization = q === "w8a16" ? "int8" : q === "w4a16" ? "int4" : q;
  return {
    ...(quantization === undefined
      ? {}
      : { quantization: quantization as CompressionPlan["quantization"] }),
    ...(sparsity === undefined ? {} : { sparsity }),
    ...(calibration === undefined ? {} : { calibration }),
  };
}

/** Refuses a model whose layer projections are already quantized: W8A8 and 2:4 start from floats. */
export function checkCompressible(
  path: string,
  tensors: Map<string, TensorInfo>,
  plan: CompressionPlan,
): void {
  const held = [...tensors.values()].filter((t) =>
    siteOf(t.name) !== undefined && !["F32", "F16", "BF16"].includes(t.dtype)
  );
  if (held.length === 0) return;
  throw new ModelFormatError(
    path,
    `--quantization ${plan.quantization ?? "none"}${plan.sparsity ? " --sparsity 2:4" : ""} ` +
      `expects F32, F16 or BF16 layer weights, but ${held[0].name} is ${held[0].dtype} ` +
      `(${held.length} quantized projections): load the F32/F16 original`,
  );
}

const PROJECTION =
  /^model\.layers\.(\d+)\.(self_attn\.([qkvo])_proj|mlp\.(gate|up|down)_proj)\.weight$/;
const NORM = /^model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$/;

/** The activation site that feeds a projection. */
function siteOf(name: string): { layer: number; site: ActivationSite } | undefined {
  const m = PROJECTION.exec(name);
  if (m === null) return undefined;
  const layer = Number(m[1]);
  if (m[3] === "o") return { layer, site: "o" };
  if (m[3] !== undefined) return { layer, site: "qkv" };
  return { layer, site: m[4] === "down" ? "down" : "gateUp" };
}

/** One summary line's worth of what the transform did. */
export interface CompressionSummary {
  formats: Record<string, number>;
  smoothed: number;
  pruned: number;
  alreadySparse: number;
  outliers: number;
  /** Tensors whose rows do not split into the format's blocks, and the format they got. */
  fallbacks: string[];
}

export function describeCompression(plan: CompressionPlan, s: CompressionSummary): string {
  const formats = Object.entries(s.formats).map(([f, n]) => `${n} ${f}`).join(", ");
  const parts = [`${formats}`];
  if (s.smoothed > 0) parts.push(`SmoothQuant on ${s.smoothed}`);
  if (s.outliers > 0) parts.push(`${s.outliers} outlier channels kept in f16`);
  if (plan.sparsity) {
    parts.push(`2:4 ${plan.sparsity}: ${s.pruned} pruned, ${s.alreadySparse} already 2:4`);
  }
  if (s.fallbacks.length > 0) parts.push(`rows not whole blocks: ${s.fallbacks.join(", ")}`);
  return `compression ${plan.quantization ?? "f16"}${plan.sparsity ? " + 2:4" : ""}: ` +
    parts.join("; ");
}

export class CompressOnLoad implements WeightTransform {
  #backend: NativeBackend;
  #plan: CompressionPlan;
  #summary: CompressionSummary = {
    formats: {},
    smoothed: 0,
    pruned: 0,
    alreadySparse: 0,
    outliers: 0,
    fallbacks: [],
  };

  constructor(backend: NativeBackend, plan: CompressionPlan) {
    this.#backend = backend;
    this.#plan = plan;
  }

  get summary(): CompressionSummary {
    return this.#summary;
  }

  /** SmoothQuant applies: W8A8 (alone or 2:4) with a calibration, at the two normed inputs. */
  #smooth(site: ActivationSite, layer: number): number[] | undefined {
    const q = this.#plan.quantization;
    if (q !== "w8a8" || this.#plan.calibration === undefined) return undefined;
    if (site !== "qkv" && site !== "gateUp") return undefined;
    return this.#plan.calibration.layers[layer][site].smooth;
  }

  /** The format a projection of rows `cols` long gets, before the fit check. */
  #wanted(): Format {
    const dense: Record<string, string> = {
      "w8a8": "w8a8",
      "w8a8-mixed": "w8a8_mixed",
      "int8": "int8",
      "int4": "int4",
    };
    const sparse: Record<string, string> = {
      "w8a8": "w8a8_2_4",
      "int8": "int8_2_4",
      "int4": "int4_2_4",
      "none": "f16_2_4",
    };
    const q = this.#plan.quantization ?? "none";
    return formatByName(this.#plan.sparsity === undefined ? dense[q] : sparse[q])!;
  }

  /** The dense format a 2:4 matrix falls back to when its rows are not whole blocks. */
  #fallback(format: Format, cols: number): Format {
    const chain: Record<string, string> = {
      f16_2_4: "f16",
      int8_2_4: "int8",
      w8a8_2_4: "w8a8",
      int4_2_4: "int8_2_4",
      int4: "int8",
    };
    let f = format;
    while (cols % f.blockLen !== 0) f = formatByName(chain[f.name])!;
    return f;
  }

  formatOf(info: TensorInfo): DTypeId | undefined {
    if (info.shape.length !== 2 || siteOf(info.name) === undefined) return undefined;
    const wanted = this.#wanted();
    const format = this.#fallback(wanted, info.shape[1]);
    if (format !== wanted && !this.#summary.fallbacks.some((f) => f.startsWith(info.name))) {
      this.#summary.fallbacks.push(`${info.name} [${info.shape.join(", ")}] as ${format.name}`);
    }
    return format.id;
  }

  transformVector(name: string, values: Float32Array): void {
    const m = NORM.exec(name);
    if (m === null) return;
    const site = m[2] === "input_layernorm" ? "qkv" : "gateUp";
    const s = this.#smooth(site, Number(m[1]));
    if (s === undefined) return;
    for (let j = 0; j < values.length; j++) values[j] /= s[j];
  }

  async writeRows(info: TensorInfo, dst: DeviceMatrix, rowOffset: number): Promise<void> {
    const [rows, cols] = info.shape;
    const { layer, site } = siteOf(info.name)!;
    const ptr = await readAsF32(this.#backend, info);
    const w = new Float32Array(rows * cols);
    try {
      this.#backend.download(w, ptr);
    } finally {
      this.#backend.free(ptr);
    }
    const s = this.#smooth(site, layer);
    if (s !== undefined) {
      for (let i = 0; i < w.length; i++) w[i] *= s[i % cols];
      this.#summary.smoothed++;
    }
    const format = formatInfo(dst.dtype);
    if (this.#plan.sparsity !== undefined) {
      if (is2of4(w, cols)) {
        this.#summary.alreadySparse++;
      } else {
        const stats = this.#plan.calibration?.layers[layer][site];
        // Wanda's score |W_ij| * ||X_j||: the norms of the input as the (smoothed) weights see it.
        const norms = this.#plan.sparsity === "wanda"
          ? Float32Array.from(stats!.l2, (v, j) => (s === undefined ? v : v / s[j]))
          : undefined;
        prune2of4(w, cols, norms);
        this.#summary.pruned++;
      }
    }
    let bytes: Uint8Array;
    if (format.name.endsWith("_2_4")) {
      bytes = pack2of4(w, rows, cols, format.name as SparseFormat);
    } else if (format.id === DType.W8A8) {
      bytes = packW8a8(w, rows, cols);
    } else if (format.id === DType.W8A8_MIXED) {
      const outliers = outlierChannels(this.#plan.calibration!.layers[layer][site].absMax);
      this.#summary.outliers += outliers.length;
      bytes = packW8a8Mixed(w, rows, cols, outliers);
    } else {
      bytes = this.#deviceFormat(w, rows, cols, format.id);
    }
    this.#summary.formats[format.name] = (this.#summary.formats[format.name] ?? 0) + 1;
    writeMatrixRows(this.#backend, bytes, { rows, cols }, dst, rowOffset);
  }

  /** The dense fallbacks (f16, int8, int4) through the native converter and quantizer. */
  #deviceFormat(w: Float32Array, rows: number, cols: number, dtype: DTypeId): Uint8Array {
    const b = this.#backend;
    const src = b.alloc(w.byteLength);
    const dst = b.alloc(matrixBytes(dtype, rows, cols));
    try {
      b.upload(src, w);
      if (dtype === DType.F16) b.convert(dst, DType.F16, src, DType.F32, rows * cols);
      else b.quantize({ dst, dstDtype: dtype, src, rows, cols });
      const out = new Uint8Array(matrixBytes(dtype, rows, cols));
      b.download(out, dst);
      return out;
    } finally {
      b.free(src);
      b.free(dst);
    }
  }
}

/**
 * Writes a packed [rows, cols] matrix as rows [rowOffset, …) of dst (same format): the blocks in
 * place, the per-row data after all of dst's rows.
 */
function writeMatrixRows(
  backend: NativeBackend,
  bytes: Uint8Array,
  shape: { rows: number; cols: number },
  dst: DeviceMatrix,
  rowOffset: number,
): void {
  const format = formatInfo(dst.dtype);
  const blockRowBytes = (shape.cols / format.blockLen) * format.blockBytes;
  const at = (p: DevicePtr, n: number) => offset(p, n);
  backend.upload(
    at(dst.ptr, rowOffset * blockRowBytes),
    bytes.subarray(0, shape.rows * blockRowBytes),
  );
  if (format.rowBytes > 0) {
    backend.upload(
      at(dst.ptr, dst.rows * blockRowBytes + rowOffset * format.rowBytes),
      bytes.subarray(shape.rows * blockRowBytes),
    );
  }
}
