// Turns one row of logits into a token: greedy, or temperature with top-k, top-p and min-p
// filtering, from a seeded generator so the same seed gives the same output.

export interface SamplingParams {
  /** 0 means greedy (argmax). */
  temperature: number;
  /** Keep the k most likely tokens; 0 or less disables. */
  topK: number;
  /** Keep the smallest set whose probability reaches topP; 1 disables. */
  topP: number;
  /** Drop tokens whose probability is below minP times the top one; 0 disables. */
  minP: number;
  /** Seed of the generator; undefined draws one at random. */
  seed?: number;
  /** OpenAI's penalties on tokens already generated: flat once present, and per occurrence. */
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Hugging Face's multiplicative penalty on tokens of the prompt and the output; 1 disables. */
  repetitionPenalty?: number;
  /** Added to the logits of the given token ids before anything else. */
  logitBias?: Record<number, number>;
}

/** The tokens a request has so far, for the penalties. */
export interface TokenHistory {
  tokenIds: readonly number[];
  numPromptTokens: number;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, minP: 0 };

/** Checks ranges with messages naming the parameter and the value found. */
export function validateSamplingParams(p: SamplingParams): void {
  if (!Number.isFinite(p.temperature) || p.temperature < 0) {
    throw new RangeError(`temperature must be a number >= 0, got ${p.temperature}`);
  }
  if (!Number.isInteger(p.topK)) throw new RangeError(`top_k must be an integer, got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${p.topP}`);
  if (!(p.minP >= 0 && p.minP <= 1)) throw new RangeError(`min_p must be in [0, 1], got ${p.minP}`);
  if (p.seed !== undefined && !Number.isSafeInteger(p.seed)) {
    throw new RangeError(`seed must be an integer, got ${p.seed}`);
  }
  for (const key of ["presencePenalty", "frequencyPenalty"] as const) {
    const v = p[key] ?? 0;
    if (!(v >= -2 && v <= 2)) throw new RangeError(`${key} must be in [-2, 2], got ${v}`);
  }
  const rep = p.repetitionPenalty ?? 1;
  if (!(rep > 0 && Number.isFinite(rep))) {
    throw new RangeError(`repetitionPenalty must be a number > 0, got ${rep}`);
  }
  for (const [id, bias] of Object.entries(p.logitBias ?? {})) {
    if (!/^\d+$/.test(id) || !(bias >= -100 && bias <= 100)) {
      throw new RangeError(
        `logitBias must map token ids to numbers in [-100, 100], got ${id}: ${bias}`,
      );
    }
  }
}

/** Whether any penalty or bias changes the logits (so the row must be copied first). */
function adjustsLogits(p: SamplingParams): boolean {
  return (p.presencePenalty ?? 0) !== 0 || (p.frequencyPenalty ?? 0) !== 0 ||
    (p.repetitionPenalty ?? 1) !== 1 || Object.keys(p.logitBias ?? {}).length > 0;
}

/**
 * Applies logit bias, then the repetition penalty (prompt and output tokens: positive logits
 * divided, negative multiplied), then presence and frequency penalties (output tokens only).
 * Returns a copy; the row itself may be shared by the n samples of a prompt.
 */
export function adjustLogits(
  row: Float32Array,
  p: SamplingParams,
  history?: TokenHistory,
): Float32Array {
  const out = row.slice();
  for (const [id, bias] of Object.entries(p.logitBias ?? {})) {
    const i = Number(id);
    if (i < out.length) out[i] += bias;
  }
  if (!history) return out;
  const rep = p.repetitionPenalty ?? 1;
  if (rep !== 1) {
    for (const id of new Set(history.tokenIds)) {
      out[id] = out[id] > 0 ? out[id] / rep : out[id] * rep;
    }
  }
  const presence = p.presencePenalty ?? 0;
  const frequency = p.frequencyPenalty ?? 0;
  if (presence !== 0 || frequency !== 0) {
    const counts = new Map<number, number>();
    for (let i = history.numPromptTokens; i < history.tokenIds.length; i++) {
      const id = history.tokenIds[i];
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    for (const [id, count] of counts) out[id] -= presence + frequency * count;
  }
  return out;
}

/**
 * Sets the logits of tokens whose bit in `allowed` is clear to -Infinity, in place, and returns
 * `row`. Words that allow all or none of their 32 tokens (most of them) take one step each.
 */
export function applyTokenMask(row: Float32Array, allowed: Int32Array): Float32Array {
  const numWords = Math.ceil(row.length / 32);
  for (let w = 0; w < numWords; w++) {
    const word = allowed[w] ?? 0;
    if (word === -1) continue;
    const base = w * 32;
    if (word === 0) {
      row.fill(-Infinity, base, Math.min(base + 32, row.length));
      continue;
    }
    for (let bit = 0; bit < 32 && base + bit < row.length; bit++) {
      if (((word >>> bit) & 1) === 0) row[base + bit] = -Infinity;
    }
  }
  return row;
}

/** Index of the largest value; the lowest index wins ties, as in llama.cpp's greedy sampler. */
export function argmax(row: Float32Array): number {
  let best = 0;
  let bestValue = row[0];
  for (let i = 1; i < row.length; i++) {
    if (row[i] > bestValue) {
      bestValue = row[i];
      best = i;
    }
  }
  return best;
}

/** A small, fast, seedable PRNG (SplitMix32-style); uniform floats in [0, 1). */
export class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = (seed ^ 0x9e3779b9) >>> 0;
  }
  next(): number {
    let z = (this.#state = (this.#state + 0x9e3779b9) >>> 0);
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  }
}

