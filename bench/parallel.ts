// Benchmark (not a test): what tensor, sequence and pipeline parallelism cost on CPU ranks, each
// mode against one rank measured in the same run. Per mode: ms per engine step (median of the
// runs), the step split into compute and communication on every rank, bytes moved per token, the
// pipeline bubble, and each rank's reserved step-workspace bytes, with the residual / normed rows
// among them (what sequence parallelism divides).
// On 2 cores nothing speeds up: the numbers are the overhead the GPU model in
// docs/parallelism.md starts from.
//
//   deno task bench:parallel [--model PATH] [--runs 3] [--requests 16] [--tokens 32]
//     [--modes 1,tp2,tp2sp,pp2,tp2pp2]
import { parseArgs } from "node:util";
import { LLM } from "../src/engine/llm.ts";
import type { RankStats } from "../src/parallel/executor.ts";
import type { ParallelOptions } from "../src/parallel/plan.ts";
import { GREEDY } from "../src/sampling.ts";
import { openModelSource } from "../src/model/load.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: {
      type: "string",
      default: new URL("../../shared/models/stories260K/hf", import.meta.url).pathname,
    },
    runs: { type: "string", default: "3" },
    requests: { type: "string", default: "16" },
    tokens: { type: "string", default: "32" },
    "prompt-len": { type: "string", default: "16" },
    modes: { type: "string", default: "1,tp2,tp2sp,pp2,tp2pp2" },
    threads: { type: "string", default: "1" },
  },
});

const modelConfig = (await openModelSource(v.model!)).config;

const MODES: Record<string, ParallelOptions | undefined> = {
  "1": undefined,
  tp2: { tensorParallelSize: 2, pipelineParallelSize: 1 },
  tp2sp: { tensorParallelSize: 2, pipelineParallelSize: 1, sequenceParallel: true },
  pp2: { tensorParallelSize: 1, pipelineParallelSize: 2 },
  tp2pp2: { tensorParallelSize: 2, pipelineParallelSize: 2 },
};

interface Measured {
  msPerStep: number;
  numTokens: number;
  numSteps: number;
  stats: RankStats[] | null;
  /** Per rank: the step workspace's reserved bytes, and of those the `x` and `h` rows. */
  reserved: number[];
  residual: number[];
  hidden: number;
  maxNumBatchedTokens: number;
}

/** One run: every request together through the serving engine, timed per step. */
async function measure(parallel: ParallelOptions | undefined): Promise<Measured> {
  const maxNumBatchedTokens = 256;
  const llm = await LLM.load({
    modelPath: v.model!,
    numKvBlocks: 256,
    maxNumSeqs: 16,
    maxNumBatchedTokens,
    numThreads: Number(v.threads),
    parallel,
  });
  try {
    const numRequests = Number(v.requests);
    const promptLen = Number(v["prompt-len"]);
    for (let i = 0; i < numRequests; i++) {
      const prompt = Array.from({ length: promptLen }, (_, j) => 1 + ((i * 31 + j * 7) % 200));
      llm.engine.addRequest(`b${i}`, prompt, {
        maxTokens: Number(v.tokens),
        sampling: GREEDY,
        ignoreEos: true,
      });
    }
    // The first step (prefill) warms up; the counters then cover decode steps only.
    llm.engine.step();
    const before = llm.local.rankStats?.() ?? null;
    let numSteps = 0;
    let numTokens = 0;
    const started = performance.now();
    while (llm.engine.hasWork) {
      for (const out of llm.engine.step()) numTokens += out.newTokenIds.length;
      numSteps++;
    }
    const elapsed = performance.now() - started;
    const after = llm.local.rankStats?.() ?? null;
    const stats = after && before
      ? after.map((a, r) => ({
        numSteps: a.numSteps - before[r].numSteps,
        stepMs: a.stepMs - before[r].stepMs,
        collectiveMs: a.collectiveMs - before[r].collectiveMs,
        collectiveBytes: a.collectiveBytes - before[r].collectiveBytes,
        pipelineMs: a.pipelineMs - before[r].pipelineMs,
        pipelineBytes: a.pipelineBytes - before[r].pipelineBytes,
        reservedBytes: a.reservedBytes,
        residualBytes: a.residualBytes,
      }))
      : null;
    // One rank: its executor's workspace, whose x and h hold every token.
    const reserved = stats?.map((s) => s.reservedBytes) ?? [llm.local.reservedBytes];
    const residual = stats?.map((s) => s.residualBytes) ??
      [2 * maxNumBatchedTokens * modelConfig.hiddenSize * 4];
    return {
      msPerStep: elapsed / numSteps,
      numTokens,
      numSteps,
      stats,
      reserved,
      residual,
      hidden: modelConfig.hiddenSize,
      maxNumBatchedTokens,
    };
  } finally {
    llm.release();
  }
}

