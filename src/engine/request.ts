// One request's state in the engine: its tokens, how many have KV computed, and how it ends.
import { Sampler, type SamplingParams, type TokenDistribution } from "../sampling.ts";
import type { StructuredOutput, TokenGrammar } from "./grammar.ts";
import { StopStringMatcher } from "../stop.ts";
import { IncrementalDetokenizer, type TextTokenizer } from "../tokenizer/tokenizer.ts";

export type RequestStatus = "waiting" | "running" | "finished";
export type FinishReason = "stop" | "length" | "abort";
/** How an embedding request pools its prompt's final-norm hidden states. */
export type Pooling = "last" | "mean";

/** What a caller asks for; validated by the engine before a Request is made. */
export interface RequestParams {
  /** Tokens to generate at most; 0 only computes the prompt (for its prompt logprobs). */
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
  /**
   * Also return the logprob of every prompt token but the first, with this many top alternatives.
   * Such a request skips the prefix-cache lookup: a cached block has K/V but no logits.
   */
  promptLogprobs?: number;
  /** Separates prefix-cache entries, e.g. per tenant. */
  cacheSalt?: string;
  /** Leave special tokens (EOS under ignoreEos, control tokens) out of the text. Default true. */
  skipSpecialTokens?: boolean;
  /**
   * The format the output must match, enforced by a token mask at every step. The engine needs
   * one {@link TokenGrammar} per sample for it (`addRequest`'s `grammars`).
   */
  structured?: StructuredOutput;
  /**
   * Tokens to generate at least: until then the stop tokens (EOS included) are masked out and stop
   * strings are not looked for. Default 0.
   */
  minTokens?: number;
  /** Keep the stop string that ended generation in the text. Default false. */
  includeStopStrInOutput?: boolean;
  /**
   * An embedding request: nothing is sampled (maxTokens 0, n 1); once the prompt is computed its
   * pooled, L2-normalized final hidden state is the output and the request ends.
   */
  pooling?: Pooling;
  /**
   * Also return the output of every captured layer (the engine's `captureLayers`) at every
   * prompt position, on the first output. Needs `promptLogprobs` (its rows are those rows).
   */
  promptHiddenStates?: boolean;
}

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
  top: { tokenId: number; logprob: number }[];
  /** 1 + the number of tokens more likely than `tokenId`; set for prompt logprobs. */
  rank?: number;
}

/** An incremental result, as the engine emits it after each step. */
export interface RequestOutput {
  requestId: string;
  /** Index among the n samples of one submission. */
  index: number;
  newTokenIds: number[];
  textDelta: string;
  logprobs?: TokenLogprob[];
  /**
   * On a sample's first output, when prompt logprobs were asked for: one entry per prompt token
   * from the second on (the first has nothing before it to predict it).
   */
  promptLogprobs?: TokenLogprob[];
  finished: boolean;
  finishReason?: FinishReason;
  numPromptTokens: number;
  /** Generated tokens, the stop token that ended generation included (what usage counts). */
  numOutputTokens: number;
  /** Time from admission until the request was first scheduled (absent if it never was). */
  queueMs?: number;
  /** An embedding request's pooled, L2-normalized hidden state, on its only output. */
  embedding?: Float32Array;
  /**
   * With `promptHiddenStates`, on a sample's first output: per captured layer (in the engine's
   * `captureLayers` order) its output at every prompt position, [numPromptTokens, hidden].
   */
  promptHiddenStates?: Float32Array[];
  /** Speculative decoding so far (set once anything was proposed): tokens proposed, accepted. */
  specDecode?: { numDraftTokens: number; numAcceptedTokens: number };
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
  /** The sample's position in its output format, when it has one. */
  readonly grammar?: TokenGrammar;
  /** Prompt logprobs computed so far, for positions 1, 2, … of the prompt. */
  readonly promptLogprobs: TokenLogprob[] = [];
  /** Captured layer outputs of the prompt positions so far (`promptHiddenStates`). */
  promptHidden?: { rows: Float32Array[]; numPositions: number };
  /** Mean pooling's running sum of the prompt rows' hidden states (allocated on first use). */
  poolSum?: Float64Array;
  /**
   * Tokens proposed for the next step (speculative decoding), verified in it and then cleared;
   * never part of `tokenIds` unless accepted. `draftDists` are their proposer's distributions.
   */
  draftTokenIds: number[] = [];
  draftDists?: TokenDistribution[];
  /** Speculation so far: verification steps with drafts, tokens proposed, tokens accepted. */
  readonly specStats = { numDrafts: 0, numDraftTokens: 0, numAcceptedTokens: 0 };
  /** 1 once a stop token ended generation: it is counted, though not appended. */
  #numStopTokens = 0;
  readonly #stopIds: Set<number>;
  readonly #detokenizer: IncrementalDetokenizer;
  readonly #stopper: StopStringMatcher;

