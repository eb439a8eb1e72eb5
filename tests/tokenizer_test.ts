// Tokenizers: GGUF (llama.cpp rules) and HF paths agree with llama.cpp and with each other;
// streaming detokenization equals batch decoding.
import assert from "node:assert/strict";
import { Tokenizer } from "@huggingface/tokenizers";
import { ModelFormatError } from "../src/formats/errors.ts";
import { readGguf } from "../src/formats/gguf.ts";
import { ggufTokenizer } from "../src/tokenizer/gguf.ts";
import { HfTokenizer, loadHfTokenizer } from "../src/tokenizer/hf.ts";
import { preTokenizer } from "../src/tokenizer/pretokenize.ts";
import {
  buildSyntheticTokenizer,
  type SyntheticPre,
} from "../src/random_model/synthetic_tokenizer.ts";
import {
  IncrementalDetokenizer,
  type TextTokenizer,
  TokenizerError,
} from "../src/tokenizer/tokenizer.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const FIXTURE_URL = new URL("./fixtures/llamacpp/stories260K.json", import.meta.url);

/** Mixed texts: UTF-8 of several scripts, emoji (ZWJ, flags, skin tones), whitespace, digits. */
const MIXED_TEXTS = [
  "",
  " ",
  "Hello world",
  " Hello  world ",
  "Once upon a time, there was a little girl named Lily.",
  "\n\nnew lines\n",
  "café naïve résumé Ünïcödé",
  "日本語のテキスト、你好，世界！안녕하세요",
  "Привет мир! Γειά σου. مرحبا",
  "emoji 🎉🙂 ok 👨‍👩‍👧‍👦 👍🏽 🇫🇷🇯🇵",
  "x = f(1234567) + 3.14; // 1,000,000.00 -42",
  "tabs\tand\r\nCRLF\r\n",
  "don't I'M we're THEY'LL it'S",
  "   leading spaces",
  "trailing   ",
  "    def f():\n        return 1\n",
  "½ ² ³ ٣٤ 2024-01-15",
];

/** llama.cpp ids for stories260K (node-llama-cpp 3.21.1, model.tokenize(text, true)). */
const STORIES_PARSE_SPECIAL: [string, number[]][] = [
  ["<s> not special </s>", [1, 410, 297, 309, 262, 427, 411, 429, 417, 412, 421, 410, 2]],
  ["a<s>b", [261, 1, 268]],
];

