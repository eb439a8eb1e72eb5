// Deterministic byte-level BPE tokenizers of real vocabulary sizes for random-weight test models.

import type { GgufValue } from "../formats/gguf.ts";
import { BYTE_TO_CHAR, byteLevelEncode } from "../tokenizer/byte_level.ts";
import { preTokenizer } from "../tokenizer/pretokenize.ts";

/** Pre-tokenizers a synthetic tokenizer can use. */
export type SyntheticPre = "llama-bpe" | "qwen2" | "smollm";

/** Options for {@link buildSyntheticTokenizer}. */
export interface SyntheticTokenizerOptions {
  kind: "gpt2";
  /** Total number of tokens, special tokens included (for example 32000, 128256, 151936). */
  vocabSize: number;
  pre: SyntheticPre;
  /** Seeds the extra pseudo-words mixed into the training text. Default 0. */
  seed?: number;
  /** More special (control) tokens, appended after the defaults of `pre`. */
  specialTokens?: readonly string[];
}

/** One GGUF metadata entry: `[kv.key, kv]` is what a GGUF writer takes. */
export type SyntheticGgufKV = { key: string } & GgufValue;

/** The same tokenizer in both formats. */
export interface SyntheticTokenizer {
  /** Contents of tokenizer.json. */
  tokenizerJson: Record<string, unknown>;
  /** Contents of tokenizer_config.json (with the chat template). */
  tokenizerConfig: Record<string, unknown>;
  /** Contents of generation_config.json (EOS ids). */
  generationConfig: Record<string, unknown>;
  /** `tokenizer.ggml.*` and `tokenizer.chat_template` entries for a GGUF file. */
  ggufKVs: SyntheticGgufKV[];
}

// Split regexes as llama.cpp has them (llm_tokenizer_bpe), which tokenizer.json libraries accept.
const GPT2_REGEX = String
  .raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
const CONTRACTIONS = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])`;
const LLAMA3_REGEX = CONTRACTIONS +
  String
    .raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2_REGEX = CONTRACTIONS +
  String.raw`|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

const LLAMA3_TEMPLATE = "{{- bos_token }}{%- for message in messages %}" +
  "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + " +
  "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}" +
  "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
const CHATML_TEMPLATE = "{%- for message in messages %}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
  "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

interface PreProfile {
  specials: string[];
  bos: string;
  eos: string;
  /** Extra ids that end generation (generation_config.json). */
  stop: string[];
  addBos: boolean;
  ignoreMerges: boolean;
  preTokenizer: Record<string, unknown>;
  chatTemplate: string;
}

function split(regex: string): Record<string, unknown> {
  return { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false };
}
const BYTE_LEVEL = {
  type: "ByteLevel",
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: false,
};

const PROFILES: Record<SyntheticPre, PreProfile> = {
  "llama-bpe": {
    specials: [
      "<|begin_of_text|>",
      "<|end_of_text|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|eot_id|>",
    ],
    bos: "<|begin_of_text|>",
    eos: "<|end_of_text|>",
    stop: ["<|end_of_text|>", "<|eot_id|>"],
    addBos: true,
    ignoreMerges: true,
    preTokenizer: { type: "Sequence", pretokenizers: [split(LLAMA3_REGEX), BYTE_LEVEL] },
    chatTemplate: LLAMA3_TEMPLATE,
  },
  qwen2: {
    specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    bos: "<|endoftext|>",
    eos: "<|im_end|>",
    stop: ["<|im_end|>", "<|endoftext|>"],
    addBos: false,
    ignoreMerges: false,
    preTokenizer: { type: "Sequence", pretokenizers: [split(QWEN2_REGEX), BYTE_LEVEL] },
    chatTemplate: CHATML_TEMPLATE,
  },
  smollm: {
    specials: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    bos: "<|im_start|>",
    eos: "<|im_end|>",
    stop: ["<|im_end|>", "<|endoftext|>"],
    addBos: false,
    ignoreMerges: false,
    // Split on \p{N} rather than the Digits pre-tokenizer: JS `\d` is ASCII-only.
    preTokenizer: {
      type: "Sequence",
      pretokenizers: [split(String.raw`\p{N}`), split(GPT2_REGEX), BYTE_LEVEL],
    },
    chatTemplate: CHATML_TEMPLATE,
  },
};

