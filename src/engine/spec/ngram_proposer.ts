// The n-gram proposer behind the engine's Proposer interface: stateless, it reads each request's
// tokens (prompt and output) and nothing else.
import type { EngineRequest } from "../request.ts";
import { checkNgramOptions, type NgramOptions, proposeNgram } from "./ngram.ts";
import type { DraftProposal, Proposer } from "./proposer.ts";

export class NgramProposer implements Proposer {
  readonly method = "ngram";
  readonly options: NgramOptions;

  constructor(options: NgramOptions) {
    checkNgramOptions(options);
    this.options = options;
  }

  propose(
    requests: readonly EngineRequest[],
    numTokens: (request: EngineRequest) => number,
  ): Map<string, DraftProposal> {
    const out = new Map<string, DraftProposal>();
    for (const request of requests) {
      const tokenIds = proposeNgram(request.tokenIds, numTokens(request), this.options);
      if (tokenIds.length > 0) out.set(request.id, { tokenIds });
    }
    return out;
  }

  free(): void {}

  release(): void {}
}
