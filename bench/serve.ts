// Load generator for any OpenAI-compatible server (benchmark, not a test): Poisson/gamma arrivals
// at a rate or a fixed concurrency, synthetic or JSONL workloads, streamed requests timed token by
// token, vLLM's serving metrics; sweeps write JSON, a Markdown table and an SVG chart.
//
//   deno task bench:serve --url http://127.0.0.1:8000 [--model NAME] [--api completions|chat]
//     [--num-prompts 64] [--request-rate inf] [--burstiness 1] [--max-concurrency N]
//     [--rates 1,2,4 | --concurrencies 1,4,16] [--input-len 128] [--output-len 64]
//     [--dataset FILE.jsonl] [--prefix-len N --num-prefixes K] [--prompt-format text|ids]
//     [--id-range 1000:10000] [--ignore-eos] [--seed 0] [--goodput ttft:500,tpot:50]
//     [--percentiles 50,90,99] [--warmup 1] [--repeats 1] [--label NAME] [--out DIR] [--title TEXT]
//   deno task bench:serve --merge a.json,b.json --out DIR [--title TEXT] [--label NAME]
//     [--note TEXT]...   # one chart and table of several saved sweeps; notes go in the caption
//
// Lengths: "128", "uniform:64:256" or "lognormal:MEDIAN:SIGMA[:MIN:MAX]". With --prefix-len, every
// prompt starts with one of --num-prefixes shared prefixes and --input-len sets the rest.
// Every load level of every repeat (and the warm-up) draws its own prompts and lengths from
// --seed and its index, so a prefix-caching server never answers a level from KV an earlier level
// left; the shared prefixes are the same throughout (shared on purpose). A --dataset is sent as is
// at every level.
// --ignore-eos sends vLLM's ignore_eos so every request produces exactly max_tokens.
import { parseArgs } from "node:util";
import { type Api, type ClientOptions, firstModel, sendRequest } from "./serve/client.ts";
import { parseSlo } from "./serve/metrics.ts";
import { markdownTable, sweepChart, type SweepRun, textSummary } from "./serve/report.ts";
import { runLoad } from "./serve/runner.ts";
import {
  levelDrawIndex,
  parseJsonlWorkload,
  parseLengthDist,
  type PromptFormat,
  syntheticWorkload,
  type WorkItem,
} from "./serve/workload.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    url: { type: "string" },
    api: { type: "string", default: "completions" },
    model: { type: "string" },
    "api-key": { type: "string" },
    "num-prompts": { type: "string", default: "64" },
    "request-rate": { type: "string", default: "inf" },
    burstiness: { type: "string", default: "1" },
    "max-concurrency": { type: "string" },
    rates: { type: "string" },
    concurrencies: { type: "string" },
    "input-len": { type: "string", default: "128" },
    "output-len": { type: "string", default: "64" },
    dataset: { type: "string" },
    "prefix-len": { type: "string", default: "0" },
    "num-prefixes": { type: "string", default: "1" },
    "prompt-format": { type: "string", default: "text" },
    "id-range": { type: "string", default: "1000:10000" },
    "ignore-eos": { type: "boolean", default: false },
    seed: { type: "string", default: "0" },
    goodput: { type: "string" },
    percentiles: { type: "string", default: "50,90,99" },
    warmup: { type: "string", default: "1" },
    repeats: { type: "string", default: "1" },
    label: { type: "string" },
    out: { type: "string" },
    title: { type: "string" },
    merge: { type: "string" },
    note: { type: "string", multiple: true },
  },
});

function numberList(text: string, flag: string): number[] {
  const xs = text.split(",").map((s) => (s.trim() === "inf" ? Infinity : Number(s)));
  if (xs.some((x) => !(x > 0))) {
    throw new RangeError(
      `Expected --${flag} to be positive numbers separated by commas, got ${text}`,
    );
  }
  return xs;
}

function positiveInt(flag: keyof typeof v): number {
  const n = Number(v[flag]);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`Expected --${flag} to be a non-negative integer, got ${v[flag]}`);
  }
  return n;
}

