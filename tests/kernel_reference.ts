// Plain reference implementations of every native kernel, in double precision, for kernels_test.ts.
//
// Each function is the straightforward loop nest of the kernel's math, with no tiling or tricks, so
// that a disagreement points at the optimized native code. Inputs are f32 values (as decoded from
// their storage dtype); outputs are Float64Array.

// --- Seeded random numbers

/** mulberry32: a tiny 32-bit PRNG, so every failing case is reproducible from its seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return function next(): number {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n uniform f32 values in [lo, hi). */
export function randomF32(rand: () => number, n: number, lo = -1, hi = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * rand();
  return out;
}

/** A random integer in [lo, hi]. */
export function randomInt(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

// --- f16 / bf16 encode and decode

/** Rounds x to the nearest integer, ties to even. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** floor(log2(a)) for a > 0, exact (Math.log2 can be off by one next to powers of two). */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  return e;
}

/**
 * Encodes a number (first rounded to f32) as an IEEE binary format with `expBits` exponent and
 * `mantBits` mantissa bits, rounding to nearest even. Written arithmetically, unlike the native
 * bit manipulation, so the two are independent.
 */
function encodeMinifloat(value: number, expBits: number, mantBits: number): number {
  const v = Math.fround(value);
  const signBit = 1 << (expBits + mantBits);
  const expMax = (1 << expBits) - 1;
  const infBits = expMax << mantBits;
  if (Number.isNaN(v)) return infBits | (1 << (mantBits - 1));
  const sign = v < 0 || Object.is(v, -0) ? signBit : 0;
  const a = Math.abs(v);
  const bias = (1 << (expBits - 1)) - 1;
  const eMin = 1 - bias;
  if (a === 0) return sign;
  if (a === Infinity) return sign | infBits;
  if (a < 2 ** eMin) {
    // Subnormal (or rounds up to the smallest normal, which has the same bit pattern).
    return sign | roundHalfEven(a / 2 ** (eMin - mantBits));
  }
  let e = exponentOf(a);
  let q = roundHalfEven(a / 2 ** (e - mantBits)); // in [2^mant, 2^(mant+1)]
  if (q === 2 ** (mantBits + 1)) {
    e++;
    q = 2 ** mantBits;
  }
  if (e > bias) return sign | infBits;
  return sign | ((e + bias) << mantBits) | (q - 2 ** mantBits);
}

function decodeMinifloat(bits: number, expBits: number, mantBits: number): number {
  const bias = (1 << (expBits - 1)) - 1;
  const expMax = (1 << expBits) - 1;
  const sign = bits >> (expBits + mantBits) & 1 ? -1 : 1;
  const e = (bits >> mantBits) & expMax;
  const mant = bits & ((1 << mantBits) - 1);
  if (e === 0) return sign * mant * 2 ** (1 - bias - mantBits);
  if (e === expMax) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 2 ** mantBits) * 2 ** (e - bias);
}

export function f32ToF16Bits(value: number): number {
  return encodeMinifloat(value, 5, 10);
}

export function f16BitsToF32(bits: number): number {
  return decodeMinifloat(bits, 5, 10);
}

export function f32ToBf16Bits(value: number): number {
  return encodeMinifloat(value, 8, 7);
}

export function bf16BitsToF32(bits: number): number {
  return decodeMinifloat(bits, 8, 7);
}

/** Storage dtypes, numbered like dl_dtype. */
export type DtypeId = 0 | 1 | 2;

/** Encodes values into the bytes of a buffer of `dtype` (f32, f16 or bf16). */
export function encode(values: ArrayLike<number>, dtype: DtypeId): Float32Array | Uint16Array {
  if (dtype === 0) return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    out[i] = dtype === 1 ? f32ToF16Bits(values[i]) : f32ToBf16Bits(values[i]);
  }
  return out;
}

/** Decodes a buffer of `dtype` to the f32 values it stores. */
export function decode(stored: Float32Array | Uint16Array, dtype: DtypeId): Float64Array {
  const out = new Float64Array(stored.length);
  for (let i = 0; i < stored.length; i++) {
    out[i] = dtype === 0
      ? stored[i]
      : dtype === 1
      ? f16BitsToF32(stored[i])
      : bf16BitsToF32(stored[i]);
  }
  return out;
}

// --- Kernels

/** out[t] = table[tokenIds[t]]: [numTokens, dim]. */
export function embedding(
  table: ArrayLike<number>,
  tokenIds: ArrayLike<number>,
  dim: number,
): Float64Array {
  const out = new Float64Array(tokenIds.length * dim);
  for (let t = 0; t < tokenIds.length; t++) {
    for (let i = 0; i < dim; i++) out[t * dim + i] = table[tokenIds[t] * dim + i];
  }
  return out;
}

/** out = x / sqrt(mean(x^2) + eps) * weight, row by row. */
export function rmsnorm(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  numTokens: number,
  dim: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(numTokens * dim);
  for (let t = 0; t < numTokens; t++) {
    let sumSquares = 0;
    for (let i = 0; i < dim; i++) sumSquares += x[t * dim + i] ** 2;
    const scale = 1 / Math.sqrt(sumSquares / dim + eps);
    for (let i = 0; i < dim; i++) out[t * dim + i] = x[t * dim + i] * scale * weight[i];
  }
  return out;
}

/** out[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]. */
export function matmul(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  m: number,
  n: number,
  k: number,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = bias ? bias[j] : 0;
      for (let c = 0; c < k; c++) sum += x[i * k + c] * w[j * k + c];
      out[i * n + j] = sum;
    }
  }
  return out;
}

/**
 * Rotary embedding of the first numHeads heads of each row, returning the whole rotated buffer.
 * The angle is position * invFreq[i] rounded to f32 (as the native code does); cos and sin are
 * then taken in double.
 */
