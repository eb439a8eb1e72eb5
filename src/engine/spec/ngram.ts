// The n-gram (prompt lookup) proposer: the sequence's last n tokens are looked up earlier in its
// own prompt and output, and the tokens that followed that occurrence are proposed. Free to run,
// and right whenever the output copies or edits text it has seen (vLLM's `ngram` method).

export interface NgramOptions {
  /** Longest suffix tried first. */
  maxN: number;
  /** Shortest suffix accepted as a match. */
  minN: number;
}

/** Checks an n-gram range, naming the flags it comes from. */
export function checkNgramOptions(o: NgramOptions): void {
  if (!Number.isInteger(o.minN) || o.minN < 1) {
    throw new RangeError(`--ngram-prompt-lookup-min must be an integer >= 1, got ${o.minN}`);
  }
  if (!Number.isInteger(o.maxN) || o.maxN < o.minN) {
    throw new RangeError(
      `--ngram-prompt-lookup-max must be an integer >= --ngram-prompt-lookup-min (${o.minN}), ` +
        `got ${o.maxN}`,
    );
  }
}

/**
 * Up to `k` tokens that followed the most recent earlier occurrence of the longest suffix of
 * `tokens` (from `maxN` down to `minN` tokens long); empty when no suffix recurs. The most recent
 * occurrence wins because generated text tends to continue what it copied last.
 */
export function proposeNgram(tokens: ArrayLike<number>, k: number, o: NgramOptions): number[] {
  const len = tokens.length;
  if (k <= 0) return [];
  for (let n = Math.min(o.maxN, len - 1); n >= o.minN; n--) {
    // A match at i covers [i, i + n); it must end before the suffix itself ends.
    for (let i = len - n - 1; i >= 0; i--) {
      let j = 0;
      while (j < n && tokens[i + j] === tokens[len - n + j]) j++;
      if (j < n) continue;
      const end = Math.min(i + n + k, len);
      return Array.prototype.slice.call(tokens, i + n, end) as number[];
    }
  }
  return [];
}
