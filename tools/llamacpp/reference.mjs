// llama.cpp reference peer (node-llama-cpp, CPU only): exact greedy token ids, tokenization and speed numbers as JSON.
//
// Usage (run tools/llamacpp/install.sh once first; JSON goes to stdout, logs to stderr):
//   node tools/llamacpp/reference.mjs generate --model M.gguf --prompt TEXT [--n 64] [--threads 2] [--stop-at-eos | --ignore-eos]
//   node tools/llamacpp/reference.mjs tokenize --model M.gguf (--text TEXT | --texts-json FILE) [--threads 2]
//   node tools/llamacpp/reference.mjs bench --model M.gguf [--threads 2] [--prompt-tokens 512] [--gen-tokens 128] [--runs 3]
//   node tools/llamacpp/reference.mjs bench-multi --model M.gguf [--threads 2] [--sequences 16] [--prompt-tokens 16]
//     [--gen-tokens 128] [--runs 3]
// Both benches start with an untimed warm-up run of --warmup-gen-tokens (default --gen-tokens) outputs.
//
// EOS handling in `generate` (pure argmax, no repetition penalty, no top-k/p, no bias unless stated):
//   default        exactly n tokens; an end-of-generation token is kept in generatedIds and fed back like any other.
//   --stop-at-eos  stop when the argmax is an end-of-generation token; that token is NOT in generatedIds (stopReason "eos").
//   --ignore-eos   llama-cli semantics: EOG tokens get a -inf bias so they are never picked; exactly n tokens.
// Prompt tokenization in `generate`: [BOS if the GGUF says add_bos] + tokenize(text, parseSpecial=false), which equals
// llama.cpp's llama_tokenize(text, add_special=true, parse_special=false) for SPM/BPE vocabs (llama-cli parses special
// tokens in the prompt text; we do not, so "<s>" in a prompt is literal text). `tokenize` never adds BOS/EOS.
// Bench caveat: with --threads equal to the core count, decode of tiny models collapses (~70 tok/s for stories260K on
// 2 cores vs ~700 with 1 thread) because ggml's spinning workers fight Node's main/libuv threads; node-llama-cpp exposes
// no poll/threadpool knob. Prompt processing is unaffected. Compare engines at the same --threads and say which.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BENCH_DIR = resolve(ROOT, ".bench/llamacpp");
const log = (...a) => console.error("[reference]", ...a);

function parseArgs(argv) {
  const [cmd, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i++) {
    const k = rest[i];
    if (!k.startsWith("--")) throw new Error(`unexpected argument ${k}`);
    const name = k.slice(2);
    // Flags without a value are booleans; everything else takes the next argv entry verbatim (prompts may start with "-").
    if (["stop-at-eos", "ignore-eos"].includes(name)) opts[name] = true;
    else if (i + 1 < rest.length) opts[name] = rest[++i];
    else throw new Error(`missing value for ${k}`);
  }
  return { cmd, opts };
}

async function loadLib() {
  // Resolve from the gitignored bench folder so the repo itself never depends on node_modules.
  const req = createRequire(resolve(BENCH_DIR, "package.json"));
  let entry;
  try {
    entry = req.resolve("node-llama-cpp");
  } catch {
    throw new Error(`node-llama-cpp not found in ${BENCH_DIR}; run tools/llamacpp/install.sh`);
  }
  const lib = await import(entry);
  const version = await lib.getModuleVersion();
  return { lib, version };
}

async function open(opts, { vocabOnly = false } = {}) {
  const threads = Number(opts.threads ?? 2);
  if (!opts.model) throw new Error("--model is required");
  const { lib, version } = await loadLib();
  // gpu:false + build:"never" + skipDownload: only the prebuilt CPU binary may be used; never compile or fetch.
  const llama = await lib.getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    usePrebuiltBinaries: true,
    progressLogs: false,
    maxThreads: threads,
    logLevel: lib.LlamaLogLevel.warn,
    logger: (level, message) => log(`llama.cpp ${level}: ${String(message).trimEnd()}`),
  });
  const t0 = performance.now();
  const model = await llama.loadModel({ modelPath: resolve(opts.model), gpuLayers: 0, vocabOnly });
  const loadMs = performance.now() - t0;
  return { lib, llama, model, threads, version, loadMs };
}

function newContext(model, threads, contextSize, batchSize, sequences = 1) {
  // min=ideal pins the thread count (threads is otherwise only a hint that may shrink under load).
  // contextSize is per sequence: node-llama-cpp allocates contextSize * sequences KV cells.
  return model.createContext({
    contextSize,
    batchSize,
    sequences,
    threads: { ideal: threads, min: threads },
  });
}

