// Helpers shared by the llama.cpp comparisons: the same prompt ids as tools/llamacpp/reference.mjs
// builds, and medians.
import { percentile } from "./serve/metrics.ts";

/** The median, as numpy computes it (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

/** [BOS] + LCG ids from `seed`, skipping special ids: the ids reference.mjs builds for llama.cpp. */
export function benchPromptIds(
  numTokens: number,
  seed: number,
  vocab: number,
  bos: number,
  isSpecial: (id: number) => boolean,
): number[] {
  let s = seed >>> 0;
  const ids = [bos];
  while (ids.length < numTokens) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const t = s % vocab;
    if (!isSpecial(t)) ids.push(t);
  }
  return ids;
}
