// Calibration for W8A8 and 2:4 pruning (`deno task calibrate`): the F32 model runs the serving
// engine over a text while an observer records, per layer and per linear input (the QKV and
// gate/up inputs after their RMSNorm, the o_proj and down_proj inputs), each input channel's
// max |x| and L2 norm; SmoothQuant's factors s = max|X|^α / max|W|^(1-α) follow for the two inputs
// that have an RMSNorm to fold 1/s into.
//
// The file (JSON, written next to the model as <model>.calibration.json unless --out says
// otherwise):
//   { "format": "denollm-calibration", "version": 1, "model": path, "text": path,
//     "numTokens": tokens seen, "alpha": α, "hiddenSize": h, "intermediateSize": i,
//     "layers": [ { "qkv":    { "absMax": [h], "l2": [h], "smooth": [h] },
//                   "o":      { "absMax": [q_dim], "l2": [q_dim] },
//                   "gateUp": { "absMax": [h], "l2": [h], "smooth": [h] },
//                   "down":   { "absMax": [i], "l2": [i] } }, … one per layer ] }
import { type DevicePtr, DType, type NativeBackend } from "../../ffi/native.ts";
import type { ModelConfig } from "./config.ts";
import type { ActivationSite, LlamaModel } from "./llama.ts";
import type { DeviceMatrix, Projection } from "./weights.ts";

export interface SiteStats {
  absMax: number[];
  l2: number[];
  /** SmoothQuant's per-input-channel factors (qkv and gateUp only). */
  smooth?: number[];
}

export interface LayerCalibration {
  qkv: SiteStats;
  o: SiteStats;
  gateUp: SiteStats;
  down: SiteStats;
}

export interface Calibration {
  format: "denollm-calibration";
  version: 1;
  model: string;
  text: string;
  numTokens: number;
  alpha: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: LayerCalibration[];
}

const SITES: ActivationSite[] = ["qkv", "o", "gateUp", "down"];

/** Accumulates per-channel max |x| and sum of squares at every site of every layer. */
export class ActivationStats {
  #backend: NativeBackend;
  #absMax = new Map<string, Float64Array>();
  #sumSq = new Map<string, Float64Array>();
  numTokens = 0;

  constructor(backend: NativeBackend) {
    this.#backend = backend;
  }

  /** The LlamaModel observer: rows [numTokens, cols] of f32 at `ptr`. */
  observe = (site: ActivationSite, layer: number, ptr: DevicePtr, rows: number, cols: number) => {
    const key = `${layer}.${site}`;
    let absMax = this.#absMax.get(key);
    let sumSq = this.#sumSq.get(key);
    if (absMax === undefined || sumSq === undefined) {
      absMax = new Float64Array(cols);
      sumSq = new Float64Array(cols);
      this.#absMax.set(key, absMax);
      this.#sumSq.set(key, sumSq);
    }
    const x = new Float32Array(rows * cols);
    this.#backend.synchronize();
    this.#backend.download(x, ptr);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) {
        const v = x[r * cols + j];
        absMax[j] = Math.max(absMax[j], Math.abs(v));
        sumSq[j] += v * v;
      }
    }
    if (site === "qkv" && layer === 0) this.numTokens += rows;
  };

  site(layer: number, site: ActivationSite): SiteStats {
    const absMax = this.#absMax.get(`${layer}.${site}`);
    const sumSq = this.#sumSq.get(`${layer}.${site}`);
    if (absMax === undefined || sumSq === undefined) {
      throw new Error(`No activations were seen at layer ${layer}'s ${site} input`);
    }
    return { absMax: [...absMax], l2: [...sumSq].map(Math.sqrt) };
  }
}

/** max |W| of each input column over every part of a projection (or one matrix), as f32. */
export function columnAbsMax(
  backend: NativeBackend,
  parts: readonly DeviceMatrix[],
  cols: number,
): Float64Array {
  const max = new Float64Array(cols);
  for (const part of parts) {
    const f32 = new Float32Array(part.rows * cols);
    if (part.dtype === DType.F32) {
      backend.download(f32, part.ptr);
    } else {
      const dst = backend.alloc(f32.byteLength);
      try {
        backend.dequantize({ dst, src: part.ptr, srcDtype: part.dtype, rows: part.rows, cols });
        backend.download(f32, dst);
      } finally {
        backend.free(dst);
      }
    }
    for (let i = 0; i < f32.length; i++) {
      const j = i % cols;
      max[j] = Math.max(max[j], Math.abs(f32[i]));
    }
  }
  return max;
}