function loadAverage(): string {
  // Deno 2.9 reads /proc/loadavg only with --allow-all; Deno.loadavg() needs --allow-sys=loadavg.
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

async function writeOutputs(dir: string, name: string, runs: SweepRun[], caption: string[]) {
  await Deno.mkdir(dir, { recursive: true });
  const title = v.title ?? `Serving benchmark: ${runs.map((r) => r.label).join(" vs ")}`;
  const table = markdownTable(runs);
  await Deno.writeTextFile(
    `${dir}/${name}.md`,
    `# ${title}\n\n${caption.join("\n\n")}\n\n${table}\n`,
  );
  await Deno.writeTextFile(`${dir}/${name}.svg`, sweepChart(runs, title, caption));
  console.error(`wrote ${dir}/${name}.md and ${dir}/${name}.svg`);
}

async function merge(): Promise<void> {
  if (v.out === undefined) throw new TypeError("--merge needs --out DIR");
  const runs: SweepRun[] = [];
  for (const path of v.merge!.split(",")) {
    const saved = JSON.parse(await Deno.readTextFile(path)) as SweepRun;
    for (const p of saved.points) if (p.load === null) p.load = Infinity; // JSON has no Infinity
    runs.push(saved);
  }
  const caption = [...(v.note ?? []), ...runs.map((r) => `${r.label}: ${r.command ?? "?"}`)];
  await writeOutputs(v.out, v.label ?? "merged", runs, caption);
  console.log(markdownTable(runs));
}

async function main(): Promise<void> {
  if (v.merge !== undefined) return await merge();
  if (v.url === undefined) {
    throw new TypeError("--url is required (for example http://127.0.0.1:8000)");
  }
  if (v.api !== "completions" && v.api !== "chat") {
    throw new RangeError(`Expected --api completions or chat, got ${v.api}`);
  }
  const format = v["prompt-format"] as PromptFormat;
  if (format !== "text" && format !== "ids") {
    throw new RangeError(`Expected --prompt-format text or ids, got ${format}`);
  }
  const idRange = v["id-range"]!.split(":").map(Number) as [number, number];
  const apiKey = v["api-key"] ?? Deno.env.get("OPENAI_API_KEY");
  const model = v.model ?? await firstModel(v.url, apiKey);
  const client: ClientOptions = {
    baseUrl: v.url,
    api: v.api as Api,
    model,
    ignoreEos: v["ignore-eos"]!,
    apiKey,
  };
  const seed = positiveInt("seed");
  const dataset = v.dataset
    ? parseJsonlWorkload(await Deno.readTextFile(v.dataset), v.dataset)
    : undefined;
  /** The requests of draw `drawIndex`: 0 is the warm-up, then one per level and repeat. */
  const workload = (drawIndex: number): WorkItem[] =>
    dataset ?? syntheticWorkload({
      numRequests: positiveInt("num-prompts"),
      inputLen: parseLengthDist(v["input-len"]!),
      outputLen: parseLengthDist(v["output-len"]!),
      prompt: { format, idRange },
      prefixTokens: positiveInt("prefix-len"),
      numPrefixes: positiveInt("num-prefixes"),
      seed,
      drawIndex,
    });
  const percentiles = numberList(v.percentiles!, "percentiles");
  const slo = v.goodput ? parseSlo(v.goodput) : undefined;
  const numRepeats = positiveInt("repeats");
  if (numRepeats < 1) throw new RangeError("Expected --repeats to be at least 1");

  // Warm-up requests (not measured) so first-request costs do not land in the first point.
  const warmupItems = workload(0);
  for (let i = 0; i < positiveInt("warmup"); i++) {
    const r = await sendRequest({ ...warmupItems[i % warmupItems.length], maxTokens: 4 }, client);
    if (!r.success) throw new Error(`The warm-up request failed: ${r.error}`);
  }

  const loadKind = v.concurrencies ? "concurrency" : "rate";
  const loads = v.concurrencies
    ? numberList(v.concurrencies, "concurrencies")
    : numberList(v.rates ?? v["request-rate"]!, "rates");
  const command = `deno task bench:serve ${Deno.args.join(" ")}`;
  const label = v.label ?? model;
  const runs: SweepRun[] = Array.from({ length: numRepeats }, (_, r) => ({
    label: numRepeats === 1 ? label : `${label} (run ${r + 1})`,
    loadKind,
    points: [],
    command,
  }));

  /** One point: `items` at one load level, appended to `run`. */
  async function runLevel(run: SweepRun, load: number, items: WorkItem[]): Promise<void> {
    const cap = loadKind === "concurrency"
      ? load
      : v["max-concurrency"]
      ? Number(v["max-concurrency"])
      : undefined;
    const rate = loadKind === "rate" ? load : Infinity;
    console.error(
      `--- ${items.length} requests at ${rate === Infinity ? "max rate" : `${rate} req/s`}${
        cap === undefined ? "" : `, at most ${cap} in flight`
      }`,
    );
    const point = await runLoad(items, client, {
      ratePerS: rate,
      burstiness: Number(v.burstiness),
      maxConcurrency: cap,
      seed,
      percentiles,
      slo,
    });
    if (point.errors.length) console.error(`failures: ${point.errors.join(" | ")}`);
    console.log(textSummary(point.metrics, percentiles));
    run.points.push({ load, metrics: point.metrics, machineLoad: Deno.loadavg()[0] });
  }
  console.error(`load average before: ${loadAverage()}`);
  for (let repeat = 0; repeat < numRepeats; repeat++) {
    for (const [levelIndex, load] of loads.entries()) {
      const drawIndex = levelDrawIndex(levelIndex, repeat, loads.length);
      await runLevel(runs[repeat], load, workload(drawIndex));
    }
  }
  const load = loadAverage();
  console.log("");
  console.log(markdownTable(runs));
  if (v.out !== undefined) {
    const name = (v.label ?? "serve").replace(/[^\w.-]+/g, "_");
    await Deno.mkdir(v.out, { recursive: true });
    // One file per repeat, each a SweepRun that --merge reads.
    for (const [r, run] of runs.entries()) {
      await Deno.writeTextFile(
        `${v.out}/${name}${r === 0 ? "" : `-run${r + 1}`}.json`,
        JSON.stringify({ ...run, machineLoadAfter: load }, null, 2),
      );
    }
    const caption = [
      command,
      `${warmupItems.length} requests per point, model ${model}, load average after ${load}, ${navigator.hardwareConcurrency} CPUs`,
    ];
    await writeOutputs(v.out, name, runs, caption);
  }
}

try {
  await main();
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  Deno.exit(1);
}
