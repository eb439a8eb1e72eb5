#!/usr/bin/env bash
# Regenerates tests/fixtures/llamacpp/random_<preset>.json: llama.cpp's greedy ids and tokenizations for the
# tiny random-weight presets (F32, seed 1), generated afresh into a temp dir and read by reference.mjs.
# Usage: tools/llamacpp/install.sh && tools/llamacpp/make_random_fixtures.sh [preset...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(tiny-qwen2 tiny-llama-untied)
SEED=1
DTYPE=f32
THREADS=1 # one thread: llama.cpp's CPU results do not depend on how work is split, but keep it simple
N=48
WORK="$(mktemp -d -t denollm-random-fx-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

for preset in "${PRESETS[@]}"; do
  deno run --allow-read --allow-write tools/make_random_model.ts \
    --preset "$preset" --out "$WORK/$preset" --seed "$SEED" --dtype "$DTYPE" >&2
  PRESET="$preset" MODEL_DIR="$WORK/$preset" SEED="$SEED" DTYPE="$DTYPE" THREADS="$THREADS" N="$N" \
    node --input-type=module - <<'JS'
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const { PRESET, MODEL_DIR, SEED, DTYPE, THREADS, N } = process.env;
const MODEL = join(MODEL_DIR, `${PRESET}.gguf`);
const OUT = `tests/fixtures/llamacpp/random_${PRESET}.json`;
const PROMPT = "Once upon a time, 42 cats said: \"héllo wörld\" 😀\nThe end.";

// Byte-level BPE edge cases: whitespace runs, digit grouping, contractions, CRLF, scripts, emoji
// (ZWJ, skin tones, flags), control-token text (tokenized as plain text: parse_special=false).
const TEXTS = [
  "", " ", "  ", "\n", "\n\n", "\r\n", "\t", "Hello world", " leading space", "trailing space ",
  "a    b     c", "mixed \t\n whitespace", "line one\nline two\n\nline four",
  "It's what we're doing; they'll see, I'd say, you've won, I'm HERE. IT'S", "don't DON'T",
  "12345", "1234567890", "3.14159", "-42 + 7 = -35", "1,000,000.00", "2024-01-15 12:30:45", "٣٤٥ ½ ² ³",
  "Hello, world! (yes?) [no]; {maybe}: a-b_c/d\\e @#$%^&*+=|~`",
  "def f(x):\n    return x * 2\n", "for (let i = 0; i < n; i++) { sum += a[i]; }",
  "café naïve résumé Ünïcödé", "Über große Straßen", "Привет, как дела?", "مرحبا بالعالم", "नमस्ते दुनिया",
  "你好，世界", "こんにちは世界", "안녕하세요",
  "😀", "emoji 😀 end", "👨‍👩‍👧‍👦", "👍🏽", "🇫🇷🇯🇵", "family: 👩‍❤️‍👨!", "✨🔥💯",
  "Über 9000… “quoted” — dash", "~12~ looks like a filler token",
  "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|><|start_header_id|>", "<|endoftext|>",
];

const shq = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
const ref = (args) =>
  JSON.parse(execFileSync(process.execPath, ["tools/llamacpp/reference.mjs", ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }));
const sha256 = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");

const genArgs = ["generate", "--model", MODEL, "--prompt", PROMPT, "--n", N, "--threads", THREADS];
const gen = ref(genArgs);
const textsFile = join(MODEL_DIR, "texts.json");
writeFileSync(textsFile, JSON.stringify(TEXTS));
const tok = ref(["tokenize", "--model", MODEL, "--texts-json", textsFile, "--threads", THREADS]);

const generator = `deno run --allow-read --allow-write tools/make_random_model.ts --preset ${PRESET} ` +
  `--out DIR --seed ${SEED} --dtype ${DTYPE}`;
const fixture = {
  description: `llama.cpp (node-llama-cpp, CPU) reference outputs for the random-weight ${PRESET} preset; ` +
    "regenerate, never hand-edit",
  regenerate: "tools/llamacpp/install.sh && tools/llamacpp/make_random_fixtures.sh",
  commands: [
    generator,
    `node tools/llamacpp/reference.mjs ${genArgs.map(shq).join(" ").replace(MODEL, `DIR/${PRESET}.gguf`)}`,
    `node tools/llamacpp/reference.mjs tokenize --model DIR/${PRESET}.gguf --texts-json <texts below as a JSON array> --threads ${THREADS}`,
  ],
  nodeLlamaCppVersion: gen.nodeLlamaCppVersion,
  // The files are not kept: the generator is deterministic, and these hashes say whether it still
  // produces the bytes llama.cpp saw.
  model: {
    preset: PRESET,
    seed: Number(SEED),
    dtype: DTYPE.toUpperCase(),
    ggufFile: `${PRESET}.gguf`,
    ggufSha256: sha256(MODEL),
    safetensorsSha256: sha256(join(MODEL_DIR, "model.safetensors")),
  },
  generate: {
    prompt: PROMPT, n: Number(N), threads: Number(THREADS), sampling: "greedy argmax, no penalties", eos: gen.eos,
    addBos: gen.addBos, bosId: gen.bos, eosId: gen.eosId,
    promptIds: gen.promptIds, generatedIds: gen.generatedIds, text: gen.text,
  },
  tokenize: {
    note: "model.tokenize(text, specialTokens=false): no BOS/EOS added, special-token text is literal",
    cases: TEXTS.map((text, i) => ({ text, ids: tok.ids[i] })),
  },
};

writeFileSync(OUT, JSON.stringify(fixture, null, 2) + "\n");
console.error(`wrote ${OUT}`);
JS
  # deno fmt --check runs over the repo, fixtures included; format the way it wants.
  deno fmt --quiet "tests/fixtures/llamacpp/random_$preset.json"
done
