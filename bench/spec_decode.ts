// Benchmark (not a test): what speculative decoding buys. Batch-1 decode tok/s and acceptance
// with and without speculation (n-gram, draft model), on a repetitive workload (a prompt that
// holds a long text and starts repeating it) and a plain one; then 16 concurrent streams with and
// without; then the batch sizes where speculation stops paying (the turn-down threshold). All in
// one process through `LLM` (the serving engine stepped in-process), alternating configurations
// run by run (the order rotated each round), medians of --runs, the load average printed before
// and after.
//
//   deno task bench:spec [--model PATH] [--draft PATH] [--draft-quantization q4_0] [--threads 1]
//                        [--tokens 128] [--runs 3] [--k 4] [--methods ngram,draft]
//                        [--workloads repeat,plain] [--streams 16] [--stream-tokens N]
//                        [--sweep 1,2,4,8,16] [--sweep-method ngram|draft]
//
// --draft defaults to the target itself (a model drafting for itself: acceptance ~1, the cost of a
// draft as large as the target). --draft-quantization loads the draft (the target's own path when
// --draft is absent) a second time through that quantization: `--draft-quantization q4_0` is the
// quantized self-draft of `--speculative-model self --speculative-model-quantization q4_0`.
// Greedy throughout, EOS ignored, so every run makes --tokens. --streams 0 or --sweep "" skips
// those parts (a large model on a loaded machine).
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { ENGINE_DEFAULTS, type SpeculativeOptions } from "../src/engine/local_engine.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/models/stories260K/hf" },
    draft: { type: "string" },
    "draft-quantization": { type: "string" },
    methods: { type: "string", default: "ngram,draft" },
    workloads: { type: "string", default: "repeat,plain" },
    streams: { type: "string", default: "16" },
    "stream-tokens": { type: "string" },
    "sweep-method": { type: "string", default: "ngram" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "128" },
    runs: { type: "string", default: "3" },
    k: { type: "string", default: "4" },
    sweep: { type: "string", default: "1,2,4,8,16" },
  },
});
const numTokens = Number(v.tokens);
const numRuns = Number(v.runs);
const k = Number(v.k);
const loadavg = () => Deno.loadavg().map((x) => x.toFixed(2)).join(" ");

const backend = NativeBackend.open({ numThreads: Number(v.threads) });
const target = await loadModel(backend, v.model, { showProgress: false });
const draftQuant = v["draft-quantization"];
const draft: LoadedModel = v.draft === undefined && draftQuant === undefined
  ? target
  : await loadModel(backend, v.draft ?? v.model, {
    showProgress: false,
    ...(draftQuant === undefined ? {} : { quantization: draftQuant, quantizeTiedEmbeddings: true }),
  });
const draftName = `draft (${v.draft === undefined ? "itself" : "other"}${
  draftQuant === undefined ? "" : ` ${draftQuant}`
})`;
const methods = new Set(v.methods.split(",").filter((m) => m !== ""));
const workloadNames = v.workloads.split(",").filter((w) => w !== "");
const numStreams = Number(v.streams);
const streamTokens = Number(v["stream-tokens"] ?? numTokens);
const ctx = Math.min(target.config.maxPositionEmbeddings, 1024);

// The model's own greedy text after "Once upon a time": the repetitive prompt holds it whole,
// then starts it again, so a copying continuation is what the model itself would write.
const base = target.tokenizer.encode("Once upon a time");
const textLen = Math.min(160, Math.floor((ctx - numTokens - 2 * base.length) / 2) - 8);
const own = workloadNames.includes("repeat") || numStreams > 0 || v.sweep !== ""
  ? run([{ promptIds: base }], undefined, textLen).results[0].tokenIds
  : [];
const WORKLOADS: Record<string, number[]> = {
  repeat: [...base, ...own, ...base.slice(1), ...own.slice(0, 8)],
  plain: base,
};

const NGRAM: SpeculativeOptions = { model: "ngram", numSpeculativeTokens: k, disableBySize: 64 };
const DRAFT: SpeculativeOptions = { model: "draft", numSpeculativeTokens: k, disableBySize: 64 };

/** A configuration: plain (undefined), speculative, or another model decoding alone. */
type Config = SpeculativeOptions | { alone: LoadedModel } | undefined;

function run(
  prompts: { promptIds: number[] }[],
  config: Config,
  maxTokens = numTokens,
) {
  const spec = config === undefined || "alone" in config ? undefined : config;
  const model = config !== undefined && "alone" in config ? config.alone : target;
  const llm = LLM.over(backend, model, {
    blockSize: 16,
    maxModelLen: ctx,
    numKvBlocks: Math.ceil(ctx / 16) * prompts.length + 1,
    maxNumSeqs: Math.max(prompts.length, 1),
    maxNumBatchedTokens: 2048,
    enablePrefixCaching: false,
    ...(spec === undefined ? {} : { speculative: spec }),
  }, spec?.model === "draft" ? { draft } : {});
  try {
    const started = performance.now();
    const results = llm.generateBatch(
      prompts.map((p) => ({ ...p, maxTokens, sampling: GREEDY, ignoreEos: true })),
    );
    const wallMs = performance.now() - started;
    const s = llm.engine.stats().specDecode;
    return {
      results,
      wallMs,
      acceptance: s === undefined || s.numDraftTokens === 0
        ? undefined
        : s.numAcceptedTokens / s.numDraftTokens,
    };
  } finally {
    llm.release();
  }
}

