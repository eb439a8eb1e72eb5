// Verification of proposed tokens against the target model's processed distribution p: greedy
// takes the argmax, sampling is the modified rejection sampling of Leviathan et al. and Chen et
// al. (2023), so every emitted token follows p exactly whatever the proposer proposed.
import type { TokenDistribution } from "../../sampling.ts";

/** What one draft position comes to: the token emitted there, and whether it was the draft's. */
export interface VerifiedToken {
  tokenId: number;
  isAccepted: boolean;
}

/**
 * Decides one draft position. `p` is the target's distribution at it; `q` the proposer's (a point
 * mass on `draftId` when undefined, as for n-gram); `uniform` draws from the request's generator.
 */
export type AcceptanceRule = (
  p: TokenDistribution,
  draftId: number,
  q: TokenDistribution | undefined,
  uniform: () => number,
) => VerifiedToken;

/** A token's normalized probability under a distribution (0 outside its support). */
export function probabilityOf(dist: TokenDistribution, id: number): number {
  const at = dist.ids.indexOf(id);
  return at === -1 ? 0 : dist.probs[at] / dist.total;
}

/**
 * Accept with probability min(1, p(d) / q(d)); on rejection draw from norm(max(0, p - q)). Greedy
 * (p an argmax point mass) reduces to "accept iff the draft is the argmax, else emit the argmax",
 * with no draw, so greedy output is the same token for token with or without speculation.
 */
export const rejectionSample: AcceptanceRule = (p, draftId, q, uniform) => {
  if (p.isArgmax) {
    return { tokenId: p.ids[0], isAccepted: p.ids[0] === draftId };
  }
  const pd = probabilityOf(p, draftId);
  const qd = q === undefined ? 1 : probabilityOf(q, draftId);
  // qd is 0 only for a draft its proposer could not have drawn; such a draft is never accepted.
  if (pd > 0 && qd > 0 && uniform() < Math.min(1, pd / qd)) {
    return { tokenId: draftId, isAccepted: true };
  }
  const residual = p.probs.map((x, i) => {
    const qx = q === undefined ? (p.ids[i] === draftId ? 1 : 0) : probabilityOf(q, p.ids[i]);
    return Math.max(0, x / p.total - qx);
  });
  const sum = residual.reduce((a, b) => a + b, 0);
  // p <= q everywhere can only be rounding (the draft would have been accepted): fall back to p.
  const weights = sum > 0 ? residual : p.probs.map((x) => x / p.total);
  let r = uniform() * (sum > 0 ? sum : 1);
  for (let i = 0; i < weights.length; i++) {
    r -= weights[i];
    if (r < 0) return { tokenId: p.ids[i], isAccepted: false };
  }
  return { tokenId: p.ids[weights.findLastIndex((w) => w > 0)], isAccepted: false };
};
