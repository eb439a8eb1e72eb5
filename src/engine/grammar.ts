// Constrained decoding with xgrammar (WebAssembly): a request's output format compiled once against
// the tokenizer's vocabulary, one matcher per sample, and the bitmask of allowed next tokens that the
// sampler applies before it samples.
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { BYTE_TO_CHAR } from "../tokenizer/byte_level.ts";
import { DenollmError } from "../errors.ts";
import { createRequire } from "node:module";

/**
 * What a request's output must match; plain data, so it crosses the worker's postMessage.
 * `json_object` is any JSON object; a schema is JSON Schema text; `grammar` is xgrammar's EBNF.
 */
export type StructuredOutput =
  | { type: "json_object" }
  | { type: "json_schema"; schema: string; strict?: boolean }
  | { type: "regex"; pattern: string }
  | { type: "choice"; choices: string[] }
  | { type: "grammar"; grammar: string };

import type {
  CompiledGrammar,
  GrammarCompiler as XgCompiler,
  GrammarMatcher as Matcher,
} from "@mlc-ai/web-xgrammar";

type Xgrammar = typeof import("@mlc-ai/web-xgrammar");

let loading: Promise<Xgrammar> | undefined;

/**
 * Loads xgrammar once. web-xgrammar 0.1.27 ships a UMD bundle under `"type": "module"`: Deno runs it
 * as ESM, where it defines `globalThis.xgrammar`, and its Emscripten loader, seeing `process`,
 * takes the Node path and calls `require` and reads `__filename`, which ESM lacks. Both are
 * provided for the load and the WebAssembly instantiation, then removed.
 */
function loadXgrammar(): Promise<Xgrammar> {
  loading ??= (async () => {
    const g = globalThis as Record<string, unknown>;
    const had = { require: "require" in g, __filename: "__filename" in g };
    if (!had.require) g.require = createRequire(import.meta.url);
    if (!had.__filename) g.__filename = new URL(import.meta.url).pathname;
    try {
      await import("@mlc-ai/web-xgrammar");
      const xg = g.xgrammar as Xgrammar;
      // Instantiates the WebAssembly module while the shims are there.
      (await xg.TokenizerInfo.createTokenizerInfo(["a"])).dispose();
      return xg;
    } finally {
      if (!had.require) delete g.require;
      if (!had.__filename) delete g.__filename;
    }
  })();
  return loading;
}

/** The output format cannot be compiled (a bad schema, regex or grammar): the caller's fault. */
export class GrammarError extends DenollmError {
  constructor(message: string, options?: ErrorOptions) {
    super("invalid_argument", message, options);
    this.name = "GrammarError";
  }
}

/** Time spent computing masks, for benchmarks: calls and milliseconds since start-up. */
export const maskTiming = { numMasks: 0, totalMs: 0 };

/**
 * One sample's position in its grammar. The mask for the next token is computed as soon as the
 * previous one is accepted, asynchronously (xgrammar's JS API is async), so in the engine worker
 * it is ready before the next step; when it is not (an engine stepped synchronously), it is
 * computed on the spot.
 */
export class TokenGrammar {
  #matcher: Matcher;
  #numWords: number;
  #vocabSize: number;
  #mask?: Int32Array;
  #version = 0;
  #isDisposed = false;
  #isTerminated = false;

  constructor(matcher: Matcher, vocabSize: number) {
    this.#matcher = matcher;
    this.#vocabSize = vocabSize;
    this.#numWords = Math.ceil(vocabSize / 32);
    this.#prefetch();
  }