// Training text: English prose, code, numbers, accents, several scripts, emoji, odd spacing.
const SAMPLE_TEXT =
  `Once upon a time, there was a little girl named Lily. She loved to play outside in the park.
One day, she saw a big, red ball under the tree. "Can I play with it?" she asked her mom.
"Yes, you can," said Mom. They played together until the sun went down, and they were happy.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! It's what we're doing; they'll see, I'd say, you've won, I'm here.

def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

function add(a, b) { return a + b; }
const values = [1, 2, 3, 42, 1000, 65536, 3.14159, -273.15, 1e-9];
for (let i = 0; i < values.length; i++) { console.log(\`value[\${i}] = \${values[i]}\`); }
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;
	tab	separated	values	2024-01-15	12:30:45
Prices: $19.99, €25,00, £7.50, ¥1200 — 50% off! Call +1 (555) 123-4567 or email hello@example.com.
Le café est très bon, naïve façade, élève, garçon, où est la bibliothèque? Über große Straßen fahren schöne Autos.
El niño comió mañana en la montaña; ¿qué pasó? ¡Olé! São Paulo, coração, ação, Ærø, Øresund, Åland, İstanbul.
Привет, как дела? Всё хорошо, спасибо. Γειά σου κόσμε, καλημέρα. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया।
你好，世界！今天天气很好，我们去公园散步吧。中文测试文本，包含常用汉字和标点符号。
こんにちは、世界。今日はいい天気ですね。カタカナとひらがなと漢字のテキストです。
안녕하세요 세계! 오늘 날씨가 좋네요. 한국어 텍스트입니다.
Emoji: 😀 😃 😄 🎉 🚀 ❤️ 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨🔥💯 and symbols ™ © ® ° ± × ÷ → ← ∞ ≈ ≠ ≤ ≥ ∑ √ π.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2048 4096 123456789 007 3,141,592 ½ ² ³ ٣ ٤.

Multiple   spaces,   trailing spaces   
and blank lines


and CRLF\r\nline endings\r\n.
`;

const SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sha", "tor", "vel", "qui", "zen", "ba", "dor"];

