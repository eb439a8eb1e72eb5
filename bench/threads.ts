// Benchmark (not a test): batch-1 decode tok/s at 1 and 2 kernel threads, on an otherwise idle
// machine and with one competing busy process, under libgomp's wait policies. libgomp reads
// OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it loads, so every measurement is a fresh
// subprocess (this file again, with --probe) given that configuration's environment.
//
//   deno task bench:threads --model PATH [--threads 1,2] [--tokens 64] [--runs 3]
//     [--policies default,active,passive,spin10000,spin100000] [--time-limit-s 8]
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    threads: { type: "string", default: "1,2" },
    tokens: { type: "string", default: "64" },
    runs: { type: "string", default: "3" },
    policies: { type: "string", default: "default,active,passive,spin10000,spin100000" },
    "time-limit-s": { type: "string", default: "8" },
    probe: { type: "boolean", default: false },
  },
});
if (v.model === undefined) throw new TypeError("--model PATH is required");
const modelPath = v.model;
const maxTokens = Number(v.tokens);
const timeLimitMs = 1000 * Number(v["time-limit-s"]);

/** libgomp's knobs; "default" leaves both unset. */
const POLICY_ENV: Record<string, Record<string, string>> = {
  default: {},
  active: { OMP_WAIT_POLICY: "active" },
  passive: { OMP_WAIT_POLICY: "passive" },
  spin1000: { GOMP_SPINCOUNT: "1000" },
  spin10000: { GOMP_SPINCOUNT: "10000" },
  spin100000: { GOMP_SPINCOUNT: "100000" },
};
const OMP_KEYS = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"];

/** One measurement in this process: greedy decode tok/s after an untimed warm-up stream. */
async function probe(numThreads: number): Promise<void> {
  const backend = NativeBackend.open({ numThreads });
  const loaded = await loadModel(backend, modelPath, { showProgress: false });
  const llm = LLM.over(backend, loaded, {
    blockSize: 16,
    numKvBlocks: 64,
    maxNumBatchedTokens: 512,
    maxNumSeqs: 4,
    maxModelLen: 512,
    enablePrefixCaching: false,
  });
  const engine = llm.engine;
  const promptIds = Array.from({ length: 16 }, (_, i) => 10 + i);
  const stream = (id: string, numTokens: number) => {
    engine.addRequest(id, promptIds, { maxTokens: numTokens, sampling: GREEDY, ignoreEos: true });
    const times: number[] = [];
    while (engine.hasWork) {
      const outputs = engine.step();
      const now = performance.now();
      if (outputs.some((o) => o.newTokenIds.length > 0)) times.push(now);
      // A collapsed configuration must not hold the benchmark for minutes.
      if (times.length > 1 && now - times[0] > timeLimitMs) engine.abort(id);
    }
    return times;
  };
  stream("warmup", 8);
  const times = stream("timed", maxTokens);
  const tokPerS = (1000 * (times.length - 1)) / (times.at(-1)! - times[0]);
  console.log(JSON.stringify({ tokPerS, numTokens: times.length }));
  llm.release();
  loaded.release();
  backend.close();
}

/** A competitor for one CPU: a shell busy loop, bounded by `timeout` should we never kill it. */
function startBusyProcess(): Deno.ChildProcess {
  return new Deno.Command("timeout", {
    args: ["300", "sh", "-c", "while :; do :; done"],
    stdout: "null",
    stderr: "null",
  }).spawn();
}

async function stopBusyProcess(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM"); // timeout passes it on to the loop
  } catch {
    // Already gone.
  }
  await child.status;
}

async function measure(numThreads: number, policy: string, isBusy: boolean): Promise<number> {
  const env = Deno.env.toObject();
  for (const key of OMP_KEYS) delete env[key];
  Object.assign(env, POLICY_ENV[policy]);
  const busy = isBusy ? startBusyProcess() : undefined;
  try {
    if (busy) await new Promise((resolve) => setTimeout(resolve, 300)); // let it take a core
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-env",
        "--allow-ffi",
        new URL(import.meta.url).pathname,
        "--probe",
        "--model",
        modelPath,
        "--threads",
        String(numThreads),
        "--tokens",
        String(maxTokens),
        "--time-limit-s",
        String(v["time-limit-s"]),
      ],
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!output.success) {
      throw new Error(`The probe failed:\n${new TextDecoder().decode(output.stderr)}`);
    }
    const lines = new TextDecoder().decode(output.stdout).trim().split("\n");
    return (JSON.parse(lines.at(-1)!) as { tokPerS: number }).tokPerS;
  } finally {
    if (busy) await stopBusyProcess(busy);
  }
}

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

async function main(): Promise<void> {
  const threadCounts = v.threads!.split(",").map(Number);
  const policies = v.policies!.split(",");
  for (const p of policies) {
    if (!(p in POLICY_ENV)) {
      throw new RangeError(`Unknown policy ${p}; expected one of ${Object.keys(POLICY_ENV)}`);
    }
  }
  const configs = threadCounts.flatMap((t) =>
    policies.flatMap((p) => [false, true].map((isBusy) => ({ t, p, isBusy })))
  );
  const numRuns = Number(v.runs);
  console.log(
    `model ${modelPath}, ${maxTokens} tokens per stream, ${numRuns} runs per configuration ` +
      `(alternating), ${navigator.hardwareConcurrency} CPUs; load average before ${loadAverage()}`,
  );
  const results = new Map<string, { tokPerS: number[]; load: number[] }>();
  for (let run = 0; run < numRuns; run++) {
    for (let k = 0; k < configs.length; k++) {
      // Rotate the order each run so no configuration always follows the same one.
      const c = configs[(k + run * 3) % configs.length];
      const key = `${c.t}|${c.p}|${c.isBusy}`;
      const tokPerS = await measure(c.t, c.p, c.isBusy);
      const entry = results.get(key) ?? { tokPerS: [], load: [] };
      entry.tokPerS.push(tokPerS);
      entry.load.push(Deno.loadavg()[0]);
      results.set(key, entry);
      console.error(
        `run ${run + 1} threads ${c.t} ${c.p} ${c.isBusy ? "busy" : "idle"}: ` +
          `${tokPerS.toFixed(1)} tok/s, load ${loadAverage()}`,
      );
    }
  }
  console.log("");
  console.log(
    "| threads | wait policy | idle tok/s | + 1 busy process tok/s | busy / idle | runs idle | runs busy | load avg (1 min) |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const t of threadCounts) {
    for (const p of policies) {
      const idle = results.get(`${t}|${p}|false`)!;
      const busy = results.get(`${t}|${p}|true`)!;
      const runsText = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(", ");
      const loads = [...idle.load, ...busy.load];
      console.log(
        `| ${t} | ${p} | ${median(idle.tokPerS).toFixed(1)} | ${
          median(busy.tokPerS).toFixed(1)
        } | ${(median(busy.tokPerS) / median(idle.tokPerS)).toFixed(2)} | ${
          runsText(idle.tokPerS)
        } | ${runsText(busy.tokPerS)} | ${Math.min(...loads).toFixed(2)}–${
          Math.max(...loads).toFixed(2)
        } |`,
      );
    }
  }
  console.log(`load average after ${loadAverage()}`);
}

if (v.probe) await probe(Number(v.threads));
else await main();
