// Benchmark (not a test): prompt and decode tokens/s of denollm and llama.cpp on the same GGUF with
// the same thread count, alternating runs, medians and the ratio ours / llama.cpp.
//
//   bash tools/llamacpp/install.sh     # once: node-llama-cpp into .bench/ (bench-only)
//   deno task bench:llamacpp --model M.gguf [--threads 1] [--prompt-tokens 512] [--gen-tokens 128] [--runs 3]
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { benchPromptIds, median } from "./common.ts";

interface RunResult {
  promptTokPerS: number;
  decodeTokPerS: number;
}

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    threads: { type: "string", default: "1" },
    "prompt-tokens": { type: "string", default: "512" },
    "gen-tokens": { type: "string", default: "128" },
    runs: { type: "string", default: "3" },
    "skip-llamacpp": { type: "boolean" },
  },
});
if (!v.model?.endsWith(".gguf")) {
  console.error("usage: compare_llamacpp.ts --model M.gguf [--threads N] [--prompt-tokens N] ...");
  Deno.exit(2);
}
const threads = Number(v.threads);
const promptTokens = Number(v["prompt-tokens"]);
const genTokens = Number(v["gen-tokens"]);
const runs = Number(v.runs);

const backend = NativeBackend.open({ numThreads: threads });
const loaded = await loadModel(backend, v.model, { showProgress: false });
// The serving engine with one sequence; no prefix caching, so every run computes its prompt.
const llm = LLM.over(backend, loaded, {
  blockSize: 16,
  numKvBlocks: Math.ceil((promptTokens + genTokens + 1) / 16) + 1,
  maxNumSeqs: 1,
  maxNumBatchedTokens: Math.max(512, promptTokens),
  maxModelLen: promptTokens + genTokens + 1,
  enablePrefixCaching: false,
});
const tok = loaded.tokenizer;
const promptIds = benchPromptIds(
  promptTokens,
  12345, // the seed reference.mjs uses
  loaded.config.vocabSize,
  tok.bosId ?? 1,
  (id: number) => tok.isSpecial(id),
);

function oursOnce(): RunResult {
  const r = llm.generate({
    promptIds,
    maxTokens: genTokens + 1,
    sampling: GREEDY,
    ignoreEos: true,
  });
  // The first token comes from the prompt pass; the next genTokens are decode steps.
  return {
    promptTokPerS: promptTokens / (r.prefillMs / 1000),
    decodeTokPerS: (r.tokenIds.length - 1) / (r.decodeMs / 1000),
  };
}

async function llamaCppOnce(): Promise<RunResult & { peakRssMiB: number }> {
  const script = new URL("../tools/llamacpp/reference.mjs", import.meta.url).pathname;
  const out = await new Deno.Command("node", {
    args: [
      script,
      "bench",
      "--model",
      v.model!,
      "--threads",
      String(threads),
      "--prompt-tokens",
      String(promptTokens),
      "--gen-tokens",
      String(genTokens),
      "--runs",
      "1",
    ],
    stderr: "null",
  }).output();
  if (out.code !== 0) {
    throw new Error("llama.cpp bench failed; run tools/llamacpp/install.sh first");
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

oursOnce(); // warm-up: scratch allocation, page faults
const ours: RunResult[] = [];
const theirs: (RunResult & { peakRssMiB: number })[] = [];
for (let r = 0; r < runs; r++) {
  ours.push(oursOnce());
  if (!v["skip-llamacpp"]) theirs.push(await llamaCppOnce());
  console.error(`run ${r + 1}/${runs}`);
}
const row = (name: string, a: number, b: number | undefined) =>
  `| ${name} | ${a.toFixed(1)} | ${b === undefined ? "-" : b.toFixed(1)} | ${
    b === undefined ? "-" : (a / b).toFixed(2)
  } |`;
const op = median(ours.map((r) => r.promptTokPerS));
const od = median(ours.map((r) => r.decodeTokPerS));
const tp = theirs.length ? median(theirs.map((r) => r.promptTokPerS)) : undefined;
const td = theirs.length ? median(theirs.map((r) => r.decodeTokPerS)) : undefined;
console.log(
  `model ${v.model}, threads ${threads}, prompt ${promptTokens} tokens, decode ${genTokens} tokens, ` +
    `median of ${runs} alternating runs`,
);
console.log("| metric | denollm tok/s | llama.cpp tok/s | ratio |");
console.log("| --- | --- | --- | --- |");
console.log(row(`prompt processing (${promptTokens})`, op, tp));
console.log(row("decode, batch 1", od, td));
const rss = Deno.memoryUsage().rss / 2 ** 20;
console.log(
  `peak memory: denollm rss now ${rss.toFixed(0)} MiB${
    theirs.length
      ? `, llama.cpp peak rss ${median(theirs.map((r) => r.peakRssMiB)).toFixed(0)} MiB`
      : ""
  }`,
);
llm.release();
loaded.release();
backend.close();
