// Token log-probabilities in OpenAI's two shapes: the legacy completions object of parallel
// lists, and chat's list of per-token entries with bytes.
import type { TokenLogprob } from "../engine/request.ts";
import { IncrementalDetokenizer, type TextTokenizer } from "../tokenizer/tokenizer.ts";

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

export interface ChatTopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

export interface ChatLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

// JSON has no -Infinity; vLLM clamps the same way.
const MIN_LOGPROB = -9999;

function clamp(logprob: number): number {
  return Number.isFinite(logprob) ? logprob : MIN_LOGPROB;
}

/** A token's text on its own; a partial UTF-8 character shows as U+FFFD (its bytes say more). */
export function tokenString(tokenizer: TextTokenizer, id: number): string {
  return new TextDecoder().decode(tokenizer.tokenBytes(id));
}

/** Appends tokens to a completions logprobs object; `offset` is the text length before them. */
export class CompletionLogprobsBuilder {
  readonly value: CompletionLogprobs = {
    tokens: [],
    token_logprobs: [],
    top_logprobs: [],
    text_offset: [],
  };
  #tokenizer: TextTokenizer;
  #offset: number;

  constructor(tokenizer: TextTokenizer, offset = 0) {
    this.#tokenizer = tokenizer;
    this.#offset = offset;
  }

  /**
   * The echoed prompt: its tokens with the logprobs of all but the first (null when the engine
   * gave none), and offsets into `text`, the echoed text, which leaves out control tokens such as
   * BOS and the tokenizer's leading space. Completion tokens then count from the text's end.
   */
  addPrompt(
    ids: readonly number[],
    text: string,
    opts: { logprobs?: readonly TokenLogprob[]; numTop?: number } = {},
  ): void {
    const detokenizer = new IncrementalDetokenizer(this.#tokenizer, { skipSpecial: true });
    const start = this.#offset;
    ids.forEach((id, i) => {
      this.#offset = start + Math.min(detokenizer.text.length, text.length);
      const token = tokenString(this.#tokenizer, id);
      const entry = i === 0 ? undefined : opts.logprobs?.[i - 1];
      if (entry === undefined) this.#push(token, null, null);
      else this.#pushEntry(entry, opts.numTop ?? entry.top.length);
      detokenizer.push(id);
    });
    this.#offset = start + text.length;
  }

  add(entries: readonly TokenLogprob[]): void {
    for (const entry of entries) this.#pushEntry(entry, entry.top.length);
  }

  #pushEntry(entry: TokenLogprob, numTop: number): void {
    const token = tokenString(this.#tokenizer, entry.tokenId);
    // OpenAI always includes the sampled token, so there are up to logprobs + 1 entries.
    const top: Record<string, number> = {};
    for (const t of entry.top.slice(0, numTop)) {
      top[tokenString(this.#tokenizer, t.tokenId)] ??= clamp(t.logprob);
    }
    top[token] ??= clamp(entry.logprob);
    this.#push(token, clamp(entry.logprob), top);
  }

  /** Starts a new (streamed) chunk: the lists empty, the offset kept. */
  take(): CompletionLogprobs {
    const value = structuredClone(this.value);
    for (const list of Object.values(this.value)) list.length = 0;
    return value;
  }

  #push(token: string, logprob: number | null, top: Record<string, number> | null): void {
    this.value.tokens.push(token);
    this.value.token_logprobs.push(logprob);
    this.value.top_logprobs.push(top);
    this.value.text_offset.push(this.#offset);
    this.#offset += token.length;
  }
}

function chatTop(tokenizer: TextTokenizer, id: number, logprob: number): ChatTopLogprob {
  return {
    token: tokenString(tokenizer, id),
    logprob: clamp(logprob),
    bytes: [...tokenizer.tokenBytes(id)],
  };
}

/** Chat's `logprobs.content` entries. */
export function chatLogprobs(
  tokenizer: TextTokenizer,
  entries: readonly TokenLogprob[],
): ChatLogprob[] {
  return entries.map((e) => ({
    ...chatTop(tokenizer, e.tokenId, e.logprob),
    top_logprobs: e.top.map((t) => chatTop(tokenizer, t.tokenId, t.logprob)),
  }));
}

/** One prompt position in vLLM's `prompt_logprobs`: token id → logprob, rank, decoded token. */
export type PromptLogprob = Record<
  string,
  { logprob: number; rank: number; decoded_token: string }
>;

/**
 * vLLM's `prompt_logprobs`: null for the first prompt token, then for each one its own entry and
 * the `numTop` most likely tokens at that position.
 */
export function promptLogprobsList(
  tokenizer: TextTokenizer,
  entries: readonly TokenLogprob[],
  numTop: number,
): (PromptLogprob | null)[] {
  const list: (PromptLogprob | null)[] = [null];
  for (const entry of entries) {
    const item: PromptLogprob = {};
    entry.top.slice(0, numTop).forEach((t, i) => {
      item[t.tokenId] = {
        logprob: clamp(t.logprob),
        rank: i + 1,
        decoded_token: tokenString(tokenizer, t.tokenId),
      };
    });
    item[entry.tokenId] ??= {
      logprob: clamp(entry.logprob),
      rank: entry.rank ?? 0,
      decoded_token: tokenString(tokenizer, entry.tokenId),
    };
    list.push(item);
  }
  return list;
}
