// Benchmark (not a test): denollm side by side with llama.cpp on random-weight models of real
// shapes, the same GGUF file and thread count for both, alternating runs, each engine in its own
// process so peak RSS compares like with like. Prints a Markdown table.
//
//   deno task bench:peer [--models stories15m,smollm-135m,qwen2.5-0.5b] [--dtypes f32,f16]
//     [--threads 1] [--runs 3] [--prompt-tokens 512] [--gen-tokens 128] [--sequences 16]
//     [--multi-prompt-tokens 16] [--warmup-gen-tokens 8] [--rows load,pp,tg,multi]
//     [--models-dir .bench/models] [--ours-format gguf|hf] [--skip-llamacpp] [--quants Q4_0,Q8_0,Q4_K_M]
//     [--no-mmap]
//
// --no-mmap: ours copies the weights into memory instead of mapping them (issue 17's before).
// Quick run (a few minutes): --models stories15m,smollm-135m --dtypes f16 --runs 3
// Quantized (issue 10): --models smollm-135m,qwen2.5-0.5b --dtypes f16 --quants Q4_0,Q8_0,Q4_K_M:
// each --dtypes GGUF is quantized by llama.cpp's own quantizer (tools/llamacpp/quantize.sh) and
// both engines run that same file (--quants none: the --dtypes files themselves).
//
// Rows, per model file:
//   load   peak RSS of a process that only loads the model (ours), against the file's size.
//   pp     prompt processing tok/s: one prompt of --prompt-tokens in one pass (first token out).
//   tg     batch-1 decode tok/s: --gen-tokens greedy tokens after that prompt, EOS masked.
//   multi  aggregate decode tok/s with --sequences concurrent sequences (ours: LLMEngine with that
//          many requests; llama.cpp: that many sequences in one context), each with its own
//          --multi-prompt-tokens prompt and --gen-tokens outputs. Timed from the moment the last
//          sequence has its first token to the last token, counting tokens sampled in that window.
// Each run is a fresh process: one untimed warm-up pass (the same prompt, --warmup-gen-tokens
// outputs, default 8), then one timed pass. Medians over --runs.
// The "multi / llama.cpp tg" column is the goal metric: 16-sequence throughput against llama.cpp's
// batch-1 decode (goal >= 3x); "ours / llama.cpp" on the tg row is the batch-1 goal (>= 1.0x).
// The tg row's "% bandwidth" is weight bytes per token (every matrix once; the LM head is the
// embedding when tied) times tok/s, against a read loop over 512 MiB timed in the same run.
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { readGguf } from "../src/formats/gguf.ts";
import { loadModel } from "../src/model/load.ts";
import { quantizeWithLlamaCpp, type QuantPreset } from "../tools/llamacpp/quant_fixtures.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";
import { GREEDY } from "../src/sampling.ts";
import { benchPromptIds, median } from "./common.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BLOCK_SIZE = 16;

/** One timed pass of one engine; absent fields were not measured by that kind of run. */
interface Measurement {
  promptTokPerS?: number;
  decodeTokPerS?: number;
  multiTokPerS?: number;
  peakRssMiB: number;
}

type RowKind = "load" | "pp" | "tg" | "multi";

/** Peak resident set of this process (VmHWM), the number node reports as maxRSS. */
function peakRssMiB(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kib = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return kib / 1024;
}

// --- child: one engine process, prints one JSON Measurement

interface ChildArgs {
  kind: "load" | "single" | "multi";
  model: string;
  threads: number;
  promptTokens: number;
  genTokens: number;
  /** Outputs of the untimed warm-up pass (it touches every weight page and scratch buffer). */
  warmupGenTokens: number;
  sequences: number;
  /** False: copy weights instead of mapping them (--no-mmap). */
  mmap: boolean;
}

