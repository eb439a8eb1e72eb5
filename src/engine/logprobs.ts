// Log-probabilities of a sampled token and the most likely alternatives, from one logits row.
import type { TokenLogprob } from "./request.ts";

/** log softmax(row)[token] plus the `numTop` most likely tokens, most likely first. */
export function topLogprobs(row: Float32Array, token: number, numTop: number): TokenLogprob {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const logZ = max + Math.log(sum);
  const top: { tokenId: number; logprob: number }[] = [];
  if (numTop > 0) {
    // A partial selection: keep the best numTop seen so far, sorted.
    for (let i = 0; i < row.length; i++) {
      if (top.length === numTop && row[i] <= row[top[numTop - 1].tokenId]) continue;
      let at = top.length;
      while (at > 0 && row[top[at - 1].tokenId] < row[i]) at--;
      top.splice(at, 0, { tokenId: i, logprob: 0 });
      if (top.length > numTop) top.pop();
    }
    for (const t of top) t.logprob = row[t.tokenId] - logZ;
  }
  return { tokenId: token, logprob: row[token] - logZ, top };
}

/** {@link topLogprobs} plus the token's rank: 1 + the number of tokens more likely than it. */
export function rankedLogprobs(row: Float32Array, token: number, numTop: number): TokenLogprob {
  let rank = 1;
  const value = row[token];
  for (let i = 0; i < row.length; i++) if (row[i] > value) rank++;
  return { ...topLogprobs(row, token, numTop), rank };
}