export function rope(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  invFreq: ArrayLike<number>,
  numTokens: number,
  numHeads: number,
  headDim: number,
  rotaryDim: number,
  rowStride: number,
  style: 0 | 1,
): Float64Array {
  const out = Float64Array.from(x);
  const half = rotaryDim / 2;
  for (let t = 0; t < numTokens; t++) {
    for (let h = 0; h < numHeads; h++) {
      const base = t * rowStride + h * headDim;
      for (let i = 0; i < half; i++) {
        const theta = Math.fround(positions[t] * invFreq[i]);
        const [ia, ib] = style === 0 ? [i, i + half] : [2 * i, 2 * i + 1];
        const a = x[base + ia], b = x[base + ib];
        out[base + ia] = a * Math.cos(theta) - b * Math.sin(theta);
        out[base + ib] = b * Math.cos(theta) + a * Math.sin(theta);
      }
    }
  }
  return out;
}

/** out = silu(gate) * up, each row of gateUp being [gate (dim) | up (dim)]. */
export function siluMul(gateUp: ArrayLike<number>, numTokens: number, dim: number): Float64Array {
  const out = new Float64Array(numTokens * dim);
  for (let t = 0; t < numTokens; t++) {
    for (let i = 0; i < dim; i++) {
      const g = gateUp[t * 2 * dim + i], u = gateUp[t * 2 * dim + dim + i];
      out[t * dim + i] = g / (1 + Math.exp(-g)) * u;
    }
  }
  return out;
}

export function add(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

export function gatherRows(
  x: ArrayLike<number>,
  rows: ArrayLike<number>,
  dim: number,
): Float64Array {
  const out = new Float64Array(rows.length * dim);
  for (let r = 0; r < rows.length; r++) {
    for (let i = 0; i < dim; i++) out[r * dim + i] = x[rows[r] * dim + i];
  }
  return out;
}

/**
 * The cache contents after writing each token's K and V heads at its slot (negative slots skip),
 * as f32 values to be encoded in the cache dtype: starting from `kCache`/`vCache` (dense copies).
 */
export function kvWrite(
  kCache: Float64Array,
  vCache: Float64Array,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  slotMapping: ArrayLike<number>,
  numKvHeads: number,
  headDim: number,
  rowStride: number,
  blockSize: number,
): void {
  for (let t = 0; t < slotMapping.length; t++) {
    const slot = slotMapping[t];
    if (slot < 0) continue;
    const block = Math.floor(slot / blockSize), offsetInBlock = slot % blockSize;
    for (let h = 0; h < numKvHeads; h++) {
      for (let d = 0; d < headDim; d++) {
        const dst = ((block * numKvHeads + h) * blockSize + offsetInBlock) * headDim + d;
        kCache[dst] = k[t * rowStride + h * headDim + d];
        vCache[dst] = v[t * rowStride + h * headDim + d];
      }
    }
  }
}

/** Arguments of the attention reference, mirroring dl_paged_attention. */
export interface AttentionProblem {
  q: ArrayLike<number>; // [numTokens, qRowStride]
  kCache: ArrayLike<number>; // [numBlocks, numKvHeads, blockSize, headDim], decoded
  vCache: ArrayLike<number>;
  blockTables: ArrayLike<number>; // [numSeqs, maxBlocksPerSeq]
  seqLens: ArrayLike<number>; // [numSeqs]
  queryStart: ArrayLike<number>; // [numSeqs + 1]
  numSeqs: number;
  numTokens: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  qRowStride: number;
  blockSize: number;
  maxBlocksPerSeq: number;
  scale: number;
}

/**
 * Naive causal attention: gathers each sequence's K and V into dense [seqLen, headDim] arrays,
 * then for each query takes a full softmax over the positions it may see.
 */
export function pagedAttention(p: AttentionProblem): Float64Array {
  const { headDim, blockSize, numKvHeads } = p;
  const out = new Float64Array(p.numTokens * p.numHeads * headDim);
  const group = p.numHeads / numKvHeads;
  for (let s = 0; s < p.numSeqs; s++) {
    const seqLen = p.seqLens[s];
    const numNew = p.queryStart[s + 1] - p.queryStart[s];
    for (let kvHead = 0; kvHead < numKvHeads; kvHead++) {
      // Dense K and V of this sequence and KV head: [seqLen, headDim].
      const keys: number[][] = [], values: number[][] = [];
      for (let pos = 0; pos < seqLen; pos++) {
        const block = p.blockTables[s * p.maxBlocksPerSeq + Math.floor(pos / blockSize)];
        const base = ((block * numKvHeads + kvHead) * blockSize + pos % blockSize) * headDim;
        keys.push(Array.from({ length: headDim }, (_, d) => p.kCache[base + d]));
        values.push(Array.from({ length: headDim }, (_, d) => p.vCache[base + d]));
      }
      for (let i = 0; i < numNew; i++) {
        const t = p.queryStart[s] + i;
        const position = seqLen - numNew + i;
        for (let g = 0; g < group; g++) {
          const head = kvHead * group + g;
          const qOffset = t * p.qRowStride + head * headDim;
          const scores: number[] = [];
          for (let pos = 0; pos <= position; pos++) {
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += p.q[qOffset + d] * keys[pos][d];
            scores.push(dot * p.scale);
          }
          const max = Math.max(...scores);
          const weights = scores.map((x) => Math.exp(x - max));
          const total = weights.reduce((a, b) => a + b, 0);
          for (let d = 0; d < headDim; d++) {
            let acc = 0;
            for (let pos = 0; pos <= position; pos++) acc += weights[pos] * values[pos][d];
            out[(t * p.numHeads + head) * headDim + d] = acc / total;
          }
        }
      }
    }
  }
  return out;
}