function readFixture(): {
  tokenize: { cases: { text: string; ids: number[] }[] };
  generate: { prompt: string; promptIds: number[]; generatedIds: number[]; text: string };
} | undefined {
  try {
    return JSON.parse(Deno.readTextFileSync(FIXTURE_URL));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** Streams `ids` through an IncrementalDetokenizer; returns the deltas (flush last). */
function stream(tok: TextTokenizer, ids: number[], skipSpecial = false): string[] {
  const detok = new IncrementalDetokenizer(tok, { skipSpecial });
  const deltas = ids.map((id) => detok.push(id));
  deltas.push(detok.flush());
  assert.equal(detok.text, deltas.join(""));
  return deltas;
}

function assertStreamsLikeDecode(tok: TextTokenizer, ids: number[], skipSpecial = false): void {
  const deltas = stream(tok, ids, skipSpecial);
  const full = tok.decode(ids, { skipSpecial });
  assert.equal(deltas.join(""), full);
  if (!full.includes("\uFFFD")) {
    for (const delta of deltas) assert.ok(!delta.includes("\uFFFD"), `delta ${delta}`);
  }
}

const storiesGguf = async () =>
  ggufTokenizer((await readGguf(`${MODEL_DIR}/stories260K-f32.gguf`)).metadata, {
    source: "stories260K-f32.gguf",
  });

Deno.test("stories260K: GGUF and HF tokenizers match llama.cpp", async (t) => {
  const gguf = await storiesGguf();
  const hf = await loadHfTokenizer(`${MODEL_DIR}/hf`);
  const fixture = readFixture();

  await t.step("special ids and flags", () => {
    for (const tok of [gguf, hf]) {
      assert.equal(tok.vocabSize, 512);
      assert.equal(tok.bosId, 1);
      assert.deepEqual(tok.eosIds, [2]);
      assert.equal(tok.addBos, true);
      assert.equal(tok.stripLeadingSpace, true);
      assert.ok(tok.isSpecial(0) && tok.isSpecial(1) && tok.isSpecial(2) && !tok.isSpecial(3));
    }
  });

  await t.step({
    name: "llama.cpp reference tokenizations (tests/fixtures/llamacpp)",
    ignore: fixture === undefined,
    fn: () => {
      for (const { text, ids } of fixture!.tokenize.cases) {
        assert.deepEqual(gguf.encode(text, { addSpecial: false }), ids, `gguf ${text}`);
        assert.deepEqual(hf.encode(text, { addSpecial: false }), ids, `hf ${text}`);
      }
      assert.deepEqual(gguf.encode(fixture!.generate.prompt), fixture!.generate.promptIds);
      assert.deepEqual(hf.encode(fixture!.generate.prompt), fixture!.generate.promptIds);
    },
  });

  await t.step("special-token text is parsed only when asked", () => {
    for (const [text, ids] of STORIES_PARSE_SPECIAL) {
      assert.deepEqual(gguf.encode(text, { addSpecial: false, parseSpecial: true }), ids);
      assert.deepEqual(hf.encode(text, { addSpecial: false, parseSpecial: true }), ids);
      assert.ok(!gguf.encode(text, { addSpecial: false }).includes(1));
    }
  });

  await t.step("HF path and GGUF path agree on mixed texts", () => {
    for (const text of MIXED_TEXTS) {
      for (const opts of [{}, { addSpecial: false }, { parseSpecial: true }]) {
        assert.deepEqual(hf.encode(text, opts), gguf.encode(text, opts), JSON.stringify(text));
      }
    }
  });

  await t.step("decode(encode(x)) == x, and equals the HF library's decode", () => {
    const json = JSON.parse(Deno.readTextFileSync(`${MODEL_DIR}/hf/tokenizer.json`));
    const lib = new Tokenizer(json, { clean_up_tokenization_spaces: false });
    for (const text of MIXED_TEXTS) {
      const ids = gguf.encode(text);
      assert.equal(gguf.decode(ids, { skipSpecial: true }), text);
      assert.equal(hf.decode(ids, { skipSpecial: true }), text);
      for (const skip of [true, false]) {
        const expected = lib.decode(ids, { skip_special_tokens: skip });
        assert.equal(hf.decode(ids, { skipSpecial: skip }), expected, JSON.stringify(text));
      }
    }
    // Without skipping, BOS renders and the encoder's prefix space survives (as in HF).
    assert.equal(gguf.decode(gguf.encode("Hi there")), "<s> Hi there");
  });

  await t.step({
    name: "generated ids decode to llama.cpp's text",
    ignore: fixture === undefined,
    fn: () => {
      const { generatedIds, text } = fixture!.generate;
      assert.equal(gguf.decode(generatedIds), text);
      assert.equal(stream(gguf, generatedIds).join(""), text);
    },
  });
});

Deno.test("IncrementalDetokenizer", async (t) => {
  const tok = await storiesGguf();

  await t.step("concatenated deltas equal decode(allIds) on mixed texts", () => {
    for (const text of MIXED_TEXTS) {
      const ids = tok.encode(text);
      assertStreamsLikeDecode(tok, ids, true);
      assertStreamsLikeDecode(tok, ids, false);
      assertStreamsLikeDecode(tok, ids.slice(1), true);
    }
  });

  await t.step("a character split across byte-fallback tokens waits until complete", () => {
    const ids = tok.encode("🎉", { addSpecial: false });
    // "▁" then the four bytes F0 9F 8E 89 as <0xXX> tokens.
    assert.deepEqual(ids.slice(1).map((id) => tok.tokenText(id)), [
      "<0xF0>",
      "<0x9F>",
      "<0x8E>",
      "<0x89>",
    ]);
    const deltas = stream(tok, ids);
    // The leading space is stripped at the start of the stream, like the HF Strip decoder.
    assert.deepEqual(deltas, ["", "", "", "", "🎉", ""]);
  });

  await t.step("the leading space is stripped only at the very start", () => {
    const hello = tok.encode("Hello world", { addSpecial: false });
    assert.equal(stream(tok, hello).join(""), "Hello world");
    assert.equal(stream(tok, [...hello, ...hello]).join(""), "Hello world Hello world");
    // BOS rendered first: nothing to strip, as in decode().
    assert.equal(stream(tok, [1, ...hello]).join(""), "<s> Hello world");
    assert.equal(stream(tok, [1, ...hello], true).join(""), "Hello world");
  });

  await t.step("a cut-off character decodes to U+FFFD only at flush, like decode", () => {
    const ids = tok.encode("🎉", { addSpecial: false }).slice(0, -1);
    const deltas = stream(tok, ids);
    assert.equal(deltas.join(""), tok.decode(ids));
    assert.ok(deltas.slice(0, -1).every((d) => !d.includes("\uFFFD")));
    assert.equal(deltas.at(-1), "\uFFFD");
  });
});

/** A hand-built SentencePiece vocabulary: ids 0-2 specials, bytes, then scored pieces. */
function tinySpm(extra: [string, number][] = [], overrides: [string, unknown][] = []) {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [2, 3, 3];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(6);
    scores.push(0);
  }
  const pieces: [string, number, number?][] = [
    ["▁", -1],
    ["a", -2],
    ["b", -2],
    ["c", -2],
    ["ab", -3],
    ["bc", -1.5],
    ["▁a", -4],
    ["abc", -5],
    ["<tool>", 0, 4],
    ["<|eot_id|>", 0, 3],
    ...extra,
  ];
  for (const [text, score, type] of pieces) {
    tokens.push(text);
    scores.push(score);
    types.push(type ?? 1);
  }
  const metadata = new Map<string, unknown>([
    ["tokenizer.ggml.model", "llama"],
    ["tokenizer.ggml.tokens", tokens],
    ["tokenizer.ggml.scores", scores],
    ["tokenizer.ggml.token_type", types],
    ...overrides,
  ]);
  const tok = ggufTokenizer(metadata);
  const ids = (...texts: string[]) => texts.map((t) => tok.tokenId(t)!);
  return { tok, ids };
}

Deno.test("GGUF SentencePiece tokenizer on hand-built metadata", async (t) => {
  await t.step("merges by highest score, leftmost first on ties", () => {
    const { tok, ids } = tinySpm();
    // "▁abc": ▁a(-4), ab(-3), bc(-1.5): bc wins, then ▁+a → ▁a, then ▁a+bc is not a token.
    assert.deepEqual(tok.encode("abc", { addSpecial: false }), ids("▁a", "bc"));
    // No prefix space: a+bc is not a token; ab(-3) loses to bc(-1.5).
    const { tok: noPrefix, ids: ids2 } = tinySpm([], [[
      "tokenizer.ggml.add_space_prefix",
      false,
    ]]);
    // Then a+bc → abc, which is a token.
    assert.deepEqual(noPrefix.encode("abc", { addSpecial: false }), ids2("abc"));
    // ab(-3) twice beats ▁a(-4); the left "ab" goes first, then ▁+ab is not a token.
    assert.deepEqual(noPrefix.encode("ab ab", { addSpecial: false }), ids2("ab", "▁", "ab"));
    // Equal scores: the leftmost pair merges first.
    const { tok: tie, ids: ids3 } = tinySpm([["aa", -1]], [[
      "tokenizer.ggml.add_space_prefix",
      false,
    ]]);
    assert.deepEqual(tie.encode("aaa", { addSpecial: false }), ids3("aa", "a"));
  });

  await t.step("unknown characters fall back to byte tokens", () => {
    const { tok, ids } = tinySpm();
    assert.deepEqual(tok.encode("é", { addSpecial: false }), ids("▁", "<0xC3>", "<0xA9>"));
    assert.equal(tok.decode(tok.encode("é ab"), { skipSpecial: true }), "é ab");
  });

  await t.step("BOS/EOS flags and user-defined vs control tokens", () => {
    const { tok, ids } = tinySpm([], [["tokenizer.ggml.add_eos_token", true]]);
    assert.deepEqual(tok.encode("a"), [1, ...ids("▁a"), 2]);
    // User-defined tokens are always split out; a special prefix space follows them.
    assert.deepEqual(tok.encode("a<tool>a", { addSpecial: false }), ids("▁a", "<tool>", "▁a"));
    // Control tokens only with parseSpecial.
    assert.ok(
      !tok.encode("<|eot_id|>", { addSpecial: false }).includes(tok.tokenId("<|eot_id|>")!),
    );
    assert.deepEqual(
      tok.encode("<|eot_id|>", { addSpecial: false, parseSpecial: true }),
      ids(
        "<|eot_id|>",
      ),
    );
    // <|eot_id|> is end-of-generation by its text, as in llama.cpp.
    assert.deepEqual(tok.eosIds, [2, tok.tokenId("<|eot_id|>")!]);
    assert.equal(tok.decode([tok.tokenId("<tool>")!, 2], { skipSpecial: true }), "<tool>");
  });

  await t.step("metadata values may be wrapped GGUF values", () => {
    const { tok } = tinySpm([], [
      ["tokenizer.ggml.add_bos_token", { type: "bool", value: false }],
      ["tokenizer.ggml.eot_token_id", { type: "u32", value: 5 }],
    ]);
    assert.equal(tok.addBos, false);
    assert.deepEqual(tok.encode("a").length, 1);
    assert.ok(tok.eosIds.includes(5));
  });

  await t.step("clear errors for bad metadata", () => {
    const bad = (entries: [string, unknown][]) => () => ggufTokenizer(new Map(entries));
    assert.throws(bad([]), TokenizerError);
    assert.throws(bad([["tokenizer.ggml.model", "t5"]]), /unsupported tokenizer.ggml.model "t5"/);
    assert.throws(bad([["tokenizer.ggml.model", "llama"]]), /tokenizer.ggml.tokens is missing/);
    assert.throws(
      bad([
        ["tokenizer.ggml.model", "gpt2"],
        ["tokenizer.ggml.pre", "no-such-pre"],
        ["tokenizer.ggml.tokens", ["a"]],
        ["tokenizer.ggml.merges", []],
      ]),
      (e) =>
        e instanceof ModelFormatError && /Unsupported pre-tokenizer "no-such-pre"/.test(e.message),
    );
    assert.throws(() => ggufTokenizer({} as Map<string, unknown>), TypeError);
    const { tok } = tinySpm();
    assert.throws(() => tok.decode([tok.vocabSize]), RangeError);
  });
});

// The JS-regex form of llama.cpp's pre-tokenizer patterns, as an HF tokenizer.json writes them.
const JS_PATTERNS: Record<string, RegExp[]> = {
  "llama-bpe": [
    /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
  ],
  qwen2: [
    /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu,
  ],
  "gpt-2": [/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu],
  smollm: [
    /\p{N}/gu,
    /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu,
  ],
};

/** Split with "Isolated" behaviour: matches and the gaps between them are words. */
function regexSplit(text: string, patterns: RegExp[]): string[] {
  let words = [text];
  for (const re of patterns) {
    words = words.flatMap((word) => {
      const out: string[] = [];
      let last = 0;
      for (const m of word.matchAll(re)) {
        if (m.index > last) out.push(word.slice(last, m.index));
        out.push(m[0]);
        last = m.index + m[0].length;
      }
      if (last < word.length) out.push(word.slice(last));
      return out;
    });
  }
  return words;
}

Deno.test("pre-tokenizers: llama.cpp's hand-written splitters equal the regexes", () => {
  assert.deepEqual(preTokenizer("llama-bpe")("Hello world 12345 it's\n\n  x"), [
    "Hello",
    " world",
    " ",
    "123",
    "45",
    " it",
    "'s",
    "\n\n",
    " ",
    " x",
  ]);
  // Random strings over a pool of tricky characters (no U+0085/U+FEFF, where JS `\s` differs).
  const pool = [..."aZé日😀 \t\r\n'sStTrRlLdD0123٣½.,!?-_\"()“—", "  ", "\n\n", " 'll", "'Re"];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const [name, patterns] of Object.entries(JS_PATTERNS)) {
    const split = preTokenizer(name);
    for (let i = 0; i < 300; i++) {
      let text = "";
      for (let n = Math.floor(random() * 30); n > 0; n--) {
        text += pool[Math.floor(random() * pool.length)];
      }
      assert.deepEqual(split(text), regexSplit(text, patterns), `${name} ${JSON.stringify(text)}`);
    }
  }
  assert.throws(() => preTokenizer("nope"), RangeError);
});