async function cmdGenerate(opts) {
  const n = Number(opts.n ?? 64);
  const { lib, llama, model, threads, version } = await open(opts);
  const bos = model.tokens.bos;
  const promptIds = [
    ...(model.tokens.shouldPrependBosToken && bos != null ? [bos] : []),
    ...model.tokenize(opts.prompt ?? "", false),
  ];
  // Room for prompt + n so node-llama-cpp never context-shifts (which would silently change the output).
  const ctx = await newContext(
    model,
    threads,
    promptIds.length + n + 1,
    Math.max(promptIds.length, 1),
  );
  const seq = ctx.getSequence();
  const eog = [
    ...new Set(
      [model.tokens.eos, model.tokens.eot].filter((t) => t != null && model.isEogToken(t)),
    ),
  ];
  const tokenBias = opts["ignore-eos"] && eog.length
    ? new lib.TokenBias(model.tokenizer).set(eog, "never")
    : undefined;
  const generatedIds = [];
  let stopReason = "length";
  if (n > 0) {
    // temperature 0 -> node-llama-cpp builds a chain of just llama_sampler_init_greedy (argmax); no penalties are set.
    for await (
      const tok of seq.evaluate(promptIds, { temperature: 0, yieldEogToken: true, tokenBias })
    ) {
      if (opts["stop-at-eos"] && model.isEogToken(tok)) {
        stopReason = "eos";
        break;
      }
      generatedIds.push(tok);
      if (generatedIds.length >= n) break;
    }
  }
  const text = model.detokenize(generatedIds, false, promptIds);
  const out = {
    model: opts.model,
    prompt: opts.prompt ?? "",
    promptIds,
    generatedIds,
    text,
    stopReason,
    eos: opts["stop-at-eos"] ? "stop" : opts["ignore-eos"] ? "masked" : "continue",
    bos,
    eosId: model.tokens.eos,
    addBos: model.tokens.shouldPrependBosToken,
    threads,
    nodeLlamaCppVersion: version,
  };
  await llama.dispose();
  return out;
}

async function cmdTokenize(opts) {
  const { llama, model, version } = await open(opts, { vocabOnly: true });
  // parseSpecial=false: text such as "<s>" is tokenized as literal characters; no BOS/EOS is added.
  const tok = (t) => model.tokenize(t, false);
  let out;
  if (opts["texts-json"]) {
    const texts = JSON.parse(readFileSync(opts["texts-json"], "utf8"));
    if (!Array.isArray(texts)) throw new Error("--texts-json must hold a JSON array of strings");
    out = { texts, ids: texts.map(tok), addsBos: false, nodeLlamaCppVersion: version };
  } else if (opts.text != null) {
    out = { text: opts.text, ids: tok(opts.text), addsBos: false, nodeLlamaCppVersion: version };
  } else throw new Error("--text or --texts-json is required");
  await llama.dispose();
  return out;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** One untimed warm-up run (warmupTg tokens), then `runs` timed ones. */
async function timedRuns(oneRun, runs, warmupTg) {
  log("warmup run (not counted)");
  await oneRun(warmupTg);
  const results = [];
  for (let r = 0; r < runs; r++) {
    results.push(await oneRun());
    log(`run ${r + 1}/${runs}`, JSON.stringify(results.at(-1)));
  }
  return results;
}

async function cmdBench(opts) {
  const pp = Number(opts["prompt-tokens"] ?? 512),
    tg = Number(opts["gen-tokens"] ?? 128),
    runs = Number(opts.runs ?? 3),
    warmupTg = Number(opts["warmup-gen-tokens"] ?? tg);
  const { lib, llama, model, threads, version, loadMs } = await open(opts);
  // Whole prompt in one batch (like llama-bench's n_batch >= pp); context holds prompt + generated with no shifting.
  const ctx = await newContext(model, threads, pp + tg + 2, pp);
  const seq = ctx.getSequence();
  // Deterministic pseudo-random non-special prompt ids (llama-bench also uses random ids); speed does not depend on content.
  const vocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
  let s = 12345;
  const rnd = () => (s = (s * 1103515245 + 12345) >>> 0) % vocab;
  const promptIds = [model.tokens.bos ?? 1];
  while (promptIds.length < pp) {
    const t = rnd();
    if (!model.isSpecialToken(t)) promptIds.push(t);
  }
  // Mask EOG so decode is never cut short; the chain is then tokenBias + greedy (negligible cost vs a forward pass).
  const eog = [model.tokens.eos, model.tokens.eot].filter((t) => t != null);
  const tokenBias = new lib.TokenBias(model.tokenizer).set(eog, "never");
  const oneRun = async (n = tg) => {
    await seq.clearHistory();
    let t0 = performance.now(), tPrompt = 0, got = 0;
    // First yield = whole prompt decoded + first token sampled; each later yield = one single-token decode.
    for await (
      const _ of seq.evaluate(promptIds, { temperature: 0, yieldEogToken: true, tokenBias })
    ) {
      const now = performance.now();
      if (got === 0) {
        tPrompt = now - t0;
        t0 = now;
      }
      if (got++ >= n) break;
    }
    const tDecode = performance.now() - t0;
    return { promptTokPerS: pp / (tPrompt / 1000), decodeTokPerS: n / (tDecode / 1000) };
  };
  const results = await timedRuns(oneRun, runs, warmupTg);
  const out = {
    model: opts.model,
    threads,
    promptTokens: pp,
    genTokens: tg,
    runs,
    contextSize: ctx.contextSize,
    batchSize: ctx.batchSize,
    promptTokPerS: median(results.map((x) => x.promptTokPerS)),
    decodeTokPerS: median(results.map((x) => x.decodeTokPerS)),
    perRun: results,
    modelLoadMs: loadMs,
    // maxRSS is in KiB on Linux; it is the whole Node process (JS runtime ~40-60 MiB included).
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    nodeLlamaCppVersion: version,
    backend: "cpu (prebuilt)",
    cpus: availableParallelism(),
  };
  await llama.dispose();
  return out;
}

/**
 * The same pseudo-random non-special prompt the denollm benches build: [BOS] + LCG ids from `seed`.
 * llama-bench also uses random ids; speed does not depend on content.
 */
function benchPromptIds(model, numTokens, seed) {
  const vocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
  let s = seed >>> 0;
  const ids = [model.tokens.bos ?? 1];
  while (ids.length < numTokens) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const t = s % vocab;
    if (!model.isSpecialToken(t)) ids.push(t);
  }
  return ids;
}

