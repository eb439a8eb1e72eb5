// Loads a Hugging Face tokenizer directory (tokenizer.json + configs) as a TextTokenizer.

import { Tokenizer } from "@huggingface/tokenizers";
import { byteLevelDecode } from "./byte_level.ts";
import {
  checkTokenId,
  type DecodeOptions,
  decodeWithBytes,
  type EncodeOptions,
  type TextTokenizer,
  TokenizerError,
} from "./tokenizer.ts";

type Json = Record<string, unknown>;

/** Parsed JSON files of a Hugging Face tokenizer; only `tokenizerJson` is required. */
export interface HfTokenizerFiles {
  /** tokenizer.json */
  tokenizerJson: Json;
  /** tokenizer_config.json */
  tokenizerConfig?: Json;
  /** generation_config.json: its `eos_token_id` (number or list) adds stop ids. */
  generationConfig?: Json;
  /** config.json: its `eos_token_id` adds stop ids. */
  modelConfig?: Json;
  /** A chat_template.jinja file, which takes precedence over tokenizer_config's. */
  chatTemplateJinja?: string;
  /** Where the files came from, for error messages. */
  source?: string;
}

/** How token strings map back to bytes, from the decoder in tokenizer.json. */
type DecoderKind = "byteLevel" | "sentencePiece";

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Depth-first list of a decoder/post-processor and its Sequence children. */
function flatten(node: unknown, childKey: string): Json[] {
  if (!isObject(node)) return [];
  const children = node[childKey];
  if (node.type === "Sequence" && Array.isArray(children)) {
    return children.flatMap((child) => flatten(child, childKey));
  }
  return [node];
}

/** A special token named in tokenizer_config.json: a string or `{ content }`. */
function tokenName(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  return undefined;
}