const SYNTHETIC_CASES: [SyntheticPre, number][] = [
  ["llama-bpe", 128256],
  ["qwen2", 151936],
  ["smollm", 49152],
  ["llama-bpe", 32000],
];

Deno.test("synthetic tokenizers: HF files and GGUF metadata tokenize identically", async (t) => {
  for (const [pre, vocabSize] of SYNTHETIC_CASES) {
    await t.step(`${pre} ${vocabSize}`, () => {
      const start = performance.now();
      const syn = buildSyntheticTokenizer({ kind: "gpt2", vocabSize, pre, seed: 1 });
      assert.ok(performance.now() - start < 5000);
      const hf = new HfTokenizer({
        tokenizerJson: syn.tokenizerJson,
        tokenizerConfig: syn.tokenizerConfig,
        generationConfig: syn.generationConfig,
      });
      const gguf = ggufTokenizer(new Map(syn.ggufKVs.map((kv) => [kv.key, kv])));
      for (const tok of [hf, gguf]) assert.equal(tok.vocabSize, vocabSize);
      assert.equal(hf.bosId, gguf.bosId);
      assert.deepEqual(hf.eosIds, gguf.eosIds);
      assert.equal(hf.addBos, pre === "llama-bpe");
      assert.equal(gguf.addBos, hf.addBos);
      const tokens = syn.ggufKVs.find((kv) => kv.key === "tokenizer.ggml.tokens")!
        .value as string[];
      assert.equal(new Set(tokens).size, vocabSize);

      const specials = pre === "llama-bpe"
        ? "<|begin_of_text|>hi<|eot_id|>"
        : "<|im_start|>user\nhi<|im_end|>";
      for (const text of [...MIXED_TEXTS, specials]) {
        for (const opts of [{ addSpecial: false }, { addSpecial: false, parseSpecial: true }]) {
          const ids = gguf.encode(text, opts);
          assert.deepEqual(hf.encode(text, opts), ids, JSON.stringify(text));
          assert.equal(gguf.decode(ids, { skipSpecial: !opts.parseSpecial }), text);
          assert.equal(hf.decode(ids, { skipSpecial: !opts.parseSpecial }), text);
          assertStreamsLikeDecode(gguf, ids);
        }
        assert.deepEqual(hf.encode(text), gguf.encode(text));
      }
      // The chat template's control tokens are single tokens when parsed.
      const parsed = gguf.encode(specials, { addSpecial: false, parseSpecial: true });
      assert.ok(gguf.isSpecial(parsed[0]));
    });
  }

  await t.step("deterministic in the seed", () => {
    const merges = (seed: number) =>
      buildSyntheticTokenizer({ kind: "gpt2", vocabSize: 2000, pre: "qwen2", seed }).ggufKVs
        .find((kv) => kv.key === "tokenizer.ggml.merges")!.value;
    assert.deepEqual(merges(5), merges(5));
    assert.notDeepEqual(merges(5), merges(6));
  });

  await t.step("bad options", () => {
    assert.throws(
      () => buildSyntheticTokenizer({ kind: "gpt2", vocabSize: 100, pre: "qwen2" }),
      RangeError,
    );
    assert.throws(
      () =>
        buildSyntheticTokenizer({
          kind: "gpt2",
          vocabSize: 1000,
          pre: "nope" as SyntheticPre,
        }),
      RangeError,
    );
  });
});

Deno.test("loadHfTokenizer reports missing and unsupported files clearly", async () => {
  await assert.rejects(
    () => loadHfTokenizer("/nonexistent/model"),
    (e) =>
      e instanceof TokenizerError && e instanceof ModelFormatError &&
      e.message === "/nonexistent/model/tokenizer.json: file not found",
  );
  const json = JSON.parse(Deno.readTextFileSync(`${MODEL_DIR}/hf/tokenizer.json`));
  assert.throws(
    () => new HfTokenizer({ tokenizerJson: { ...json, decoder: { type: "WordPiece" } } }),
    /unsupported decoder \["WordPiece"\]/,
  );
  assert.throws(
    () => new HfTokenizer({ tokenizerJson: json, generationConfig: { eos_token_id: [2, 9999] } }),
    /eos_token_id 9999 is not a token id/,
  );
  const hf = new HfTokenizer({ tokenizerJson: json, generationConfig: { eos_token_id: [2, 5] } });
  assert.deepEqual(hf.eosIds, [2, 5]);
});
