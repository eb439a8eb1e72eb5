// One request's state in the engine: its tokens, how many have KV computed, and how it ends.
import { Sampler, type SamplingParams } from "../sampling.ts";
import { StopStringMatcher } from "../stop.ts";
import { IncrementalDetokenizer, type TextTokenizer } from "../tokenizer/tokenizer.ts";

export type RequestStatus = "waiting" | "running" | "finished";
export type FinishReason = "stop" | "length" | "abort";

/** What a caller asks for; validated by the engine before a Request is made. */
export interface RequestParams {
  maxTokens: number;
  sampling: SamplingParams;
  stopStrings?: string[];
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  /** Lower values are served first and preempted last (vLLM's convention). Default 0. */
  priority?: number;
  /** Number of parallel samples of the prompt; they share the prompt's KV blocks. Default 1. */
  n?: number;
  /** Return the sampled token's logprob and this many top alternatives (0 = only the token). */
  logprobs?: number;
  /** Separates prefix-cache entries, e.g. per tenant. */
  cacheSalt?: string;
}

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
  top: { tokenId: number; logprob: number }[];
}

/** An incremental result, as the engine emits it after each step. */
export interface RequestOutput {
  requestId: string;
  /** Index among the n samples of one submission. */
  index: number;
  newTokenIds: number[];
  textDelta: string;
  logprobs?: TokenLogprob[];
  finished: boolean;
  finishReason?: FinishReason;
  numPromptTokens: number;
  numOutputTokens: number;
  /** Time from admission until the request was first scheduled (absent if it never was). */
  queueMs?: number;
}

export class EngineRequest {
  readonly id: string;
  /** The id the caller submitted; differs from `id` for the n > 1 samples. */
  readonly submissionId: string;
  readonly index: number;
  readonly numPromptTokens: number;
  readonly params: RequestParams;
  /** Admission order, the FCFS tie-breaker and the preemption order. */
  readonly arrival: number;
  readonly tokenIds: number[];
  numComputedTokens = 0;
  status: RequestStatus = "waiting";
  finishReason?: FinishReason;
  numPreemptions = 0;
  /** performance.now() at admission and at the first step that scheduled it. */
  readonly arrivalTime = performance.now();
  firstScheduledTime?: number;
  readonly sampler: Sampler;
  readonly #stopIds: Set<number>;
  readonly #detokenizer: IncrementalDetokenizer;
  readonly #stopper: StopStringMatcher;

  constructor(
    ids: { id: string; submissionId: string; index: number; arrival: number },
    promptIds: readonly number[],
    params: RequestParams,
    tokenizer: TextTokenizer,
  ) {
    this.id = ids.id;
    this.submissionId = ids.submissionId;
    this.index = ids.index;
    this.arrival = ids.arrival;
    this.tokenIds = [...promptIds];
    this.numPromptTokens = promptIds.length;
    this.params = params;
    // Each sample draws from its own stream; sample i of a seeded request uses seed + i.
    const seed = params.sampling.seed === undefined ? undefined : params.sampling.seed + ids.index;
    this.sampler = new Sampler({ ...params.sampling, seed });
    this.#stopIds = new Set(params.stopTokenIds ?? []);
    if (!params.ignoreEos) { for (const id of tokenizer.eosIds) this.#stopIds.add(id); }
    this.#detokenizer = new IncrementalDetokenizer(tokenizer, { continuesPrompt: true });
    this.#stopper = new StopStringMatcher(params.stopStrings ?? []);
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  get priority(): number {
    return this.params.priority ?? 0;
  }

  get isFinished(): boolean {
    return this.status === "finished";
  }

  /**
   * Appends a sampled token and decides whether the request ends. Returns the text that became
   * final. A stop token is not appended to the output; a stop string is cut from the text.
   */
  appendToken(tokenId: number): { text: string; appended: boolean } {
    if (this.#stopIds.has(tokenId)) {
      this.#finish("stop");
      return { text: this.#flushText(), appended: false };
    }
    this.tokenIds.push(tokenId);
    const piece = this.#stopper.push(this.#detokenizer.push(tokenId));
    if (piece.stopped) {
      this.#finish("stop");
      return { text: piece.text, appended: true };
    }
    if (this.numOutputTokens >= this.params.maxTokens) {
      this.#finish("length");
      return { text: piece.text + this.#flushText(), appended: true };
    }
    return { text: piece.text, appended: true };
  }

  /** Ends the request from outside (cancellation). */
  abort(): void {
    if (!this.isFinished) this.#finish("abort");
  }

  #finish(reason: FinishReason): void {
    this.status = "finished";
    this.finishReason = reason;
  }

  /** Text held back for an unfinished character or a possible stop string, now final. */
  #flushText(): string {
    const rest = this.#stopper.push(this.#detokenizer.flush());
    return rest.stopped ? rest.text : rest.text + this.#stopper.flush();
  }
}