  constructor(
    ids: { id: string; submissionId: string; index: number; arrival: number },
    promptIds: readonly number[],
    params: RequestParams,
    tokenizer: TextTokenizer,
    grammar?: TokenGrammar,
  ) {
    this.id = ids.id;
    this.grammar = grammar;
    this.submissionId = ids.submissionId;
    this.index = ids.index;
    this.arrival = ids.arrival;
    this.tokenIds = [...promptIds];
    this.numPromptTokens = promptIds.length;
    this.params = params;
    const seed = params.sampling.seed === undefined
      ? undefined
      : sampleSeed(params.sampling.seed, ids.index);
    this.sampler = new Sampler({ ...params.sampling, seed });
    this.#stopIds = new Set(params.stopTokenIds ?? []);
    if (!params.ignoreEos) { for (const id of tokenizer.eosIds) this.#stopIds.add(id); }
    this.#detokenizer = new IncrementalDetokenizer(tokenizer, {
      continuesPrompt: true,
      skipSpecial: params.skipSpecialTokens ?? true,
    });
    this.#stopper = new StopStringMatcher(params.stopStrings ?? []);
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  /** Generated tokens as usage counts them: the stop token that ended generation included. */
  get numGeneratedTokens(): number {
    return this.numOutputTokens + this.#numStopTokens;
  }

  get cacheSalt(): string | undefined {
    return this.params.cacheSalt;
  }

  /** Whether the stop tokens must still be masked out (fewer than minTokens generated). */
  get isBelowMinTokens(): boolean {
    return this.numOutputTokens < (this.params.minTokens ?? 0);
  }

  /** The stop tokens of this request, which min_tokens masks out. */
  get stopTokenIds(): ReadonlySet<number> {
    return this.#stopIds;
  }

  /** Whether the next steps must return logits for prompt rows (prompt logprobs still missing). */
  get needsPromptLogits(): boolean {
    return this.params.promptLogprobs !== undefined &&
      this.promptLogprobs.length < this.numPromptTokens - 1;
  }

  /**
   * Whether every prompt row must come out of the forward pass (prompt logprobs, mean pooling):
   * the prefill is chunked to the reserved rows and the prefix cache is not used.
   */
  get needsPromptRows(): boolean {
    return this.needsPromptLogits || this.params.pooling === "mean";
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
    if (this.#stopIds.has(tokenId) && !this.isBelowMinTokens) {
      this.#numStopTokens = 1;
      this.#finish("stop");
      return { text: this.#flushText(), appended: false };
    }
    this.tokenIds.push(tokenId);
    const delta = this.#detokenizer.push(tokenId);
    // Below min_tokens no stop string is looked for: the text goes out as it is decoded.
    const piece = this.isBelowMinTokens
      ? { text: delta, stopped: false }
      : this.#stopper.push(delta);
    if (piece.stopped) {
      this.#finish("stop");
      const stop = this.params.includeStopStrInOutput ? piece.stop ?? "" : "";
      return { text: piece.text + stop, appended: true };
    }
    if (this.numOutputTokens >= this.params.maxTokens) {
      this.#finish("length");
      return { text: piece.text + this.#flushText(), appended: true };
    }
    return { text: piece.text, appended: true };
  }

  /** Ends a request with max_tokens 0 once its prompt is computed, without sampling. */
  finishWithoutSampling(): void {
    this.#finish("length");
  }

  /** Ends a structured request whose format is complete though no stop token ended it. */
  finishFormatComplete(): void {
    this.#finish("stop");
  }

  /** Ends the request from outside (cancellation). */
  abort(): void {
    if (!this.isFinished) this.#finish("abort");
  }

  #finish(reason: FinishReason): void {
    this.grammar?.dispose();
    this.status = "finished";
    this.finishReason = reason;
  }

  /** Text held back for an unfinished character or a possible stop string, now final. */
  #flushText(): string {
    const rest = this.#stopper.push(this.#detokenizer.flush());
    if (!rest.stopped) return rest.text + this.#stopper.flush();
    return rest.text + (this.params.includeStopStrInOutput ? rest.stop ?? "" : "");
  }
}

/**
 * The seed of sample `index` of a request seeded with `seed`: sample 0 keeps the seed, others get
 * a hash of both, so that no sample repeats sample 0 of a nearby seed (as seed + index did).
 */
export function sampleSeed(seed: number, index: number): number {
  if (index === 0) return seed;
  // SplitMix64's finalizer, on 32 bits, over the seed's two halves and the index.
  let h = ((seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32), 0x27d4eb2f)) >>> 0;
  h = (h + Math.imul(index, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}
