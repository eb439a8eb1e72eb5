// Builds a tokenizer from GGUF `tokenizer.ggml.*` metadata that tokenizes exactly like llama.cpp.

import { bpeTokenizeWord, type BpeVocab, mergeRanks } from "./bpe.ts";
import { byteLevelDecode, byteLevelEncode } from "./byte_level.ts";
import { preTokenizer } from "./pretokenize.ts";
import { spmTokenize, type SpmVocab } from "./spm.ts";
import {
  checkTokenId,
  type DecodeOptions,
  decodeWithBytes,
  type EncodeOptions,
  type TextTokenizer,
  TokenizerError,
} from "./tokenizer.ts";

/** GGUF `tokenizer.ggml.token_type` values. */
export const GgufTokenType = {
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

// llama.cpp's llama_token_attr bits.
const ATTR_UNKNOWN = 1 << 0;
const ATTR_UNUSED = 1 << 1;
const ATTR_NORMAL = 1 << 2;
const ATTR_CONTROL = 1 << 3;
const ATTR_USER_DEFINED = 1 << 4;
const ATTR_BYTE = 1 << 5;
const ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL;

const TYPE_TO_ATTR: Record<number, number> = {
  1: ATTR_NORMAL,
  2: ATTR_UNKNOWN,
  3: ATTR_CONTROL,
  4: ATTR_USER_DEFINED,
  5: ATTR_UNUSED,
  6: ATTR_BYTE,
};

// Token texts llama.cpp treats as end-of-generation whatever the metadata says (llama-vocab.cpp).
const EOG_TEXTS = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<|return|>",
  "<|call|>",
  "<|flush|>",
  "<|calls|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "</s>",
  "<|eom_id|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "[EOS]",
  "<|end_of_text|>",
  "<end_of_utterance>",
  "<eos>",
  "<turn|>",
  "<|tool_response>",
  "<｜end▁of▁sentence｜>",
  "[e~[",
]);
// FIM pad, repo and file-separator tokens also end generation in llama.cpp.
const FIM_EOG_TEXTS = new Set([
  "<|fim_pad|>",
  "<fim-pad>",
  "<fim_pad>",
  "<PAD>",
  "[PAD]",
  "<|fim_repo|>",
  "<|repo_name|>",
  "<fim-repo>",
  "<REPO>",
  "<reponame>",
  "<|file_sep|>",
]);
// Pre-tokenizers for which llama.cpp turns on add_bos before reading tokenizer.ggml.add_bos_token.
const PRE_ADDS_BOS = new Set(["llama3", "llama-v3", "llama-bpe"]);
// Pre-tokenizers for which llama.cpp sets ignore_merges (whole-word vocabulary hits win).
const PRE_IGNORES_MERGES = new Set(["llama3", "llama-v3", "llama-bpe"]);

/** Reads a metadata value that is either plain or a `{ type, value }` GGUF value. */
function unwrap(value: unknown): unknown {
  if (value !== null && typeof value === "object" && !Array.isArray(value) && "value" in value) {
    return (value as { value: unknown }).value;
  }
  return value;
}

