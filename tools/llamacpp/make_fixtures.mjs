// Regenerates tests/fixtures/llamacpp/stories260K.json (greedy ids + tokenizer ids) from llama.cpp via reference.mjs.
// Usage: tools/llamacpp/install.sh && node tools/llamacpp/make_fixtures.mjs [--model PATH]
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const argModel = process.argv.indexOf("--model");
// Read the model in place from the shared folder; it must never be copied into the repo.
const MODEL = argModel > 0
  ? process.argv[argModel + 1]
  : "/work/shared/models/stories260K/stories260K-f32.gguf";
const OUT = join(ROOT, "tests/fixtures/llamacpp/stories260K.json");
const PROMPT = "Once upon a time", N = 64, THREADS = 2;

// Tokenizer edge cases: with a 512-token SPM vocab most non-ASCII text exercises byte fallback (<0xXX> tokens).
const TEXTS = [
  "",
  " ",
  "  ",
  "Once upon a time",
  "Hello world",
  " leading space",
  "trailing space ",
  "a    b     c",
  "Lily's mom said, \"Let's go!\"",
  "Hello, world! (yes?) [no]; {maybe}: a-b_c/d\\e @#$%^&*+=|~`",
  "12345",
  "3.14159",
  "-42 + 7 = -35",
  "1,000,000.00",
  "line one\nline two\n\nline four",
  "\n",
  "\ttab\tseparated\t",
  "mixed \t\n whitespace",
  "café naïve résumé Ünïcödé",
  "élève à la plage",
  "你好，世界",
  "こんにちは世界",
  "안녕하세요",
  "😀",
  "emoji 😀 end",
  "👨‍👩‍👧‍👦",
  "👍🏽",
  "🇫🇷🇯🇵",
  "family: 👩‍❤️‍👨!",
  "Über 9000… “quoted” — dash",
  "<s> and </s> and <unk> as plain text",
];

const shq = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);

const ref = (args) => {
  const cmd = ["tools/llamacpp/reference.mjs", ...args];
  // stderr passes through so llama.cpp warnings stay visible while regenerating.
  return JSON.parse(
    execFileSync(process.execPath, cmd, {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    }),
  );
};

const genArgs = [
  "generate",
  "--model",
  MODEL,
  "--prompt",
  PROMPT,
  "--n",
  String(N),
  "--threads",
  String(THREADS),
];
const gen = ref(genArgs);
const textsFile = join(mkdtempSync(join(tmpdir(), "llamacpp-fx-")), "texts.json");
writeFileSync(textsFile, JSON.stringify(TEXTS));
const tok = ref([
  "tokenize",
  "--model",
  MODEL,
  "--texts-json",
  textsFile,
  "--threads",
  String(THREADS),
]);

const fixture = {
  description:
    "llama.cpp (node-llama-cpp, CPU) reference outputs for stories260K; regenerate, never hand-edit",
  regenerate: "tools/llamacpp/install.sh && node tools/llamacpp/make_fixtures.mjs",
  commands: [
    `node tools/llamacpp/reference.mjs ${genArgs.map(shq).join(" ")}`,
    `node tools/llamacpp/reference.mjs tokenize --model ${MODEL} --texts-json <texts below as a JSON array> --threads ${THREADS}`,
  ],
  nodeLlamaCppVersion: gen.nodeLlamaCppVersion,
  model: { path: MODEL, sha256: createHash("sha256").update(readFileSync(MODEL)).digest("hex") },
  generate: {
    prompt: PROMPT,
    n: N,
    threads: THREADS,
    sampling: "greedy argmax, no penalties",
    eos: gen.eos,
    addBos: gen.addBos,
    bosId: gen.bos,
    eosId: gen.eosId,
    promptIds: gen.promptIds,
    generatedIds: gen.generatedIds,
    text: gen.text,
  },
  tokenize: {
    note:
      "model.tokenize(text, specialTokens=false): no BOS/EOS added, special-token text is literal, SPM adds a leading '▁' to non-empty text",
    cases: TEXTS.map((text, i) => ({ text, ids: tok.ids[i] })),
  },
};

// One id array per line keeps diffs readable.
const json = JSON.stringify(fixture, null, 2).replace(
  /\[\s+([-\d,\s]+?)\s+\]/g,
  (_, xs) => `[${xs.split(/,\s*/).join(", ")}]`,
)
  .replace(/\{\n\s+("text": .*),\n\s+("ids": \[.*\])\n\s+\}/g, "{ $1, $2 }");
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, json + "\n");
console.error(`wrote ${OUT}`);
