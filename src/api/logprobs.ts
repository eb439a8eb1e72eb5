// Token log-probabilities in OpenAI's two shapes: the legacy completions object of parallel
// lists, and chat's list of per-token entries with bytes.
import type { TokenLogprob } from "../engine/request.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";

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

  /** Prompt tokens (for echo): the engine gives no logprobs for them, so those are null. */
  addPrompt(ids: readonly number[]): void {
    for (const id of ids) this.#push(tokenString(this.#tokenizer, id), null, null);
  }

  add(entries: readonly TokenLogprob[]): void {
    for (const entry of entries) {
      const token = tokenString(this.#tokenizer, entry.tokenId);
      // OpenAI always includes the sampled token, so there are up to logprobs + 1 entries.
      const top: Record<string, number> = {};
      for (const t of entry.top) top[tokenString(this.#tokenizer, t.tokenId)] ??= clamp(t.logprob);
      top[token] ??= clamp(entry.logprob);
      this.#push(token, clamp(entry.logprob), top);
    }
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