// Aggregate decode throughput with several sequences in one context: every sequence evaluates its
// own short prompt concurrently and node-llama-cpp's batch dispatcher packs all pending tokens of
// all sequences into one llama_decode per cycle (16 sequences decoding = 16-token batches).
// Timed window: from the moment the last sequence got its first token (every prompt is done) to
// the moment the last sequence got its last one; only tokens sampled inside the window count.
async function cmdBenchMulti(opts) {
  const numSeqs = Number(opts.sequences ?? 16),
    pp = Number(opts["prompt-tokens"] ?? 16),
    tg = Number(opts["gen-tokens"] ?? 128),
    runs = Number(opts.runs ?? 3),
    warmupTg = Number(opts["warmup-gen-tokens"] ?? tg);
  const { lib, llama, model, threads, version, loadMs } = await open(opts);
  const ctx = await newContext(model, threads, pp + tg + 2, Math.max(512, numSeqs), numSeqs);
  const seqs = Array.from({ length: numSeqs }, () => ctx.getSequence());
  const prompts = seqs.map((_, i) => benchPromptIds(model, pp, 12345 + 7919 * i));
  const eog = [model.tokens.eos, model.tokens.eot].filter((t) => t != null);
  const tokenBias = new lib.TokenBias(model.tokenizer).set(eog, "never");
  const oneRun = async (n = tg) => {
    await Promise.all(seqs.map((q) => q.clearHistory()));
    const stamps = seqs.map(() => []);
    const t0 = performance.now();
    await Promise.all(seqs.map(async (seq, i) => {
      let got = 0;
      // 1 + tg tokens: the first comes from the prompt pass, tg more are decode steps.
      for await (
        const _ of seq.evaluate(prompts[i], { temperature: 0, yieldEogToken: true, tokenBias })
      ) {
        stamps[i].push(performance.now());
        if (++got > n) break;
      }
    }));
    const windowStart = Math.max(...stamps.map((s) => s[0]));
    const windowEnd = Math.max(...stamps.map((s) => s.at(-1)));
    const inWindow = stamps.reduce((n, s) => n + s.filter((t) => t > windowStart).length, 0);
    return {
      decodeTokPerS: inWindow / ((windowEnd - windowStart) / 1000),
      totalTokPerS: (numSeqs * n) / ((windowEnd - t0) / 1000),
      prefillMs: windowStart - t0,
    };
  };
  const results = await timedRuns(oneRun, runs, warmupTg);
  const out = {
    model: opts.model,
    threads,
    sequences: numSeqs,
    promptTokens: pp,
    genTokens: tg,
    runs,
    contextSize: ctx.contextSize,
    batchSize: ctx.batchSize,
    decodeTokPerS: median(results.map((x) => x.decodeTokPerS)),
    perRun: results,
    modelLoadMs: loadMs,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    nodeLlamaCppVersion: version,
    backend: "cpu (prebuilt)",
    cpus: availableParallelism(),
  };
  await llama.dispose();
  return out;
}

const { cmd, opts } = parseArgs(process.argv.slice(2));
const cmds = {
  generate: cmdGenerate,
  tokenize: cmdTokenize,
  bench: cmdBench,
  "bench-multi": cmdBenchMulti,
};
if (!cmds[cmd]) {
  console.error(
    "usage: reference.mjs generate|tokenize|bench|bench-multi --model X.gguf ... (see header)",
  );
  process.exit(2);
}
try {
  process.stdout.write(JSON.stringify(await cmds[cmd](opts)) + "\n");
} catch (e) {
  log(e?.stack ?? String(e));
  process.exit(1);
}
