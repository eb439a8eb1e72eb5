// The tokenizer interface the engine uses, its error class, and the streaming detokenizer.

import { ModelFormatError } from "../formats/errors.ts";

/** Options for {@link TextTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the model's BOS (and EOS, where the model asks for it). Default true. */
  addSpecial?: boolean;
  /**
   * Turn control-token text found in the input (for example `<|im_start|>`) into that token.
   * Default false, like llama.cpp's `llama_tokenize(..., parse_special = false)`: untrusted
   * text can then never forge a turn boundary. Rendered chat prompts need true.
   */
  parseSpecial?: boolean;
}

/** Options for {@link TextTokenizer.decode} and {@link TextTokenizer.tokenBytes}. */
export interface DecodeOptions {
  /** Drop special (control and unknown) tokens instead of rendering their text. Default false. */
  skipSpecial?: boolean;
}

/**
 * One tokenizer, whatever file it came from.
 *
 * Decoding is defined on bytes so that streaming and batch decoding agree exactly:
 * `decode(ids)` is the lossy UTF-8 decoding of the concatenated {@link tokenBytes} of `ids`
 * (special tokens dropped with `skipSpecial`), minus one leading space when
 * {@link stripLeadingSpace} is set and the text starts with a space (the Strip decoder of
 * SentencePiece tokenizers, which removes the space the encoder prepends). A BOM is kept, and
 * tokenization spaces are never "cleaned up" (a stream could not undo that).
 */
export interface TextTokenizer {
  /** Number of token ids, including special tokens. */
  readonly vocabSize: number;
  readonly bosId?: number;
  /** Every id that ends generation (EOS, EOT, EOM, ...), deduplicated, ascending. */
  readonly eosIds: readonly number[];
  /** Whether `encode(text)` starts with {@link bosId} by default. */
  readonly addBos: boolean;
  /** Whether decoding drops one leading space (SentencePiece models). */
  readonly stripLeadingSpace: boolean;
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  /** True for control and unknown tokens: the ones `skipSpecial` drops. */
  isSpecial(id: number): boolean;
  /** The raw bytes token `id` contributes to decoded text (empty for a skipped special token). */
  tokenBytes(id: number, opts?: DecodeOptions): Uint8Array;
  /** The token's vocabulary string (as stored in the model file), or undefined when out of range. */
  tokenText(id: number): string | undefined;
  /** The id of a vocabulary string, or undefined. */
  tokenId(text: string): number | undefined;
}

/**
 * Tokenizer data is missing, malformed or uses a feature we do not support. A kind of
 * {@link ModelFormatError}, so one `catch` covers every model-file problem; `file` names the
 * file (or "GGUF metadata" when the source is unknown).
 */
export class TokenizerError extends ModelFormatError {
  constructor(file: string, detail: string, options?: ErrorOptions) {
    super(file, detail, options);
    this.name = "TokenizerError";
  }
}

/** Throws a RangeError unless `id` is a valid token id for a vocabulary of `vocabSize`. */
export function checkTokenId(id: number, vocabSize: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new RangeError(`Expected a token id in [0, ${vocabSize}), got ${id}`);
  }
}

/** The byte-defined decode every {@link TextTokenizer} implementation shares. */
export function decodeWithBytes(
  tokenizer: Pick<TextTokenizer, "tokenBytes" | "stripLeadingSpace">,
  ids: readonly number[],
  opts: DecodeOptions = {},
): string {
  const parts: Uint8Array[] = [];
  let numBytes = 0;
  for (const id of ids) {
    const bytes = tokenizer.tokenBytes(id, opts);
    parts.push(bytes);
    numBytes += bytes.length;
  }
  const all = new Uint8Array(numBytes);
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(all);
  return tokenizer.stripLeadingSpace && text.startsWith(" ") ? text.slice(1) : text;
}

/**
 * Turns a stream of token ids into text deltas.
 *
 * Invariant: the concatenation of every `push` result and the final `flush` equals
 * `tokenizer.decode(allIds, opts)`. Bytes of a UTF-8 character split across tokens (byte
 * fallback `<0xE2>` `<0x82>` `<0xAC>`, or byte-level BPE pieces) are held back until the
 * character is complete, so a delta never contains a U+FFFD that the full decode would not.
 * The leading-space strip applies only to the very start of the stream, and not at all with
 * `continuesPrompt`: generated text continues its prompt, so "Once upon a time" + "▁there" must
 * stream " there" (as llama.cpp and vLLM do), not "there".
 */
export class IncrementalDetokenizer {
  #tokenizer: TextTokenizer;
  #opts: DecodeOptions;
  #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  #atStart = true;
  #text = "";

  constructor(
    tokenizer: TextTokenizer,
    opts: DecodeOptions & { continuesPrompt?: boolean } = {},
  ) {
    this.#tokenizer = tokenizer;
    this.#opts = { skipSpecial: opts.skipSpecial };
    this.#atStart = !opts.continuesPrompt;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.#text;
  }

  /** Feeds one token id; returns the new text it completes (possibly ""). */
  push(id: number): string {
    const bytes = this.#tokenizer.tokenBytes(id, this.#opts);
    return this.#emit(this.#decoder.decode(bytes, { stream: true }));
  }

  /** Ends the stream: returns what the held-back bytes decode to (U+FFFD for a cut character). */
  flush(): string {
    const delta = this.#emit(this.#decoder.decode());
    this.#decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    return delta;
  }

  #emit(delta: string): string {
    if (this.#atStart && delta.length > 0) {
      this.#atStart = false;
      if (this.#tokenizer.stripLeadingSpace && delta.startsWith(" ")) delta = delta.slice(1);
    }
    this.#text += delta;
    return delta;
  }
}
