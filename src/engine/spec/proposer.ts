// What a proposer is to the engine: before each step it proposes up to k tokens for requests that
// are decoding, and the target verifies them all in that step's one forward pass.
import type { TokenDistribution } from "../../sampling.ts";
import type { EngineRequest } from "../request.ts";
import type { AcceptanceRule } from "./verify.ts";

/** Proposed tokens for one request, and the distributions they were drawn from. */
export interface DraftProposal {
  tokenIds: number[];
  /** One per token; absent means each token is a point mass (n-gram, greedy drafting). */
  dists?: TokenDistribution[];
}

export interface Proposer {
  /** "ngram" or "draft", for logs and benchmarks. */
  readonly method: "ngram" | "draft";
  /**
   * Proposals for `requests`, each decoding (all its tokens but the last computed); `numTokens`
   * is how many each may get at most (1 or more). Requests left out get none this step.
   */
  propose(
    requests: readonly EngineRequest[],
    numTokens: (request: EngineRequest) => number,
  ): Map<string, DraftProposal>;
  /** Drops what the proposer keeps for a request that has ended. */
  free(requestId: string): void;
  release(): void;
}

/** Speculative decoding as the engine runs it. */
export interface SpeculativeConfig {
  proposer: Proposer;
  /** k: tokens proposed per request and step at most. */
  numSpeculativeTokens: number;
  /**
   * Speculation turns itself off while more than this many requests are running: a large batch
   * is no longer memory-bound, so verifying rejected tokens costs real compute (vLLM's
   * --speculative-disable-by-batch-size). Measured in docs/speculative.md.
   */
  disableBySize: number;
  /** How draft tokens are accepted (default: `rejectionSample`); tests swap in wrong ones. */
  acceptanceRule?: AcceptanceRule;
}

/** Checks the numbers of a speculative config, naming the flags they come from. */
export function checkSpeculativeConfig(c: SpeculativeConfig): void {
  if (!Number.isInteger(c.numSpeculativeTokens) || c.numSpeculativeTokens < 1) {
    throw new RangeError(
      `--num-speculative-tokens must be an integer >= 1, got ${c.numSpeculativeTokens}`,
    );
  }
  if (!Number.isInteger(c.disableBySize) || c.disableBySize < 0) {
    throw new RangeError(
      `--speculative-disable-by-batch-size must be an integer >= 0, got ${c.disableBySize}`,
    );
  }
}
