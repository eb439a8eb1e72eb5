// Request arrival times: a Poisson process, or gamma-distributed gaps with a burstiness factor, the
// way vLLM's `get_request` draws them; and the seeded samplers the workload needs.
import { Rng } from "../../src/sampling.ts";

export { Rng };

/** A uniform draw in (0, 1): never 0, so logarithms stay finite. */
function open01(rng: Rng): number {
  let u = rng.next();
  while (u === 0) u = rng.next();
  return u;
}

/** Standard normal (Box–Muller). */
export function sampleNormal(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(open01(rng))) * Math.cos(2 * Math.PI * rng.next());
}

/** Gamma(shape, scale) by Marsaglia–Tsang; shapes below 1 use the U^(1/shape) boost. */
export function sampleGamma(rng: Rng, shape: number, scale: number): number {
  if (!(shape > 0) || !(scale > 0)) {
    throw new RangeError(`Expected a positive gamma shape and scale, got ${shape} and ${scale}`);
  }
  if (shape < 1) {
    return sampleGamma(rng, shape + 1, scale) * Math.pow(open01(rng), 1 / shape);
  }
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = sampleNormal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = open01(rng);
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v * scale;
  }
}

export interface ArrivalOptions {
  /** Requests per second; Infinity sends every request at once. */
  ratePerS: number;
  /**
   * Gamma shape of the gaps (vLLM's burstiness): 1 is a Poisson process, below 1 is burstier,
   * above 1 more regular, Infinity a fixed gap of 1/rate. Default 1.
   */
  burstiness?: number;
  seed?: number;
  /**
   * Rescale so the last arrival lands exactly at numRequests / rate, as vLLM does to keep the
   * offered load the same across seeds. Default true.
   */
  normalize?: boolean;
}

/** Send times in ms after the start, one per request, nondecreasing; the first gap is drawn too. */
export function arrivalTimesMs(numRequests: number, options: ArrivalOptions): number[] {
  const { ratePerS, burstiness = 1, seed = 0, normalize = true } = options;
  if (!Number.isSafeInteger(numRequests) || numRequests < 0) {
    throw new RangeError(`Expected a non-negative request count, got ${numRequests}`);
  }
  if (!(ratePerS > 0)) throw new RangeError(`Expected a positive request rate, got ${ratePerS}`);
  if (!(burstiness > 0)) throw new RangeError(`Expected a positive burstiness, got ${burstiness}`);
  if (ratePerS === Infinity) return new Array(numRequests).fill(0);
  const rng = new Rng(seed);
  const times: number[] = [];
  let t = 0;
  for (let i = 0; i < numRequests; i++) {
    // Mean gap = shape * scale = 1 / rate.
    t += burstiness === Infinity
      ? 1 / ratePerS
      : sampleGamma(rng, burstiness, 1 / (ratePerS * burstiness));
    times.push(t * 1000);
  }
  if (normalize && numRequests > 0) {
    const factor = (numRequests / ratePerS) * 1000 / times[numRequests - 1];
    for (let i = 0; i < numRequests; i++) times[i] *= factor;
  }
  return times;
}