async function runChild(a: ChildArgs): Promise<Measurement> {
  const backend = NativeBackend.open({ numThreads: a.threads });
  const loaded = await loadModel(backend, a.model, { showProgress: false, mmap: a.mmap });
  if (a.kind === "load") {
    const peak = peakRssMiB();
    loaded.release();
    backend.close();
    return { peakRssMiB: peak };
  }
  const tok = loaded.tokenizer;
  const prompt = (seed: number) =>
    benchPromptIds(
      a.promptTokens,
      seed,
      loaded.config.vocabSize,
      tok.bosId ?? 1,
      (id) => tok.isSpecial(id),
    );
  const blocksPerSeq = Math.ceil((a.promptTokens + a.genTokens + 2) / BLOCK_SIZE);
  const numSeqs = a.kind === "multi" ? a.sequences : 1;
  // The serving engine, stepped in this process. Distinct prompts share no blocks, and the warm-up
  // run must not hand the timed run a cached prompt: prefix caching stays off.
  const llm = LLM.over(backend, loaded, {
    blockSize: BLOCK_SIZE,
    numKvBlocks: blocksPerSeq * numSeqs + 1,
    maxNumBatchedTokens: Math.max(512, numSeqs * a.promptTokens),
    maxNumSeqs: numSeqs,
    maxModelLen: a.promptTokens + a.genTokens + 2,
    enablePrefixCaching: false,
  });
  try {
    if (a.kind === "single") {
      const promptIds = prompt(12345);
      const once = (genTokens: number) => {
        const r = llm.generate({
          promptIds,
          maxTokens: genTokens + 1,
          sampling: GREEDY,
          ignoreEos: true,
        });
        // The first token comes from the prompt pass; the next genTokens are decode steps.
        return {
          promptTokPerS: a.promptTokens / (r.prefillMs / 1000),
          decodeTokPerS: (r.tokenIds.length - 1) / (r.decodeMs / 1000),
        };
      };
      once(a.warmupGenTokens);
      return { ...once(a.genTokens), peakRssMiB: peakRssMiB() };
    }
    const engine = llm.engine;
    let run = 0;
    const once = (genTokens: number) => {
      const stamps: number[][] = [];
      for (let i = 0; i < a.sequences; i++) {
        stamps.push([]);
        engine.addRequest(`r${run}-${i}`, prompt(12345 + 7919 * i), {
          maxTokens: genTokens + 1,
          sampling: GREEDY,
          ignoreEos: true,
        });
      }
      const index = (id: string) => Number(id.slice(id.indexOf("-") + 1));
      while (engine.hasWork) {
        const outputs = engine.step();
        const now = performance.now();
        for (const out of outputs) {
          for (const _ of out.newTokenIds) stamps[index(out.requestId)].push(now);
        }
      }
      run++;
      const windowStart = Math.max(...stamps.map((s) => s[0]));
      const windowEnd = Math.max(...stamps.map((s) => s[s.length - 1]));
      const inWindow = stamps.reduce((n, s) => n + s.filter((t) => t > windowStart).length, 0);
      return inWindow / ((windowEnd - windowStart) / 1000);
    };
    once(a.warmupGenTokens);
    return { multiTokPerS: once(a.genTokens), peakRssMiB: peakRssMiB() };
  } finally {
    llm.release();
    loaded.release();
    backend.close();
  }
}

// --- parent: models, alternating runs, the table