class Metadata {
  #map: ReadonlyMap<string, unknown>;
  #where: string;
  constructor(map: ReadonlyMap<string, unknown>, where: string) {
    this.#map = map;
    this.#where = where;
  }
  #fail(key: string, expected: string, found: unknown): never {
    throw new TokenizerError(
      this.#where,
      `expected ${key} to be ${expected}, found ${typeof found}`,
    );
  }
  has(key: string): boolean {
    return this.#map.has(key);
  }
  string(key: string): string | undefined {
    const v = unwrap(this.#map.get(key));
    if (v === undefined) return undefined;
    if (typeof v !== "string") this.#fail(key, "a string", v);
    return v;
  }
  number(key: string): number | undefined {
    const v = unwrap(this.#map.get(key));
    if (v === undefined) return undefined;
    if (typeof v === "bigint") return Number(v);
    if (typeof v !== "number") this.#fail(key, "a number", v);
    return v;
  }
  bool(key: string): boolean | undefined {
    const v = unwrap(this.#map.get(key));
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") this.#fail(key, "a boolean", v);
    return v;
  }
  array<T>(key: string, itemType: "string" | "number"): T[] | undefined {
    const v = unwrap(this.#map.get(key));
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) this.#fail(key, "an array", v);
    for (const item of v) {
      const ok = itemType === "string"
        ? typeof item === "string"
        : typeof item === "number" || typeof item === "bigint";
      if (!ok) this.#fail(key, `an array of ${itemType}s`, item);
    }
    return (itemType === "number" ? v.map(Number) : v) as T[];
  }
}

/** Options for {@link ggufTokenizer}. */
export interface GgufTokenizerOptions {
  /** Where the metadata came from, for error messages. */
  source?: string;
}

/** A tokenizer built from GGUF metadata; see {@link ggufTokenizer}. */
export class GgufTokenizer implements TextTokenizer {
  /** `tokenizer.ggml.model`: "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE). */
  readonly model: "llama" | "gpt2";
  /** `tokenizer.ggml.pre` ("default" when absent); only meaningful for "gpt2". */
  readonly pre: string;
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly eosIds: readonly number[];
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  readonly stripLeadingSpace: boolean;
  /** `tokenizer.chat_template`, when the file has one. */
  readonly chatTemplate?: string;

  #where: string;
  #tokens: string[];
  #attrs: Uint8Array;
  #tokenToId = new Map<string, number>();
  #specialsBySize: number[];
  #pieces: Uint8Array[];
  #spm?: SpmVocab;
  #bpe?: BpeVocab;
  #split?: (text: string) => string[];

  constructor(metadata: ReadonlyMap<string, unknown>, opts: GgufTokenizerOptions = {}) {
    if (!(metadata instanceof Map)) {
      throw new TypeError(`Expected GGUF metadata as a Map, got ${typeof metadata}`);
    }
    const where = opts.source ?? "GGUF metadata";
    this.#where = where;
    const md = new Metadata(metadata, where);
    const model = md.string("tokenizer.ggml.model");
    if (model === undefined) throw new TokenizerError(where, "tokenizer.ggml.model is missing");
    if (model !== "llama" && model !== "gpt2") {
      throw new TokenizerError(
        where,
        `unsupported tokenizer.ggml.model "${model}"; expected "llama" or "gpt2"`,
      );
    }
    this.model = model;
    this.pre = md.string("tokenizer.ggml.pre") ?? "default";
    const tokens = md.array<string>("tokenizer.ggml.tokens", "string");
    if (tokens === undefined || tokens.length === 0) {
      throw new TokenizerError(where, "tokenizer.ggml.tokens is missing or empty");
    }
    const numTokens = tokens.length;
    this.vocabSize = numTokens;
    this.#tokens = tokens.map((t, i) => (t === "" ? `[EMPTY_${i}]` : t));
    this.#tokens.forEach((t, i) => this.#tokenToId.set(t, i));

    const scores = md.array<number>("tokenizer.ggml.scores", "number");
    if (scores !== undefined && scores.length < numTokens) {
      throw new TokenizerError(
        where,
        `tokenizer.ggml.scores has ${scores.length} entries, expected ${numTokens}`,
      );
    }
    const types = md.array<number>("tokenizer.ggml.token_type", "number");
    if (types !== undefined && types.length < numTokens) {
      throw new TokenizerError(
        where,
        `tokenizer.ggml.token_type has ${types.length} entries, expected ${numTokens}`,
      );
    }
    this.#attrs = new Uint8Array(numTokens);
    for (let i = 0; i < numTokens; i++) {
      this.#attrs[i] = types === undefined ? ATTR_NORMAL : (TYPE_TO_ATTR[types[i]] ?? 0);
    }

    // Defaults as in llama_vocab::impl::load, then overridden by metadata.
    let addBos: boolean;
    let addSpacePrefix: boolean;
    let bos: number | undefined;
    let eos: number | undefined;
    if (model === "llama") {
      [bos, eos, addBos, addSpacePrefix] = [1, 2, true, true];
      this.#spm = {
        tokenToId: this.#tokenToId,
        scores: scores ?? new Array(numTokens).fill(0),
        byteToToken: (byte) => this.#byteToToken(byte),
      };
    } else {
      [bos, eos, addBos, addSpacePrefix] = [11, 11, PRE_ADDS_BOS.has(this.pre), false];
      const merges = md.array<string>("tokenizer.ggml.merges", "string");
      if (merges === undefined) {
        throw new TokenizerError(where, "tokenizer.ggml.merges is missing");
      }
      try {
        this.#split = preTokenizer(this.pre);
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        throw new TokenizerError(where, `tokenizer.ggml.pre: ${error.message}`, { cause: error });
      }
      this.#bpe = {
        tokenToId: this.#tokenToId,
        ranks: mergeRanks(merges),
        ignoreMerges: PRE_IGNORES_MERGES.has(this.pre),
      };
    }
    addSpacePrefix = md.bool("tokenizer.ggml.add_space_prefix") ?? addSpacePrefix;
    const specialId = (key: string, fallback: number | undefined) => {
      if (fallback !== undefined && fallback >= numTokens) fallback = undefined;
      const id = md.number(`tokenizer.ggml.${key}`);
      return id !== undefined && id >= 0 && id < numTokens ? id : fallback;
    };
    this.bosId = specialId("bos_token_id", bos);
    this.eosId = specialId("eos_token_id", eos);
    const eotId = specialId("eot_token_id", undefined);
    const eomId = specialId("eom_token_id", undefined);
    this.addBos = (md.bool("tokenizer.ggml.add_bos_token") ?? addBos) && this.bosId !== undefined;
    this.addEos = (md.bool("tokenizer.ggml.add_eos_token") ?? false) && this.eosId !== undefined;
    this.addSpacePrefix = addSpacePrefix;
    this.stripLeadingSpace = addSpacePrefix;
    this.chatTemplate = md.string("tokenizer.chat_template");

    // End-of-generation set, as llama.cpp builds special_eog_ids.
    const eog = new Set<number>();
    this.#tokens.forEach((text, id) => {
      if (EOG_TEXTS.has(text) || FIM_EOG_TEXTS.has(text)) {
        eog.add(id);
        // llama.cpp forces control type on these "control-looking" tokens.
        this.#attrs[id] |= ATTR_CONTROL;
      }
    });
    for (const id of [this.eosId, eotId, eomId]) if (id !== undefined) eog.add(id);
    this.eosIds = [...eog].sort((a, b) => a - b);

    const specials: number[] = [];
    for (let i = 0; i < numTokens; i++) {
      if (this.#attrs[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) specials.push(i);
    }
    // Longest first, so a special token is never cut by a shorter one it contains.
    this.#specialsBySize = specials.sort((a, b) =>
      this.#tokens[b].length - this.#tokens[a].length || a - b
    );
    this.#pieces = this.#tokens.map((_, id) => this.#piece(id));
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw new TypeError(`Expected text to be a string`);
    const addSpecial = opts.addSpecial ?? true;
    const output: number[] = [];
    if (addSpecial && this.addBos) output.push(this.bosId!);
    let isPrevSpecial = true;
    for (const fragment of this.#partition(text, opts.parseSpecial ?? false)) {
      if (typeof fragment === "number") {
        output.push(fragment);
        isPrevSpecial = true;
        continue;
      }
      if (this.#spm) {
        // llama.cpp prefixes a space to the first fragment and to any fragment after a special.
        const prefixed = this.addSpacePrefix && isPrevSpecial ? ` ${fragment}` : fragment;
        spmTokenize(prefixed.replaceAll(" ", "\u2581"), this.#spm, output);
      } else {
        for (const word of this.#split!(fragment)) {
          bpeTokenizeWord(byteLevelEncode(word), this.#bpe!, output);
        }
      }
      isPrevSpecial = false;
    }
    if (addSpecial && this.addEos) output.push(this.eosId!);
    return output;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    return decodeWithBytes(this, ids, opts);
  }

  isSpecial(id: number): boolean {
    checkTokenId(id, this.vocabSize);
    return (this.#attrs[id] & ATTR_SPECIAL) !== 0;
  }

  /** Whether `id` is a control token (llama.cpp's LLAMA_TOKEN_ATTR_CONTROL). */
  isControl(id: number): boolean {
    checkTokenId(id, this.vocabSize);
    return (this.#attrs[id] & ATTR_CONTROL) !== 0;
  }

  tokenBytes(id: number, opts: DecodeOptions = {}): Uint8Array {
    checkTokenId(id, this.vocabSize);
    if (opts.skipSpecial && (this.#attrs[id] & ATTR_SPECIAL)) return new Uint8Array(0);
    return this.#pieces[id];
  }

  tokenText(id: number): string | undefined {
    return this.#tokens[id];
  }

  tokenId(text: string): number | undefined {
    return this.#tokenToId.get(text);
  }

  // llama_vocab::impl::token_to_piece with special = true.
  #piece(id: number): Uint8Array {
    const attr = this.#attrs[id];
    const text = this.#tokens[id];
    if (attr & (ATTR_SPECIAL | ATTR_USER_DEFINED)) return new TextEncoder().encode(text);
    if (attr & ATTR_NORMAL) {
      return this.#spm
        ? new TextEncoder().encode(text.replaceAll("\u2581", " "))
        : byteLevelDecode(text);
    }
    if (attr & ATTR_BYTE) {
      const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
      if (byte) return new Uint8Array([parseInt(byte[1], 16)]);
      // A byte-typed token in another spelling: llama.cpp would misparse it; keep its text.
      return new TextEncoder().encode(text);
    }
    return new Uint8Array(0);
  }

  #byteToToken(byte: number): number {
    const hex = byte.toString(16).toUpperCase().padStart(2, "0");
    const id = this.#tokenToId.get(`<0x${hex}>`) ??
      (byte < 0x80 ? this.#tokenToId.get(String.fromCharCode(byte)) : undefined);
    if (id === undefined) {
      throw new TokenizerError(
        this.#where,
        `the vocabulary has no byte-fallback token <0x${hex}> for text it cannot tokenize`,
      );
    }
    return id;
  }

  // tokenizer_st_partition: split out special-token text; strings stay raw text.
  #partition(text: string, parseSpecial: boolean): (string | number)[] {
    let fragments: (string | number)[] = text.length > 0 ? [text] : [];
    for (const id of this.#specialsBySize) {
      if (!parseSpecial && (this.#attrs[id] & ATTR_SPECIAL)) continue;
      const special = this.#tokens[id];
      if (!fragments.some((f) => typeof f === "string" && f.includes(special))) continue;
      const next: (string | number)[] = [];
      for (const fragment of fragments) {
        if (typeof fragment === "number" || !fragment.includes(special)) {
          next.push(fragment);
          continue;
        }
        fragment.split(special).forEach((piece, i) => {
          if (i > 0) next.push(id);
          if (piece.length > 0) next.push(piece);
        });
      }
      fragments = next;
    }
    return fragments;
  }
}

/**
 * Builds a tokenizer from GGUF metadata (`readGguf(path).metadata`, or a hand-built map whose
 * values are plain or `{ type, value }`). Supports `tokenizer.ggml.model` "llama" and "gpt2".
 */
export function ggufTokenizer(
  metadata: ReadonlyMap<string, unknown>,
  opts: GgufTokenizerOptions = {},
): GgufTokenizer {
  return new GgufTokenizer(metadata, opts);
}