/** A Hugging Face tokenizer.json tokenizer; see {@link loadHfTokenizer}. */
export class HfTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly eosIds: readonly number[];
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly stripLeadingSpace: boolean;
  /** The chat template from chat_template.jinja or tokenizer_config.json, as stored. */
  readonly chatTemplate?: string | { name: string; template: string }[];
  /** tokenizer_config.json's `bos_token` / `eos_token` strings, for chat templates. */
  readonly bosToken?: string;
  readonly eosToken?: string;

  #source: string;
  #tokenizer: Tokenizer;
  #json: Json;
  #config: Json;
  #plainTokenizer?: Tokenizer;
  #tokens: (string | undefined)[] = [];
  #tokenToId: Map<string, number>;
  #specialIds = new Set<number>();
  #addedIds = new Set<number>();
  #decoder: DecoderKind;
  #byteFallback: boolean;
  #pieces: Uint8Array[] = [];

  constructor(files: HfTokenizerFiles) {
    if (!isObject(files) || !isObject(files.tokenizerJson)) {
      throw new TypeError("Expected files.tokenizerJson to be a parsed tokenizer.json object");
    }
    const source = files.source ?? "tokenizer.json";
    this.#source = source;
    const json = files.tokenizerJson;
    const config = files.tokenizerConfig ?? {};
    this.#json = json;
    this.#config = config;
    if (!isObject(json.model)) throw new TokenizerError(source, `has no "model" object`);
    try {
      this.#tokenizer = new Tokenizer(json, config);
    } catch (error) {
      throw new TokenizerError(source, `could not be loaded: ${error}`, { cause: error });
    }

    this.#tokenToId = this.#tokenizer.get_vocab(true);
    let maxId = -1;
    for (const [text, id] of this.#tokenToId) {
      this.#tokens[id] = text;
      maxId = Math.max(maxId, id);
    }
    for (const [id, token] of this.#tokenizer.get_added_tokens_decoder()) {
      this.#tokens[id] = token.content;
      this.#addedIds.add(id);
      if (token.special) this.#specialIds.add(id);
      maxId = Math.max(maxId, id);
    }
    this.vocabSize = maxId + 1;

    const decoders = flatten(json.decoder, "decoders");
    const types = decoders.map((d) => d.type);
    if (types.includes("ByteLevel")) {
      this.#decoder = "byteLevel";
      this.stripLeadingSpace = false;
    } else if (
      types.includes("Metaspace") ||
      decoders.some((d) => d.type === "Replace" && isObject(d.pattern) && d.pattern.String === "▁")
    ) {
      this.#decoder = "sentencePiece";
      this.stripLeadingSpace = decoders.some((d) =>
        (d.type === "Strip" && d.content === " " && Number(d.start) >= 1) ||
        (d.type === "Metaspace" && d.prepend_scheme !== "never" && d.add_prefix_space !== false)
      );
    } else {
      throw new TokenizerError(
        source,
        `unsupported decoder ${JSON.stringify(types)}; expected ByteLevel or SentencePiece-style ` +
          `(Metaspace, or Replace "▁" with ByteFallback)`,
      );
    }
    this.#byteFallback = json.model.byte_fallback === true || types.includes("ByteFallback");

    // BOS/EOS: tokenizer_config flags win; otherwise read what the post-processor template adds.
    this.bosToken = tokenName(config.bos_token);
    this.eosToken = tokenName(config.eos_token);
    const template = flatten(json.post_processor, "processors").find((p) =>
      p.type === "TemplateProcessing"
    );
    const single = Array.isArray(template?.single) ? template.single as Json[] : [];
    const templateId = (item: Json | undefined): number | undefined => {
      const special = isObject(item?.SpecialToken) ? item.SpecialToken : undefined;
      if (special === undefined || !isObject(template?.special_tokens)) return undefined;
      const entry = template.special_tokens[special.id as string];
      const ids = isObject(entry) && Array.isArray(entry.ids) ? entry.ids : [];
      return typeof ids[0] === "number" ? ids[0] : this.#tokenToId.get(special.id as string);
    };
    const templateBos = templateId(single[0]);
    const templateEos = single.length > 1 ? templateId(single[single.length - 1]) : undefined;
    const bosByName = this.bosToken === undefined ? undefined : this.#tokenToId.get(this.bosToken);
    const eosByName = this.eosToken === undefined ? undefined : this.#tokenToId.get(this.eosToken);
    const configAddsBos = typeof config.add_bos_token === "boolean"
      ? config.add_bos_token
      : undefined;
    const configAddsEos = typeof config.add_eos_token === "boolean"
      ? config.add_eos_token
      : undefined;
    this.addBos = configAddsBos ?? templateBos !== undefined;
    this.addEos = configAddsEos ?? templateEos !== undefined;
    this.bosId = configAddsBos === undefined ? templateBos ?? bosByName : bosByName ?? templateBos;
    this.eosId = eosByName ?? templateEos;
    if (this.addBos && this.bosId === undefined) {
      throw new TokenizerError(source, "BOS is to be added but no bos_token is defined");
    }
    if (this.addEos && this.eosId === undefined) {
      throw new TokenizerError(source, "EOS is to be added but no eos_token is defined");
    }

    const eos = new Set<number>();
    if (this.eosId !== undefined) eos.add(this.eosId);
    for (const cfg of [files.generationConfig, files.modelConfig]) {
      const value = cfg?.eos_token_id;
      const ids = Array.isArray(value)
        ? value
        : value === undefined || value === null
        ? []
        : [value];
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
          throw new TokenizerError(source, `eos_token_id ${JSON.stringify(id)} is not a token id`);
        }
        eos.add(id);
      }
    }
    this.eosIds = [...eos].sort((a, b) => a - b);

    const chatTemplate = files.chatTemplateJinja ?? config.chat_template;
    if (typeof chatTemplate === "string" || Array.isArray(chatTemplate)) {
      this.chatTemplate = chatTemplate as HfTokenizer["chatTemplate"];
    }
    for (let id = 0; id < this.vocabSize; id++) this.#pieces.push(this.#piece(id));
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw new TypeError("Expected text to be a string");
    const tokenizer = opts.parseSpecial ? this.#tokenizer : this.#plain();
    const ids = text.length > 0 ? tokenizer.encode(text, { add_special_tokens: false }).ids : [];
    if (opts.addSpecial ?? true) {
      if (this.addBos) ids.unshift(this.bosId!);
      if (this.addEos) ids.push(this.eosId!);
    }
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    return decodeWithBytes(this, ids, opts);
  }

  isSpecial(id: number): boolean {
    checkTokenId(id, this.vocabSize);
    return this.#specialIds.has(id);
  }

  tokenBytes(id: number, opts: DecodeOptions = {}): Uint8Array {
    checkTokenId(id, this.vocabSize);
    if (opts.skipSpecial && this.#specialIds.has(id)) return new Uint8Array(0);
    return this.#pieces[id];
  }

  tokenText(id: number): string | undefined {
    return this.#tokens[id];
  }

  tokenId(text: string): number | undefined {
    return this.#tokenToId.get(text);
  }

  #piece(id: number): Uint8Array {
    const text = this.#tokens[id];
    if (text === undefined) return new Uint8Array(0);
    if (this.#addedIds.has(id)) return new TextEncoder().encode(text);
    if (this.#decoder === "byteLevel") return byteLevelDecode(text);
    const byte = this.#byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(text) : null;
    if (byte) return new Uint8Array([parseInt(byte[1], 16)]);
    return new TextEncoder().encode(text.replaceAll("▁", " "));
  }

  // The library always splits special added tokens out of the text; a second instance without
  // them encodes their text as ordinary characters (llama.cpp's parse_special = false).
  #plain(): Tokenizer {
    if (this.#plainTokenizer === undefined) {
      const added = Array.isArray(this.#json.added_tokens) ? this.#json.added_tokens : [];
      const json = { ...this.#json, added_tokens: added.filter((t) => !isObject(t) || !t.special) };
      try {
        this.#plainTokenizer = new Tokenizer(json, this.#config);
      } catch (error) {
        throw new TokenizerError(this.#source, `could not be loaded: ${error}`, { cause: error });
      }
    }
    return this.#plainTokenizer;
  }
}

async function readJson(path: string, required: boolean): Promise<Json | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (!required && error instanceof Deno.errors.NotFound) return undefined;
    const detail = error instanceof Deno.errors.NotFound ? "file not found" : `${error}`;
    throw new TokenizerError(path, detail, { cause: error });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new TokenizerError(path, `invalid JSON: ${(error as Error).message}`, { cause: error });
  }
  if (!isObject(value)) throw new TokenizerError(path, "expected a JSON object");
  return value;
}

async function readOptionalText(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new TokenizerError(path, `${error}`, { cause: error });
  }
}

/**
 * Loads `dir`/tokenizer.json (required), tokenizer_config.json, generation_config.json,
 * config.json and chat_template.jinja (all optional).
 */
export async function loadHfTokenizer(dir: string): Promise<HfTokenizer> {
  if (typeof dir !== "string" || dir.length === 0) {
    throw new TypeError("Expected a tokenizer directory path");
  }
  const path = (name: string) => `${dir.replace(/\/+$/, "")}/${name}`;
  const [tokenizerJson, tokenizerConfig, generationConfig, modelConfig, chatTemplateJinja] =
    await Promise.all([
      readJson(path("tokenizer.json"), true),
      readJson(path("tokenizer_config.json"), false),
      readJson(path("generation_config.json"), false),
      readJson(path("config.json"), false),
      readOptionalText(path("chat_template.jinja")),
    ]);
  return new HfTokenizer({
    tokenizerJson: tokenizerJson!,
    tokenizerConfig,
    generationConfig,
    modelConfig,
    chatTemplateJinja,
    source: path("tokenizer.json"),
  });
}