/** mulberry32: a small, fast, seedable PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function trainingText(seed: number): string {
  const random = prng(seed);
  const words: string[] = [];
  for (let i = 0; i < 400; i++) {
    let word = "";
    const numSyllables = 1 + Math.floor(random() * 3);
    for (let s = 0; s < numSyllables; s++) {
      word += SYLLABLES[Math.floor(random() * SYLLABLES.length)];
    }
    words.push(word);
  }
  return `${SAMPLE_TEXT}\n${words.join(" ")}\n`;
}

/** Learns up to `maxNewTokens` merges over `words` (byte-level strings with counts). */
function learnMerges(
  words: Map<string, number>,
  maxNewTokens: number,
  vocab: Set<string>,
): [string, string][] {
  const entries = [...words].map(([word, count]) => ({ symbols: Array.from(word), count }));
  const merges: [string, string][] = [];
  let numNew = 0;
  while (numNew < maxNewTokens) {
    const counts = new Map<string, number>();
    for (const { symbols, count } of entries) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]} ${symbols[i + 1]}`;
        counts.set(key, (counts.get(key) ?? 0) + count);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, count] of counts) {
      if (count > bestCount || (count === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === undefined) break;
    const [left, right] = best.split(" ");
    const merged = left + right;
    merges.push([left, right]);
    if (!vocab.has(merged)) {
      vocab.add(merged);
      numNew++;
    }
    for (const entry of entries) {
      const { symbols } = entry;
      const out: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i + 1 < symbols.length && symbols[i] === left && symbols[i + 1] === right) {
          out.push(merged);
          i++;
        } else {
          out.push(symbols[i]);
        }
      }
      entry.symbols = out;
    }
  }
  return merges;
}

/**
 * Builds a byte-level BPE tokenizer with exactly `vocabSize` tokens: the 256 byte symbols,
 * merges learned from a built-in multilingual sample, filler tokens `~N~` that no merge or
 * pre-token produces (to reach the size), then the special tokens of `pre`. Deterministic in
 * `seed`. The HF files and the GGUF entries describe the same tokenizer.
 */
export function buildSyntheticTokenizer(opts: SyntheticTokenizerOptions): SyntheticTokenizer {
  if (opts?.kind !== "gpt2") {
    throw new RangeError(`Unsupported synthetic tokenizer kind ${JSON.stringify(opts?.kind)}`);
  }
  if (!Object.hasOwn(PROFILES, opts.pre)) {
    throw new RangeError(
      `Unsupported pre ${JSON.stringify(opts.pre)}; expected one of ${Object.keys(PROFILES)}`,
    );
  }
  const profile = PROFILES[opts.pre];
  const specials = [...profile.specials, ...(opts.specialTokens ?? [])];
  if (new Set(specials).size !== specials.length) {
    throw new RangeError("Expected special tokens to be unique");
  }
  const numRegular = opts.vocabSize - specials.length;
  if (!Number.isInteger(opts.vocabSize) || numRegular < 256) {
    throw new RangeError(
      `Expected vocabSize to be an integer of at least ${
        256 + specials.length
      }, got ${opts.vocabSize}`,
    );
  }

  const tokens = BYTE_TO_CHAR.slice();
  const vocab = new Set(tokens);
  const words = new Map<string, number>();
  for (const word of preTokenizer(opts.pre)(trainingText(opts.seed ?? 0))) {
    const encoded = byteLevelEncode(word);
    words.set(encoded, (words.get(encoded) ?? 0) + 1);
  }
  const merges = learnMerges(words, numRegular - 256, vocab);
  for (const token of vocab) if (!tokens.includes(token)) tokens.push(token);
  for (let i = 0; tokens.length < numRegular; i++) {
    const filler = `~${i}~`;
    if (!vocab.has(filler)) tokens.push(filler);
  }
  const firstSpecial = tokens.length;
  tokens.push(...specials);
  const idOf = (token: string) => tokens.indexOf(token, firstSpecial);
  const bosId = idOf(profile.bos);
  const eosId = idOf(profile.eos);
  const stopIds = profile.stop.map(idOf);
  const mergeStrings = merges.map(([a, b]) => `${a} ${b}`);

  const addedTokens = specials.map((content, i) => ({
    id: firstSpecial + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const postProcessor = profile.addBos
    ? {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: profile.bos, type_id: 0 } }, {
        Sequence: { id: "A", type_id: 0 },
      }],
      pair: [
        { SpecialToken: { id: profile.bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: profile.bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [profile.bos]: { id: profile.bos, ids: [bosId], tokens: [profile.bos] } },
    }
    : { ...BYTE_LEVEL, type: "ByteLevel" };
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: profile.preTokenizer,
    post_processor: postProcessor,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: profile.ignoreMerges,
      vocab: Object.fromEntries(tokens.slice(0, firstSpecial).map((t, i) => [t, i])),
      merges: mergeStrings,
    },
  };
  const tokenizerConfig = {
    add_bos_token: profile.addBos,
    add_eos_token: false,
    bos_token: profile.bos,
    eos_token: profile.eos,
    clean_up_tokenization_spaces: false,
    model_max_length: 131072,
    tokenizer_class: "PreTrainedTokenizerFast",
    chat_template: profile.chatTemplate,
  };
  const generationConfig = { bos_token_id: bosId, eos_token_id: stopIds };
  const tokenTypes = tokens.map((_, i) => (i < firstSpecial ? 1 : 3));
  const ggufKVs: SyntheticGgufKV[] = [
    { key: "tokenizer.ggml.model", type: "str", value: "gpt2" },
    { key: "tokenizer.ggml.pre", type: "str", value: opts.pre },
    { key: "tokenizer.ggml.tokens", type: "arr", itemType: "str", value: tokens },
    { key: "tokenizer.ggml.token_type", type: "arr", itemType: "i32", value: tokenTypes },
    { key: "tokenizer.ggml.merges", type: "arr", itemType: "str", value: mergeStrings },
    { key: "tokenizer.ggml.bos_token_id", type: "u32", value: bosId },
    { key: "tokenizer.ggml.eos_token_id", type: "u32", value: eosId },
    { key: "tokenizer.ggml.add_bos_token", type: "bool", value: profile.addBos },
    { key: "tokenizer.chat_template", type: "str", value: profile.chatTemplate },
  ];
  return { tokenizerJson, tokenizerConfig, generationConfig, ggufKVs };
}