/** Medians over alternating runs of each config (order rotated by round): tok/s, and acceptance. */
function measure(
  prompts: { promptIds: number[] }[],
  configs: Record<string, Config>,
  rate: (r: ReturnType<typeof run>) => number,
  maxTokens = numTokens,
): Record<string, { tokPerS: number; acceptance?: number }> {
  const samples: Record<string, { rates: number[]; acc: number[] }> = {};
  const entries = Object.entries(configs);
  for (let round = 0; round < numRuns; round++) {
    // Each round starts at another configuration: on this shared machine the run after an
    // expensive one is measurably slower, and a fixed order would pin that on one config.
    for (let i = 0; i < entries.length; i++) {
      const [name, spec] = entries[(i + round) % entries.length];
      const r = run(prompts, spec, maxTokens);
      (samples[name] ??= { rates: [], acc: [] }).rates.push(rate(r));
      if (r.acceptance !== undefined) samples[name].acc.push(r.acceptance);
    }
  }
  return Object.fromEntries(
    Object.entries(samples).map(([name, s]) => [
      name,
      { tokPerS: median(s.rates), ...(s.acc.length ? { acceptance: median(s.acc) } : {}) },
    ]),
  );
}

// Batch 1: decode tok/s from the first token to the last (the prefill is the same either way).
const batch1 = (r: ReturnType<typeof run>) => {
  const x = r.results[0];
  return (x.tokenIds.length - 1) / (x.decodeMs / 1000);
};
// Many streams: generated tokens over the whole wall time (all start together).
const aggregate = (r: ReturnType<typeof run>) =>
  r.results.reduce((n, x) => n + x.tokenIds.length, 0) / (r.wallMs / 1000);

const c = target.config;
console.log(
  `target ${v.model} (${c.numLayers} layers, hidden ${c.hiddenSize}, vocab ${c.vocabSize}), ` +
    `draft ${v.draft ?? "the target itself"}${
      draftQuant === undefined ? "" : ` quantized to ${draftQuant} on load`
    }, k ${k}, ${numTokens} tokens, ${numRuns} runs, ` +
    `threads ${v.threads}`,
);
console.log(`load average before: ${loadavg()}`);
console.log("\n| workload | streams | config | tok/s | vs plain | acceptance |");
console.log("| --- | --- | --- | --- | --- | --- |");
const row = (w: string, n: number, out: ReturnType<typeof measure>) => {
  for (const [name, m] of Object.entries(out)) {
    console.log(
      `| ${w} | ${n} | ${name} | ${m.tokPerS.toFixed(1)} | ` +
        `${(m.tokPerS / out.plain.tokPerS).toFixed(2)}x | ${m.acceptance?.toFixed(2) ?? "-"} |`,
    );
  }
};
/** plain, and each method asked for, with `turnDown` as the threshold. */
function configs(turnDown: number, suffix = "") {
  const out: Record<string, Config> = { plain: undefined };
  if (methods.has("ngram")) out[`ngram${suffix}`] = { ...NGRAM, disableBySize: turnDown };
  if (methods.has("draft")) out[`${draftName}${suffix}`] = { ...DRAFT, disableBySize: turnDown };
  return out;
}
// With a draft model, also the draft decoding alone: what one draft step costs next to a target
// step, which bounds what the draft can buy.
const batch1Configs = methods.has("draft") && draft !== target
  ? { ...configs(64), [`${draftName} alone, no speculation`]: { alone: draft } }
  : configs(64);
for (const w of workloadNames) {
  row(w, 1, measure([{ promptIds: WORKLOADS[w] }], batch1Configs, batch1));
}
// Many streams, each its own prompt (the repeat text shifted by a token so none share a prefix),
// speculation at the default turn-down and forced on.
const streams = Array.from({ length: Math.max(numStreams, ...sweep()) }, (_, i) => ({
  promptIds: [...WORKLOADS.repeat.slice(0, 1), 3 + i, ...WORKLOADS.repeat.slice(1)],
}));
if (numStreams > 0) {
  const turnDown = ENGINE_DEFAULTS.speculativeDisableBySize;
  row(
    "repeat",
    numStreams,
    measure(
      streams.slice(0, numStreams),
      { ...configs(turnDown, ` (turn-down ${turnDown})`), ...configs(64, " forced on") },
      aggregate,
      streamTokens,
    ),
  );
}

function sweep(): number[] {
  return v.sweep.split(",").filter((n) => n !== "").map(Number);
}
if (sweep().length > 0) {
  const method = v["sweep-method"];
  const spec = method === "ngram" ? NGRAM : DRAFT;
  const label = method === "ngram" ? "ngram" : draftName;
  console.log(
    `\nTurn-down sweep (${label} forced on vs off, repeat workload, aggregate tok/s, ` +
      `${streamTokens} tokens):`,
  );
  console.log(`| streams | plain tok/s | ${label} tok/s | spec / plain | acceptance |`);
  console.log("| --- | --- | --- | --- | --- |");
  for (const n of sweep()) {
    const out = measure(streams.slice(0, n), { plain: undefined, spec }, aggregate, streamTokens);
    console.log(
      `| ${n} | ${out.plain.tokPerS.toFixed(1)} | ${out.spec.tokPerS.toFixed(1)} | ` +
        `${(out.spec.tokPerS / out.plain.tokPerS).toFixed(2)}x | ${
          out.spec.acceptance?.toFixed(2) ?? "-"
        } |`,
    );
  }
}
console.log(`\nload average after: ${loadavg()}`);
if (draft !== target) draft.release();
target.release();
backend.close();