const modes = v.modes!.split(",");
const runs = Number(v.runs);
const results = new Map<string, Measured[]>(modes.map((m) => [m, []]));
// Modes alternate within each run, so machine load drifts across all of them alike.
for (let run = 0; run < runs; run++) {
  for (const mode of modes) {
    if (!(mode in MODES)) {
      throw new RangeError(`Unknown mode ${mode}; expected ${Object.keys(MODES)}`);
    }
    results.get(mode)!.push(await measure(MODES[mode]));
  }
}

const fmt = (x: number, d = 2) => x.toFixed(d);
console.log(
  `model ${v.model}, ${v.requests} concurrent requests, ${v.tokens} tokens each, ` +
    `${v.threads} thread(s) per rank, median of ${runs} runs; load average ${
      Deno.loadavg().map((x) => x.toFixed(2)).join(" ")
    }`,
);
console.log(
  "| mode | ms/step | vs 1 rank | per-rank compute ms/step | per-rank comm ms/step | comm bytes/token | bubble (measured / ideal) | workspace bytes/rank | x+h bytes/rank |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
const baseline = median((results.get("1") ?? results.get(modes[0])!).map((r) => r.msPerStep));
for (const mode of modes) {
  const rs = results.get(mode)!;
  const ms = median(rs.map((r) => r.msPerStep));
  const p = MODES[mode];
  const best = rs.find((r) => r.msPerStep === ms) ?? rs[0];
  let compute = "-";
  let comm = "-";
  let bytes = "-";
  let bubble = "-";
  if (best.stats) {
    const per = (f: (s: RankStats) => number) => best.stats!.map((s) => f(s) / s.numSteps);
    const commMs = per((s) => s.collectiveMs + s.pipelineMs);
    compute = per((s) => s.stepMs - s.collectiveMs - s.pipelineMs).map((x) => fmt(x)).join(" / ");
    comm = commMs.map((x) => fmt(x)).join(" / ");
    const totalBytes = best.stats.reduce((n, s) => n + s.collectiveBytes + s.pipelineBytes, 0);
    bytes = fmt(totalBytes / best.numTokens, 0);
    if ((p?.pipelineParallelSize ?? 1) > 1) {
      const stages = p!.pipelineParallelSize;
      const micro = p!.numMicroBatches ?? stages;
      // Measured: the share of each rank's step spent waiting on the pipeline, averaged.
      const waits = best.stats.map((s) => s.pipelineMs / s.stepMs);
      const measured = waits.reduce((a, b) => a + b, 0) / waits.length;
      bubble = `${fmt(measured)} / ${fmt((stages - 1) / (micro + stages - 1))}`;
    }
  }
  const reserved = best.reserved.join(" / ");
  const residual = best.residual.join(" / ");
  console.log(
    `| ${mode} | ${fmt(ms)} | ${
      fmt(ms / baseline)
    }x | ${compute} | ${comm} | ${bytes} | ${bubble} | ${reserved} | ${residual} |`,
  );
}