/**
 * SmoothQuant's factors: s_j = max|X_j|^α / max|W_j|^(1-α), channels never active (or with zero
 * weights) left at 1, clamped to [1e-4, 1e4] so folding 1/s into the norm stays finite.
 */
export function smoothFactors(absMax: ArrayLike<number>, wMax: ArrayLike<number>, alpha: number) {
  const s: number[] = [];
  for (let j = 0; j < absMax.length; j++) {
    if (!(absMax[j] > 0) || !(wMax[j] > 0)) {
      s.push(1);
      continue;
    }
    const v = Math.pow(absMax[j], alpha) / Math.pow(wMax[j], 1 - alpha);
    s.push(Math.min(1e4, Math.max(1e-4, v)));
  }
  return s;
}

/** The statistics of a finished pass as a calibration file, with SmoothQuant's factors. */
export function buildCalibration(
  backend: NativeBackend,
  model: LlamaModel,
  stats: ActivationStats,
  meta: { model: string; text: string; alpha: number },
): Calibration {
  const c = model.config;
  const cols = (p: Projection) => columnAbsMax(backend, p.parts, p.cols);
  const layers = model.weights.layers.map((layer, l): LayerCalibration => {
    const site = (s: ActivationSite) => stats.site(l, s);
    const qkv = site("qkv");
    const gateUp = site("gateUp");
    return {
      qkv: { ...qkv, smooth: smoothFactors(qkv.absMax, cols(layer.qkv), meta.alpha) },
      o: site("o"),
      gateUp: { ...gateUp, smooth: smoothFactors(gateUp.absMax, cols(layer.gateUp), meta.alpha) },
      down: site("down"),
    };
  });
  return {
    format: "denollm-calibration",
    version: 1,
    model: meta.model,
    text: meta.text,
    numTokens: stats.numTokens,
    alpha: meta.alpha,
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    layers,
  };
}

/** Reads a calibration file and checks it fits the model; errors name the file and the mismatch. */
export async function readCalibration(path: string, config: ModelConfig): Promise<Calibration> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    throw new RangeError(
      `Expected --calibration ${path} to be a JSON file from deno task calibrate: ` +
        (error as Error).message,
    );
  }
  const cal = raw as Calibration;
  const fail = (what: string): never => {
    throw new RangeError(`Calibration file ${path} does not fit the model: ${what}`);
  };
  if (cal?.format !== "denollm-calibration" || cal.version !== 1) {
    fail(`expected "format": "denollm-calibration", "version": 1`);
  }
  if (!Array.isArray(cal.layers) || cal.layers.length !== config.numLayers) {
    fail(`expected ${config.numLayers} layers, found ${cal.layers?.length}`);
  }
  const qDim = config.numHeads * config.headDim;
  const widths: Record<ActivationSite, number> = {
    qkv: config.hiddenSize,
    o: qDim,
    gateUp: config.hiddenSize,
    down: config.intermediateSize,
  };
  cal.layers.forEach((layer, l) => {
    for (const site of SITES) {
      const s = layer?.[site];
      for (
        const key of ["absMax", "l2", ...(site === "qkv" || site === "gateUp" ? ["smooth"] : [])]
      ) {
        const v = (s as unknown as Record<string, unknown>)?.[key];
        const ok = Array.isArray(v) && v.length === widths[site] &&
          v.every((x) => typeof x === "number" && Number.isFinite(x) && x >= 0);
        if (!ok) {
          fail(`layer ${l} ${site}.${key}: expected ${widths[site]} finite numbers >= 0`);
        }
      }
      if (s.smooth?.some((x) => x === 0)) fail(`layer ${l} ${site}.smooth holds a 0`);
    }
  });
  return cal;
}

/**
 * LLM.int8()'s outlier channels of one input: those whose calibrated max |x| is at least
 * `threshold` times the median channel's, largest first, at most `limit`.
 */
export function outlierChannels(absMax: readonly number[], threshold = 6, limit = 16): number[] {
  const sorted = [...absMax].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return absMax.map((v, j) => [v, j]).filter(([v]) => median > 0 && v >= threshold * median)
    .sort((a, b) => b[0] - a[0]).slice(0, limit).map(([, j]) => j);
}
