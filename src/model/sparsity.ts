// Host-side packers of the W8A8 and 2:4 formats (DL_DTYPE_TABLE's rows from W8A8 on, laid out as
// ffi/denollm.h documents them): per-row int8 quantization, the mixed decomposition's outlier
// columns, 2:4 pruning (magnitude or Wanda: |w| times the input channel's activation norm), the
// check that a matrix already is 2:4, and the compressed blocks.
import { f32ToF16Bits } from "../../tools/random_model/random_model.ts";

/** Outlier slots of a W8A8_MIXED matrix and the id of an unused one. */
export const MIXED_OUTLIERS = 16;
export const NO_OUTLIER = 0xffff;
const MIXED_ROW_BYTES = 8 + 4 * MIXED_OUTLIERS;

function sumOf(q: Int8Array): number {
  let s = 0;
  for (const v of q) s += v;
  return s;
}

function f16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  f32ToF16Bits(values, out);
  return out;
}

/** Symmetric int8 of one row: scale = max|x| / 127, q = round(x / scale) (Math.round: no ties). */
function int8Row(x: Float32Array, q: Int8Array): number {
  let amax = 0;
  for (const v of x) amax = Math.max(amax, Math.abs(v));
  const inv = amax > 0 ? 127 / amax : 0;
  for (let j = 0; j < x.length; j++) q[j] = Math.max(-127, Math.min(127, Math.round(x[j] * inv)));
  return amax / 127;
}

/** W8A8: [rows, cols] int8, then per row the f32 scale and the int32 sum of its values. */
export function packW8a8(w: Float32Array, rows: number, cols: number): Uint8Array {
  const out = new Uint8Array(rows * cols + 8 * rows);
  const q = new Int8Array(out.buffer, 0, rows * cols);
  const data = new DataView(out.buffer, rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = q.subarray(r * cols, (r + 1) * cols);
    data.setFloat32(8 * r, int8Row(w.subarray(r * cols, (r + 1) * cols), row), true);
    data.setInt32(8 * r + 4, sumOf(row), true);
  }
  return out;
}

/**
 * W8A8_MIXED: the int8 rows with the outlier columns stored as 0 (and left out of each row's
 * scale), then per row the f32 scale, the outlier ids and the row's f16 weights at them.
 */
export function packW8a8Mixed(
  w: Float32Array,
  rows: number,
  cols: number,
  outliers: readonly number[],
): Uint8Array {
  if (outliers.length > MIXED_OUTLIERS) {
    throw new RangeError(
      `Expected at most ${MIXED_OUTLIERS} outlier channels, found ${outliers.length}`,
    );
  }
  const ids = [...outliers];
  if (
    new Set(ids).size !== ids.length || ids.some((c) => !Number.isInteger(c) || c < 0 || c >= cols)
  ) {
    throw new RangeError(`Expected distinct outlier channels in [0, ${cols}), found ${ids}`);
  }
  const out = new Uint8Array(rows * cols + MIXED_ROW_BYTES * rows);
  const q = new Int8Array(out.buffer, 0, rows * cols);
  const data = new DataView(out.buffer, rows * cols);
  const row = new Float32Array(cols);
  const kept = new Float32Array(MIXED_OUTLIERS);
  for (let r = 0; r < rows; r++) {
    row.set(w.subarray(r * cols, (r + 1) * cols));
    kept.fill(0);
    ids.forEach((c, t) => {
      kept[t] = row[c];
      row[c] = 0;
    });
    const qr = q.subarray(r * cols, (r + 1) * cols);
    const s = int8Row(row, qr);
    const at = MIXED_ROW_BYTES * r;
    data.setFloat32(at, s, true);
    data.setInt32(at + 4, sumOf(qr), true);
    const halves = f16(kept);
    for (let t = 0; t < MIXED_OUTLIERS; t++) {
      data.setUint16(at + 8 + 2 * t, t < ids.length ? ids[t] : NO_OUTLIER, true);
      data.setUint16(at + 8 + 2 * MIXED_OUTLIERS + 2 * t, halves[t], true);
    }
  }
  return out;
}

// --- 2:4 sparsity

/** Whether every group of 4 consecutive elements of every row has at most 2 non-zeros. */
export function is2of4(w: Float32Array, cols: number): boolean {
  if (cols % 4 !== 0) return false;
  for (let g = 0; g < w.length; g += 4) {
    const nonZero = (w[g] !== 0 ? 1 : 0) + (w[g + 1] !== 0 ? 1 : 0) + (w[g + 2] !== 0 ? 1 : 0) +
      (w[g + 3] !== 0 ? 1 : 0);
    if (nonZero > 2) return false;
  }
  return true;
}

/**
 * Prunes w in place to 2:4 along each row: in every group of 4 the two elements of largest score
 * stay, score = |w| (magnitude) or |w| * norms[column] (Wanda, norms the input channels'
 * activation L2 norms from calibration). Ties keep the earlier element.
 */