async function runProcess(cmd: string, args: string[]): Promise<Measurement> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  if (out.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${out.code}):\n${stderr.slice(-2000)}`);
  }
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

function oursProcess(a: ChildArgs): Promise<Measurement> {
  return runProcess(Deno.execPath(), [
    "run",
    // Deno 2.9 lets only --allow-all read /proc/self/status (peak RSS); the parent already holds
    // --allow-run, which is as strong.
    "--allow-all",
    new URL(import.meta.url).pathname,
    "--child",
    a.kind,
    "--model",
    a.model,
    "--threads",
    String(a.threads),
    "--prompt-tokens",
    String(a.promptTokens),
    "--gen-tokens",
    String(a.genTokens),
    "--sequences",
    String(a.sequences),
    "--warmup-gen-tokens",
    String(a.warmupGenTokens),
    ...(a.mmap ? [] : ["--no-mmap"]),
  ]);
}

async function llamaCppProcess(a: ChildArgs): Promise<Measurement> {
  const args = [
    `${ROOT}tools/llamacpp/reference.mjs`,
    a.kind === "single" ? "bench" : "bench-multi",
    "--model",
    a.model,
    "--threads",
    String(a.threads),
    "--prompt-tokens",
    String(a.promptTokens),
    "--gen-tokens",
    String(a.genTokens),
    "--runs",
    "1",
    "--warmup-gen-tokens",
    String(a.warmupGenTokens),
  ];
  if (a.kind === "multi") args.push("--sequences", String(a.sequences));
  const r = await runProcess("node", args) as Measurement & { decodeTokPerS: number };
  return a.kind === "single" ? r : { multiTokPerS: r.decodeTokPerS, peakRssMiB: r.peakRssMiB };
}

/** The HF dir and GGUF of one preset/dtype, made once (a stamp file marks a complete set). */
async function ensureModel(modelsDir: string, preset: string, dtype: string) {
  const outDir = `${modelsDir}/${preset}-${dtype}`;
  const stamp = `${outDir}/.complete`;
  const made = { hfDir: outDir, ggufPath: `${outDir}/${preset}.gguf` };
  try {
    await Deno.stat(stamp);
    return made;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  console.error(`making random ${preset} ${dtype} in ${outDir}`);
  await generateRandomModel(getPreset(preset), {
    outDir,
    seed: 1,
    dtype: dtype.toUpperCase() as "F32" | "F16",
    formats: ["hf", "gguf"],
  });
  await Deno.writeTextFile(stamp, new Date().toISOString() + "\n");
  return made;
}

/** `gguf` quantized by llama.cpp's quantizer as `quant`, made once next to it. */
async function ensureQuantized(gguf: string, quant: QuantPreset): Promise<string> {
  const out = gguf.replace(/\.gguf$/, `-${quant}.gguf`);
  const stamp = `${out}.complete`;
  try {
    await Deno.stat(stamp);
    return out;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  console.error(`quantizing ${gguf} to ${quant} with llama.cpp's quantizer`);
  await quantizeWithLlamaCpp(gguf, out, quant);
  await Deno.writeTextFile(stamp, new Date().toISOString() + "\n");
  return out;
}

/**
 * Bytes of weights one decode step reads: every 2-D tensor once (the embedding only as a tied LM
 * head; an untied embedding reads one row).
 */
async function weightBytesPerToken(gguf: string): Promise<number> {
  const g = await readGguf(gguf);
  let bytes = 0;
  for (const info of g.tensors.values()) {
    if (info.shape.length !== 2) continue;
    if (info.name === "token_embd.weight" && g.tensors.has("output.weight")) continue;
    bytes += info.byteLength;
  }
  return bytes;
}

/**
 * Read bandwidth of one thread in GB/s: best of 5 sums over a 512 MiB buffer (far beyond any
 * cache), four accumulators so the loop is bound by loads, not by the add chain.
 */
function readBandwidthGBs(): number {
  const words = new Float64Array(64 * 2 ** 20);
  for (let i = 0; i < words.length; i += 512) words[i] = i; // touch every page
  let best = 0;
  let sink = 0;
  for (let run = 0; run < 5; run++) {
    const t0 = performance.now();
    let a = 0, b = 0, c = 0, d = 0;
    for (let i = 0; i < words.length; i += 4) {
      a += words[i];
      b += words[i + 1];
      c += words[i + 2];
      d += words[i + 3];
    }
    const seconds = (performance.now() - t0) / 1000;
    sink += a + b + c + d;
    best = Math.max(best, words.byteLength / seconds / 1e9);
  }
  if (Number.isNaN(sink)) throw new Error("unreachable: keeps the sums alive");
  return best;
}