/**
 * A processed next-token distribution: the candidates that survive top-k, top-p and min-p, most
 * likely first, with probabilities that sum to `total` (not renormalized, exactly as `sample`
 * draws from them). A greedy row is the point mass on its argmax.
 */
export interface TokenDistribution {
  ids: number[];
  probs: number[];
  total: number;
  /** Set for the argmax point mass (greedy, or no finite logit): taken without a draw. */
  isArgmax?: true;
}

/** Samples with one Sampler per sequence so each keeps its own random stream. */
export class Sampler {
  readonly params: SamplingParams;
  /**
   * The seed in use: the given one, or one drawn at random once. Device sampling (dl_sample)
   * draws from (seed, token index) with it, so an unseeded request still has one stream.
   */
  readonly seed: number;
  #rng: Rng;

  constructor(params: SamplingParams) {
    validateSamplingParams(params);
    this.params = params;
    this.seed = params.seed ?? Math.floor(Math.random() * 2 ** 31);
    this.#rng = new Rng(this.seed);
  }

  /** Whether any penalty or logit bias changes the logits before sampling. */
  get adjustsLogits(): boolean {
    return adjustsLogits(this.params);
  }

  /** Whether this sampler always takes the argmax (and so never draws from its generator). */
  get isGreedy(): boolean {
    return this.params.temperature === 0 || this.params.topK === 1;
  }

  /** One uniform draw in [0, 1) from this sequence's generator (speculative acceptance tests). */
  uniform(): number {
    return this.#rng.next();
  }

  /**
   * Samples one token id from `logits`. With `allowed` (a bitmask: bit `id & 31` of word
   * `id >> 5`, as constrained decoding produces), tokens outside it are never chosen.
   */
  sample(logits: Float32Array, history?: TokenHistory, allowed?: Int32Array): number {
    const dist = this.distribution(logits, history, allowed);
    return dist.isArgmax ? dist.ids[0] : this.draw(dist);
  }

  /** Draws a token from a distribution `distribution` made (one generator draw). */
  draw(dist: TokenDistribution): number {
    const { ids, probs } = dist;
    let r = this.#rng.next() * dist.total;
    for (let i = 0; i < ids.length; i++) {
      r -= probs[i];
      if (r < 0) return ids[i];
    }
    return ids[ids.length - 1];
  }

  /**
   * The distribution `sample` draws from: logit bias, penalties, the mask, temperature, top-k,
   * top-p and min-p applied. Speculative verification uses it as the target's p, so accepted
   * tokens follow exactly what normal sampling would.
   */
  distribution(
    logits: Float32Array,
    history?: TokenHistory,
    allowed?: Int32Array,
  ): TokenDistribution {
    const p = this.params;
    let row = adjustsLogits(p) ? adjustLogits(logits, p, history) : logits;
    if (allowed !== undefined) row = applyTokenMask(row === logits ? row.slice() : row, allowed);
    const pointMass = (): TokenDistribution => ({
      ids: [argmax(row)],
      probs: [1],
      total: 1,
      isArgmax: true,
    });
    if (this.isGreedy) return pointMass();

    // Candidates sorted by logit; top-k cuts the list before the softmax.
    let ids = Array.from(row.keys()).filter((i) => Number.isFinite(row[i]));
    if (ids.length === 0) return pointMass();
    ids.sort((a, b) => row[b] - row[a] || a - b);
    if (p.topK > 0 && p.topK < ids.length) ids = ids.slice(0, p.topK);

    const maxLogit = row[ids[0]];
    let probs = ids.map((i) => Math.exp((row[i] - maxLogit) / p.temperature));
    let sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((x) => x / sum);

    let keep = probs.length;
    if (p.topP < 1) {
      let cumulative = 0;
      for (let i = 0; i < probs.length; i++) {
        cumulative += probs[i];
        if (cumulative >= p.topP) {
          keep = i + 1;
          break;
        }
      }
    }
    if (p.minP > 0) {
      const threshold = probs[0] * p.minP;
      let count = 0;
      while (count < keep && probs[count] >= threshold) count++;
      keep = Math.max(1, count);
    }
    sum = 0;
    for (let i = 0; i < keep; i++) sum += probs[i];
    return { ids: ids.slice(0, keep), probs: probs.slice(0, keep), total: sum };
  }
}
