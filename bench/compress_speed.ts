// deno task bench:compress-speed: the serving engine (LLM, one request path) on random-weight F16
// models of real shapes (smollm-135m, qwen2.5-0.5b), loaded dense F16, weight-only INT8, W8A8,
// 2:4 + INT8 and 2:4 + W8A8 (and any --configs), in one run: prefill of 512 tokens, batch-1
// decode, and 16 sequences decoding together. Medians of --runs; ratios against dense F16 and
// weight-only INT8 measured in the same run; the load average printed at start and end.
import { parseArgs } from "node:util";
import { LLM } from "../src/engine/llm.ts";
import type { EngineOptions } from "../src/engine/local_engine.ts";
import { applyOmpEnvDefaults } from "../src/engine/threads.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";
import { median } from "./common.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const WORK = `${ROOT}.bench/compress_speed`;

const CONFIGS: Record<string, Partial<EngineOptions>> = {
  "f16": {},
  "int8": { quantization: "int8" },
  "w8a8": { quantization: "w8a8" },
  "2:4+int8": { quantization: "int8", sparsity: "2:4-magnitude" },
  "2:4+w8a8": { quantization: "w8a8", sparsity: "2:4-magnitude" },
  "2:4+f16": { sparsity: "2:4-magnitude" },
  "w8a8-mixed": { quantization: "w8a8-mixed" },
};

const USAGE = `usage: deno task bench:compress-speed [--models smollm-135m,qwen2.5-0.5b]
  [--configs f16,int8,w8a8,2:4+int8,2:4+w8a8] [--threads 1] [--runs 3] [--decode-tokens 32]

Known configs: ${Object.keys(CONFIGS).join(", ")}. Prints prefill (512 tokens), batch-1 decode
and 16-sequence decode throughput per config, with ratios against f16 and int8 of the same run.`;

async function ensureModel(name: string): Promise<string> {
  const dir = `${WORK}/${name}-f16`;
  try {
    await Deno.stat(`${dir}/.complete`);
    return dir;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  console.error(`making random ${name} F16 in ${dir}`);
  await generateRandomModel(getPreset(name), {
    outDir: dir,
    seed: 1,
    dtype: "F16",
    formats: ["hf"],
  });
  await Deno.writeTextFile(`${dir}/.complete`, new Date().toISOString() + "\n");
  return dir;
}

interface Measured {
  prefillTokS: number;
  decodeTokS: number;
  batch16TokS: number;
}

const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0 };

async function measure(
  modelPath: string,
  options: Partial<EngineOptions>,
  threads: number,
  decodeTokens: number,
): Promise<Measured> {
  const llm = await LLM.load({
    modelPath,
    numThreads: threads,
    maxModelLen: 640,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 512,
    numKvBlocks: 16 * 8 + 48,
    enablePrefixCaching: false,
    ...options,
  });
  try {
    const config = JSON.parse(await Deno.readTextFile(`${modelPath}/config.json`));
    const vocab: number = config.vocab_size;
    const ids = (n: number, seed: number) =>
      Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % (vocab - 3)));
    const prefill = llm.generate({
      promptIds: ids(512, 1),
      maxTokens: 1,
      ignoreEos: true,
      sampling: GREEDY,
    });
    const decode = llm.generate({
      promptIds: ids(16, 2),
      maxTokens: decodeTokens + 1,
      ignoreEos: true,
      sampling: GREEDY,
    });
    const started = performance.now();
    const batch = llm.generateBatch(
      Array.from({ length: 16 }, (_, s) => ({
        promptIds: ids(16, 10 + s),
        maxTokens: decodeTokens,
        ignoreEos: true,
        sampling: GREEDY,
      })),
    );
    const batchMs = performance.now() - started;
    const generated = batch.reduce((n, r) => n + r.tokenIds.length, 0);
    return {
      prefillTokS: 512 / (prefill.prefillMs / 1000),
      decodeTokS: decodeTokens / (decode.decodeMs / 1000),
      batch16TokS: generated / (batchMs / 1000),
    };
  } finally {
    llm.release();
  }
}

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      models: { type: "string", default: "smollm-135m,qwen2.5-0.5b" },
      configs: { type: "string", default: "f16,int8,w8a8,2:4+int8,2:4+w8a8" },
      threads: { type: "string", default: "1" },
      runs: { type: "string", default: "3" },
      "decode-tokens": { type: "string", default: "32" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (v.help) {
    console.log(USAGE);
    return;
  }
  applyOmpEnvDefaults(Deno.env);
  const configs = v.configs.split(",");
  for (const c of configs) {
    if (CONFIGS[c] === undefined) {
      throw new RangeError(`Expected configs in ${Object.keys(CONFIGS)}, found ${c}`);
    }
  }
  for (const base of ["f16", "int8"]) if (!configs.includes(base)) configs.unshift(base);
  const threads = Number(v.threads);
  const runs = Number(v.runs);
  console.log(`load average at start: ${loadAverage()}; ${threads} thread(s), medians of ${runs}`);
  const lines: string[] = [];
  for (const name of v.models.split(",")) {
    const modelPath = await ensureModel(name);
    const samples = new Map<string, Measured[]>();
    // Rounds alternate the configs, so a change in the machine's load spreads over all of them.
    for (let r = 0; r < runs; r++) {
      for (const c of configs) {
        const m = await measure(modelPath, CONFIGS[c], threads, Number(v["decode-tokens"]));
        samples.set(c, [...(samples.get(c) ?? []), m]);
        console.error(`${name} ${c} run ${r + 1}: ${JSON.stringify(m)}`);
      }
    }
    const med = (c: string, key: keyof Measured) => median(samples.get(c)!.map((m) => m[key]));
    for (const c of configs) {
      const cell = (key: keyof Measured) =>
        `${med(c, key).toFixed(1)} (${(med(c, key) / med("f16", key)).toFixed(2)}x / ${
          (med(c, key) / med("int8", key)).toFixed(2)
        }x)`;
      lines.push(
        `| ${name} | ${c} | ${cell("prefillTokS")} | ${cell("decodeTokS")} | ${
          cell("batch16TokS")
        } |`,
      );
    }
  }
  console.log(
    "\n| model | config | prefill 512 tok/s (vs f16 / vs int8) | batch-1 decode tok/s | " +
      "16 seqs decode tok/s |",
  );
  console.log("| --- | --- | --- | --- | --- |");
  for (const line of lines) console.log(line);
  console.log(`\nload average at end: ${loadAverage()}`);
}

if (import.meta.main) await main();