  /** Bitmask of the tokens allowed next: bit `id & 31` of word `id >> 5`. */
  mask(): Int32Array {
    if (this.#mask === undefined) {
      const started = performance.now();
      // deno-lint-ignore no-explicit-any
      const vector = (this.#matcher as any).handle.GetNextTokenBitmask(this.#vocabSize);
      const mask = new Int32Array(this.#numWords);
      for (let i = 0; i < mask.length; i++) mask[i] = vector.get(i);
      vector.delete();
      this.#mask = mask;
      maskTiming.numMasks++;
      maskTiming.totalMs += performance.now() - started;
    }
    return this.#mask;
  }

  /** Advances past `tokenId`; false if the grammar does not allow it. */
  accept(tokenId: number): boolean {
    const ok = this.#matcher.acceptToken(tokenId);
    this.#mask = undefined;
    this.#version++;
    this.#isTerminated = this.#matcher.isTerminated();
    if (ok && !this.#isTerminated) this.#prefetch();
    return ok;
  }

  /** Whether the output is complete (the grammar accepted a stop token). */
  get isTerminated(): boolean {
    return this.#isTerminated;
  }

  dispose(): void {
    if (this.#isDisposed) return;
    this.#isDisposed = true;
    this.#version++;
    this.#matcher.dispose();
  }

  #prefetch(): void {
    const version = this.#version;
    const started = performance.now();
    this.#matcher.getNextTokenBitmask().then((mask) => {
      if (version !== this.#version || this.#mask !== undefined) return;
      this.#mask = mask;
      maskTiming.numMasks++;
      maskTiming.totalMs += performance.now() - started;
    }, () => {
      // The synchronous path in mask() reports the error where it matters.
    });
  }
}

/** The xgrammar string of a token: its bytes in GPT-2's byte-level alphabet ("" for control). */
function encodedToken(tokenizer: TextTokenizer, id: number): string {
  if (tokenizer.isSpecial(id)) return "";
  let out = "";
  for (const b of tokenizer.tokenBytes(id)) out += BYTE_TO_CHAR[b];
  return out;
}

const MAX_CACHED = 64;

/**
 * Compiles output formats against one tokenizer (built on first use: a pass over the vocabulary)
 * and hands out matchers. Compiled grammars are kept for the most recent {@link MAX_CACHED}
 * formats, so repeated schemas compile once.
 */
export class GrammarCompiler {
  #tokenizer: TextTokenizer;
  #vocabSize: number;
  #compiler?: Promise<XgCompiler>;
  #cache = new Map<string, CompiledGrammar>();

  constructor(tokenizer: TextTokenizer, vocabSize: number) {
    this.#tokenizer = tokenizer;
    this.#vocabSize = vocabSize;
  }

  /** One matcher per sample for `format`; throws a {@link GrammarError} for a bad format. */
  async matchers(format: StructuredOutput, numSamples: number): Promise<TokenGrammar[]> {
    const xg = await loadXgrammar();
    const compiled = await this.#compiled(format);
    const out: TokenGrammar[] = [];
    for (let i = 0; i < numSamples; i++) {
      const matcher = await xg.GrammarMatcher.createGrammarMatcher(compiled);
      out.push(new TokenGrammar(matcher, this.#vocabSize));
    }
    return out;
  }

  async #compiled(format: StructuredOutput): Promise<CompiledGrammar> {
    const key = JSON.stringify(format);
    const hit = this.#cache.get(key);
    if (hit !== undefined) {
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit;
    }
    const compiler = await this.#getCompiler();
    let compiled: CompiledGrammar;
    try {
      compiled = await compileFormat(compiler, format);
    } catch (error) {
      const detail = error instanceof Error ? error.message : String(error);
      throw new GrammarError(`Invalid ${formatName(format)}: ${detail}`, { cause: error });
    }
    if (this.#cache.size >= MAX_CACHED) {
      const [oldKey, old] = this.#cache.entries().next().value!;
      this.#cache.delete(oldKey);
      old.dispose(); // matchers made from it hold their own reference
    }
    this.#cache.set(key, compiled);
    return compiled;
  }

  #getCompiler() {
    this.#compiler ??= (async () => {
      const xg = await loadXgrammar();
      const vocab: string[] = [];
      for (let id = 0; id < this.#tokenizer.vocabSize; id++) {
        vocab.push(encodedToken(this.#tokenizer, id));
      }
      const info = await xg.TokenizerInfo.createTokenizerInfo(
        vocab,
        "byte_level",
        false,
        this.#vocabSize,
        [...this.#tokenizer.eosIds],
      );
      // Our own cache bounds memory; xgrammar's would keep every schema ever sent.
      return await xg.GrammarCompiler.createGrammarCompiler(info, false);
    })();
    return this.#compiler;
  }
}

function formatName(format: StructuredOutput): string {
  switch (format.type) {
    case "json_object":
    case "json_schema":
      return "JSON schema";
    case "regex":
      return "regex";
    case "choice":
      return "choice list";
    case "grammar":
      return "grammar";
  }
}

/**
 * JSON comes out on one line with `", "` and `": "` between items (xgrammar's compact form): free
 * whitespace lets a model wander in spaces and newlines for hundreds of tokens.
 */
function compileFormat(
  compiler: XgCompiler,
  format: StructuredOutput,
): Promise<CompiledGrammar> {
  switch (format.type) {
    case "json_object":
      return compiler.compileJSONSchema('{"type": "object"}', false, -1, undefined, false);
    case "json_schema":
      return compiler.compileJSONSchema(
        format.schema,
        false,
        -1,
        undefined,
        format.strict ?? false,
      );
    case "regex":
      return compiler.compileStructuralTag({
        type: "structural_tag",
        format: { type: "regex", pattern: format.pattern },
      });
    case "choice":
      return compiler.compileStructuralTag({
        type: "structural_tag",
        format: {
          type: "or",
          elements: format.choices.map((value) => ({ type: "const_string", value })),
        },
      });
    case "grammar":
      return compiler.compileGrammar(format.grammar);
  }
}