export function prune2of4(w: Float32Array, cols: number, norms?: Float32Array): void {
  if (cols % 4 !== 0) throw new RangeError(`Expected rows a multiple of 4 long, found ${cols}`);
  if (norms !== undefined && norms.length !== cols) {
    throw new RangeError(`Expected ${cols} activation norms, found ${norms.length}`);
  }
  const s = new Float64Array(4);
  for (let g = 0; g < w.length; g += 4) {
    const col = g % cols;
    for (let p = 0; p < 4; p++) {
      s[p] = Math.abs(w[g + p]) * (norms === undefined ? 1 : norms[col + p]);
    }
    // The best two positions, the earlier one winning ties.
    let a = 0;
    for (let p = 1; p < 4; p++) if (s[p] > s[a]) a = p;
    let b = a === 0 ? 1 : 0;
    for (let p = 0; p < 4; p++) if (p !== a && s[p] > s[b]) b = p;
    for (let p = 0; p < 4; p++) if (p !== a && p !== b) w[g + p] = 0;
  }
}

/**
 * The nibble p0 | p1 << 2 of a group's two kept positions (p0 < p1): its non-zeros, then the
 * first zeros when fewer than 2 are non-zero.
 */
function keptNibble(w: Float32Array, g: number): number {
  let p0 = -1;
  let p1 = -1;
  for (let p = 0; p < 4; p++) {
    if (w[g + p] === 0) continue;
    if (p0 < 0) p0 = p;
    else if (p1 < 0) p1 = p;
    else throw new RangeError(`Expected at most 2 non-zeros in a group of 4, found more at ${g}`);
  }
  for (let p = 0; p < 4 && p1 < 0; p++) {
    if (p === p0) continue;
    if (p0 < 0) p0 = p;
    else if (p > p0) p1 = p;
    else {
      p1 = p0;
      p0 = p;
    }
  }
  return p0 | (p1 << 2);
}

/** The 2:4 formats packed here (ffi/formats.ts names). */
export type SparseFormat = "f16_2_4" | "int8_2_4" | "w8a8_2_4" | "int4_2_4";

/** Packs a 2:4 [rows, cols] matrix (is2of4) into a 2:4 format's blocks (and row scales). */
export function pack2of4(
  w: Float32Array,
  rows: number,
  cols: number,
  format: SparseFormat,
): Uint8Array {
  const block = format === "int4_2_4" ? 128 : 32;
  if (cols % block !== 0) {
    throw new RangeError(`Expected rows a multiple of ${block} long for ${format}, found ${cols}`);
  }
  const numGroups = cols / 4;
  // The kept values and positions of every group, row-major.
  const values = new Float32Array(rows * numGroups * 2);
  const nibbles = new Uint8Array(rows * numGroups);
  for (let i = 0; i < rows * numGroups; i++) {
    const nib = keptNibble(w, 4 * i);
    values[2 * i] = w[4 * i + (nib & 3)];
    values[2 * i + 1] = w[4 * i + (nib >> 2)];
    nibbles[i] = nib;
  }
  const positions = (dst: Uint8Array, at: number, group0: number, count: number) => {
    for (let g = 0; g < count; g += 2) {
      dst[at + g / 2] = nibbles[group0 + g] | (nibbles[group0 + g + 1] << 4);
    }
  };
  if (format === "f16_2_4") {
    const out = new Uint8Array((rows * cols / 32) * 36);
    const halves = f16(values);
    const view = new DataView(out.buffer);
    for (let b = 0; b < rows * cols / 32; b++) {
      for (let t = 0; t < 16; t++) view.setUint16(36 * b + 2 * t, halves[16 * b + t], true);
      positions(out, 36 * b + 32, 8 * b, 8);
    }
    return out;
  }
  if (format === "int4_2_4") {
    const out = new Uint8Array((rows * cols / 128) * 52);
    const view = new DataView(out.buffer);
    for (let b = 0; b < rows * cols / 128; b++) {
      const kept = values.subarray(64 * b, 64 * (b + 1));
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of kept) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      const d = hi > lo ? (hi - lo) / 15 : 0;
      const dm = f16(Float32Array.of(d, lo));
      view.setUint16(52 * b, dm[0], true);
      view.setUint16(52 * b + 2, dm[1], true);
      const inv = d > 0 ? 1 / d : 0;
      const q = (v: number) => Math.max(0, Math.min(15, Math.round((v - lo) * inv)));
      for (let g = 0; g < 32; g++) out[52 * b + 4 + g] = q(kept[2 * g]) | (q(kept[2 * g + 1]) << 4);
      positions(out, 52 * b + 36, 32 * b, 32);
    }
    return out;
  }
  // INT8_2_4 and W8A8_2_4: per-row symmetric int8 of the kept values, 20 bytes per 32; then the
  // f32 scale per row (W8A8_2_4: and the int32 sum of the row's kept values).
  const blockRowBytes = (cols / 32) * 20;
  const dataBytes = format === "w8a8_2_4" ? 8 : 4;
  const out = new Uint8Array(rows * blockRowBytes + dataBytes * rows);
  const scales = new DataView(out.buffer, rows * blockRowBytes);
  const q = new Int8Array(cols / 2);
  for (let r = 0; r < rows; r++) {
    const s = int8Row(values.subarray(r * cols / 2, (r + 1) * cols / 2), q);
    scales.setFloat32(dataBytes * r, s, true);
    if (dataBytes === 8) scales.setInt32(8 * r + 4, sumOf(q), true);
    for (let b = 0; b < cols / 32; b++) {
      const at = r * blockRowBytes + 20 * b;
      for (let t = 0; t < 16; t++) out[at + t] = q[16 * b + t] & 0xff;
      positions(out, at + 16, r * numGroups + 8 * b, 8);
    }
  }
  return out;
}