async function ensureLlamaCpp(): Promise<void> {
  const { code } = await new Deno.Command("bash", {
    args: [`${ROOT}tools/llamacpp/install.sh`],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) throw new Error("tools/llamacpp/install.sh failed");
}

function loadAverage(): string {
  // Deno 2.9 reads /proc/loadavg only with --allow-all; Deno.loadavg() needs --allow-sys=loadavg.
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

const fmt = (x: number | undefined, digits = 1) => x === undefined ? "-" : x.toFixed(digits);
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined ? "-" : `${(a / b).toFixed(2)}x`;

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      child: { type: "string" },
      model: { type: "string" },
      models: { type: "string", default: "stories15m,smollm-135m,qwen2.5-0.5b" },
      dtypes: { type: "string", default: "f32,f16" },
      threads: { type: "string", default: "1" },
      runs: { type: "string", default: "3" },
      "prompt-tokens": { type: "string", default: "512" },
      "gen-tokens": { type: "string", default: "128" },
      sequences: { type: "string", default: "16" },
      "warmup-gen-tokens": { type: "string", default: "8" },
      "multi-prompt-tokens": { type: "string", default: "16" },
      rows: { type: "string", default: "load,pp,tg,multi" },
      "models-dir": { type: "string", default: `${ROOT}.bench/models` },
      "ours-format": { type: "string", default: "gguf" },
      "skip-llamacpp": { type: "boolean", default: false },
      quants: { type: "string", default: "none" },
      "no-mmap": { type: "boolean", default: false },
    },
  });
  const int = (name: keyof typeof v) => {
    const n = Number(v[name]);
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new RangeError(`Expected --${name} to be a positive integer, found ${v[name]}`);
    }
    return n;
  };
  if (v.child !== undefined) {
    if (v.child !== "load" && v.child !== "single" && v.child !== "multi") {
      throw new TypeError(`Expected --child load, single or multi, found ${v.child}`);
    }
    const m = await runChild({
      kind: v.child,
      model: v.model!,
      threads: int("threads"),
      promptTokens: int("prompt-tokens"),
      genTokens: int("gen-tokens"),
      warmupGenTokens: int("warmup-gen-tokens"),
      sequences: int("sequences"),
      mmap: !v["no-mmap"],
    });
    console.log(JSON.stringify(m));
    return;
  }

  const threads = int("threads");
  const runs = int("runs");
  const rows = new Set(v.rows!.split(",") as RowKind[]);
  const withLlama = !v["skip-llamacpp"];
  const quants = v.quants === "none" ? [] : v.quants!.split(",") as QuantPreset[];
  if (withLlama || quants.length > 0) await ensureLlamaCpp();
  if (quants.length > 0 && v["ours-format"] === "hf") {
    throw new RangeError(
      "Expected --ours-format gguf with --quants: HF directories are not quantized",
    );
  }
  const single = rows.has("pp") || rows.has("tg");
  console.error(`load average before: ${loadAverage()}`);
  const bandwidth = readBandwidthGBs();
  console.error(`read bandwidth (1 thread, 512 MiB): ${bandwidth.toFixed(1)} GB/s`);
  const table: string[] = [];
  const variants: { preset: string; dtype: string; quant?: QuantPreset }[] = [];
  for (const preset of v.models!.split(",")) {
    for (const dtype of v.dtypes!.split(",")) {
      if (quants.length === 0) variants.push({ preset, dtype });
      for (const quant of quants) variants.push({ preset, dtype, quant });
    }
  }
  for (const { preset, dtype, quant } of variants) {
    const made = await ensureModel(v["models-dir"]!, preset, dtype);
    const files = quant === undefined
      ? made
      : { ...made, ggufPath: await ensureQuantized(made.ggufPath, quant) };
    const oursPath = v["ours-format"] === "hf" ? files.hfDir : files.ggufPath;
    const fileMiB = (await Deno.stat(files.ggufPath)).size / 2 ** 20;
    const bytesPerToken = await weightBytesPerToken(files.ggufPath);
    // A prompt must fit the model's context with the outputs (stories15m has only 256 positions).
    const maxLen = getPreset(preset).config.max_position_embeddings;
    const singleArgs: ChildArgs = {
      kind: "single",
      model: oursPath,
      threads,
      promptTokens: Math.min(int("prompt-tokens"), maxLen - int("gen-tokens") - 1),
      genTokens: int("gen-tokens"),
      warmupGenTokens: int("warmup-gen-tokens"),
      sequences: 1,
      mmap: !v["no-mmap"],
    };
    const multiArgs: ChildArgs = {
      ...singleArgs,
      kind: "multi",
      promptTokens: int("multi-prompt-tokens"),
      sequences: int("sequences"),
    };
    const oursLoad: Measurement[] = [];
    const ours: Measurement[] = [];
    const theirs: Measurement[] = [];
    const oursMulti: Measurement[] = [];
    const theirsMulti: Measurement[] = [];
    // Alternate engines run by run so slow drifts in machine load hit both alike.
    for (let r = 0; r < runs; r++) {
      if (rows.has("load")) oursLoad.push(await oursProcess({ ...singleArgs, kind: "load" }));
      if (single) {
        ours.push(await oursProcess(singleArgs));
        if (withLlama) {
          theirs.push(await llamaCppProcess({ ...singleArgs, model: files.ggufPath }));
        }
      }
      if (rows.has("multi")) {
        oursMulti.push(await oursProcess(multiArgs));
        if (withLlama) {
          theirsMulti.push(await llamaCppProcess({ ...multiArgs, model: files.ggufPath }));
        }
      }
      console.error(`${preset} ${dtype}: run ${r + 1}/${runs}, load ${loadAverage()}`);
    }
    const med = (ms: Measurement[], key: keyof Measurement) =>
      ms.length ? median(ms.map((m) => m[key]!)) : undefined;
    const name = `${preset} ${quant ?? dtype.toUpperCase()} (${fileMiB.toFixed(0)} MiB file)`;
    const percentOfBandwidth = (ms: Measurement[]) => {
      const tokPerS = med(ms, "decodeTokPerS");
      return tokPerS === undefined
        ? "-"
        : `${(100 * bytesPerToken * tokPerS / 1e9 / bandwidth).toFixed(0)}%`;
    };
    const line = (
      what: string,
      a: Measurement[],
      b: Measurement[],
      key: keyof Measurement,
      extra = "-",
    ) => {
      const x = med(a, key);
      const y = med(b, key);
      table.push(
        `| ${name} | ${what} | ${fmt(x)} | ${fmt(y)} | ${ratio(x, y)} | ${extra} | ${
          fmt(med(a, "peakRssMiB"), 0)
        } | ${fmt(med(b, "peakRssMiB"), 0)} |`,
      );
    };
    if (rows.has("load")) {
      const rss = med(oursLoad, "peakRssMiB");
      table.push(
        `| ${name} | load only: peak RSS / file size ${
          rss === undefined ? "-" : (rss / fileMiB).toFixed(2)
        } | - | - | - | - | ${fmt(rss, 0)} | - |`,
      );
    }
    if (rows.has("pp")) line(`pp ${singleArgs.promptTokens}`, ours, theirs, "promptTokPerS");
    if (rows.has("tg")) {
      line(
        `tg ${singleArgs.genTokens}, batch 1 (% bandwidth: ours ${percentOfBandwidth(ours)}, ` +
          `llama.cpp ${percentOfBandwidth(theirs)})`,
        ours,
        theirs,
        "decodeTokPerS",
      );
    }
    if (rows.has("multi")) {
      line(
        `tg ${multiArgs.genTokens} x ${multiArgs.sequences} seqs`,
        oursMulti,
        theirsMulti,
        "multiTokPerS",
        ratio(med(oursMulti, "multiTokPerS"), med(theirs, "decodeTokPerS")),
      );
    }
  }
  console.log(
    `denollm vs llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU), ${threads} thread(s), ` +
      `median of ${runs} alternating runs, random-weight models, ours loads the ${
        v["ours-format"]
      } ` +
      `file; ${navigator.hardwareConcurrency} CPUs, read bandwidth ${bandwidth.toFixed(1)} GB/s ` +
      `(1 thread), load average after: ${loadAverage()}`,
  );
  console.log("");
  console.log(
    "| model | row | denollm tok/s | llama.cpp tok/s | ours / llama.cpp | multi / llama.cpp tg | " +
      "denollm peak RSS MiB | llama.cpp peak RSS MiB |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const row of table) console.log(row);
}

if (import.meta.main) await main();
