// Benchmark (not a test): what serving costs per token on top of the engine. One greedy stream at
// batch 1 (a fixed prompt, EOS ignored, the same number of tokens) through (a) `LLMEngine.step()`
// in this thread, (b) the same engine in its worker through `AsyncEngine`, (c) the real server over
// HTTP, timed on the client from the SSE token events. The first token (the prefill) is excluded.
//
//   deno task bench:overhead --model PATH [--threads 1] [--tokens 128] [--runs 3]
//     [--prompt-len 16]
//
// Goal: a served stream at batch 1 is not slower than in-process by more than 10% or 0.2 ms per
// token, whichever is larger.
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import type { LLMEngine } from "../src/engine/engine.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { median } from "./common.ts";
import { sendRequest } from "./serve/client.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "128" },
    runs: { type: "string", default: "3" },
    "prompt-len": { type: "string", default: "16" },
  },
});
if (v.model === undefined) throw new TypeError("--model PATH is required");
const modelPath = v.model;
const numThreads = Number(v.threads);
const maxTokens = Number(v.tokens);
const numRuns = Number(v.runs);
const maxModelLen = 1024;
const kvCacheMemoryBytes = 64 << 20;
// The same prompt in every run and mode; prefix caching is off everywhere so no run reuses KV.
const promptIds = Array.from({ length: Number(v["prompt-len"]) }, (_, i) => 10 + i);
const engineConfig = { maxNumBatchedTokens: 512, maxNumSeqs: 4, enablePrefixCaching: false };
const params = { maxTokens, sampling: GREEDY, ignoreEos: true };

function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

/** ms per token after the first: the decode steps only. */
function decodeMsPerToken(firstMs: number, lastMs: number, numTokens: number): number {
  return (lastMs - firstMs) / (numTokens - 1);
}

/** The in-process engine: the serving engine stepped in this thread (`LLM`). */
async function createInProcessEngine(backend: NativeBackend) {
  const loaded = await loadModel(backend, modelPath, { showProgress: false });
  const blockSize = 16;
  const llm = LLM.over(backend, loaded, {
    ...engineConfig,
    maxModelLen,
    blockSize,
    numKvBlocks: Math.ceil(maxModelLen / blockSize) + 1,
  });
  const release = () => {
    llm.release();
    loaded.release();
  };
  return { engine: llm.engine, release };
}

interface RunResult {
  msPerToken: number;
  numTokens: number;
  /** Engine-side step time per decode token, where the mode can see it. */
  stepMsPerToken?: number;
}

let runCounter = 0;

function runInProcess(engine: LLMEngine): RunResult {
  engine.addRequest(`inproc-${runCounter++}`, promptIds, params);
  const times: number[] = [];
  while (engine.hasWork) {
    const outputs = engine.step();
    const now = performance.now();
    for (const out of outputs) if (out.newTokenIds.length > 0) times.push(now);
  }
  return {
    msPerToken: decodeMsPerToken(times[0], times.at(-1)!, times.length),
    numTokens: times.length,
  };
}

async function runWorker(engine: AsyncEngine): Promise<RunResult> {
  const times: number[] = [];
  const stepMs: number[] = [];
  for await (const out of engine.generate(`worker-${runCounter++}`, promptIds, params)) {
    if (out.newTokenIds.length === 0) continue;
    times.push(performance.now());
    if (times.length > 1) stepMs.push(engine.lastStepMs);
  }
  return {
    msPerToken: decodeMsPerToken(times[0], times.at(-1)!, times.length),
    numTokens: times.length,
    stepMsPerToken: stepMs.reduce((a, b) => a + b, 0) / stepMs.length,
  };
}

async function runHttp(baseUrl: string): Promise<RunResult> {
  const result = await sendRequest(
    { prompt: promptIds, maxTokens, promptTokens: promptIds.length },
    { baseUrl, api: "completions", model: "bench", ignoreEos: true },
  );
  if (!result.success) throw new Error(`The streamed request failed: ${result.error}`);
  // Token chunks: the first (TTFT) plus one per inter-token gap.
  const numChunks = result.itlMs.length + 1;
  return {
    msPerToken: (result.e2elMs - result.ttftMs) / (numChunks - 1),
    numTokens: result.outputTokens,
  };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The real server as a subprocess, listening on a free local port once /health answers 200. */
async function startServer(): Promise<{ baseUrl: string; stop: () => Promise<void> }> {
  const port = freePort();
  const root = new URL("..", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-ffi",
      "--allow-net",
      "--unstable-no-legacy-abort",
      "main.ts",
      "serve",
      "--model",
      modelPath,
      "--served-model-name",
      "bench",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--threads",
      String(numThreads),
      "--max-model-len",
      String(maxModelLen),
      "--kv-cache-memory",
      String(kvCacheMemoryBytes),
      "--max-num-seqs",
      String(engineConfig.maxNumSeqs),
      "--max-num-batched-tokens",
      String(engineConfig.maxNumBatchedTokens),
      "--no-prefix-caching",
    ],
    cwd: root,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const baseUrl = `http://127.0.0.1:${port}`;
  const kill = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch {
      // Already exited.
    }
  };
  const stop = async () => {
    kill("SIGTERM");
    // The server drains a stream still in flight; do not wait for that.
    const timer = setTimeout(() => kill("SIGKILL"), 3000);
    await child.status;
    clearTimeout(timer);
    await stderr;
  };
  // Interrupting the benchmark must not leave the server running.
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      kill("SIGKILL");
      Deno.exit(130);
    });
  }
  const deadline = performance.now() + 120_000;
  while (performance.now() < deadline) {
    try {
      const response = await fetch(`${baseUrl}/health`);
      await response.body?.cancel();
      if (response.status === 200) return { baseUrl, stop };
    } catch {
      // Not listening yet.
    }
    const exited = await Promise.race([
      child.status.then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), 200)),
    ]);
    if (exited) throw new Error(`The server exited before it was ready:\n${await stderr}`);
  }
  await stop();
  throw new Error("The server did not answer /health with 200 within 120 s");
}

/** What the worker does per step besides `step()`: a stats snapshot and a structured clone. */
function perStepExtraUs(engine: LLMEngine): { statsUs: number; cloneUs: number } {
  const numIterations = 2000;
  const output = {
    requestId: "worker-1",
    index: 0,
    newTokenIds: [123],
    textDelta: " word",
    finished: false,
    numPromptTokens: 16,
    numOutputTokens: 7,
  };
  let started = performance.now();
  let stats = engine.stats();
  for (let i = 0; i < numIterations; i++) stats = engine.stats();
  const statsUs = (1000 * (performance.now() - started)) / numIterations;
  started = performance.now();
  for (let i = 0; i < numIterations; i++) {
    structuredClone({ type: "outputs", outputs: [output], stats, stepMs: 1 });
  }
  const cloneUs = (1000 * (performance.now() - started)) / numIterations;
  return { statsUs, cloneUs };
}

/**
 * The worker loop's own cost per iteration, with no engine: a bare worker posting one outputs-sized
 * message per iteration, then yielding with `setImmediate` as engine_worker.ts does.
 */
async function workerLoopUs(): Promise<{ postUs: number; postAndYieldUs: number }> {
  const source = `self.onmessage = async (event) => {
    const { isYielding, n, message } = event.data;
    const started = performance.now();
    for (let i = 0; i < n; i++) {
      self.postMessage(message);
      if (isYielding) await new Promise((resolve) => setImmediate(resolve));
    }
    self.postMessage({ usPerIteration: (1000 * (performance.now() - started)) / n });
  };`;
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  const message = { type: "outputs", outputs: [{ requestId: "r", newTokenIds: [1] }], stepMs: 1 };
  const measure = (isYielding: boolean) =>
    new Promise<number>((resolve) => {
      worker.onmessage = (event) => {
        if (event.data.usPerIteration !== undefined) resolve(event.data.usPerIteration);
      };
      worker.postMessage({ isYielding, n: 5000, message });
    });
  try {
    const post: number[] = [];
    const postAndYield: number[] = [];
    for (let i = 0; i < 3; i++) {
      post.push(await measure(false));
      postAndYield.push(await measure(true));
    }
    return { postUs: median(post), postAndYieldUs: median(postAndYield) };
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
}

const modes = ["in-process", "worker", "http"] as const;
type Mode = typeof modes[number];

console.log(
  `model ${modelPath}, ${numThreads} threads, prompt ${promptIds.length} tokens, ` +
    `${maxTokens} tokens per stream, ${numRuns} alternating runs; load average before ${loadAverage()}`,
);
const backend = NativeBackend.open({ numThreads });
const inProcess = await createInProcessEngine(backend);
const worker = await AsyncEngine.start({
  modelPath,
  numThreads,
  kvCacheMemoryBytes,
  maxModelLen,
  ...engineConfig,
});
const server = await startServer();
const results: Record<Mode, RunResult[]> = { "in-process": [], worker: [], http: [] };
let extra: { statsUs: number; cloneUs: number };
let loop: { postUs: number; postAndYieldUs: number };
try {
  // One untimed warm-up stream per mode (first-call costs: JIT, page faults, the HTTP connection).
  runInProcess(inProcess.engine);
  await runWorker(worker);
  await runHttp(server.baseUrl);
  for (let run = 0; run < numRuns; run++) {
    // Rotate the order so no mode always runs right after another's spinning threads.
    for (let k = 0; k < modes.length; k++) {
      const mode = modes[(run + k) % modes.length];
      const result = mode === "in-process"
        ? runInProcess(inProcess.engine)
        : mode === "worker"
        ? await runWorker(worker)
        : await runHttp(server.baseUrl);
      results[mode].push(result);
      console.error(
        `run ${run + 1} ${mode}: ${result.msPerToken.toFixed(3)} ms/token ` +
          `(${result.numTokens} tokens), load ${loadAverage()}`,
      );
    }
  }
  extra = perStepExtraUs(inProcess.engine);
  loop = await workerLoopUs();
} finally {
  await server.stop();
  await worker.shutdown();
  inProcess.release();
  backend.close();
}

const med = (mode: Mode) => median(results[mode].map((r) => r.msPerToken));
const base = med("in-process");
console.log("");
// Runs of one round ran back to back, so their difference cancels most of a slow drift in load.
const pairedOverMs = (mode: Mode) =>
  median(results[mode].map((r, i) => r.msPerToken - results["in-process"][i].msPerToken));
console.log(
  "| path | ms/token (median) | tok/s | vs in-process | paired over in-process ms/token | " +
    "min ms/token | runs ms/token |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const mode of modes) {
  const ms = med(mode);
  const all = results[mode].map((r) => r.msPerToken);
  console.log(
    `| ${mode} | ${ms.toFixed(3)} | ${(1000 / ms).toFixed(1)} | ${(ms / base).toFixed(3)}x | ${
      mode === "in-process" ? "-" : pairedOverMs(mode).toFixed(3)
    } | ${Math.min(...all).toFixed(3)} | ${all.map((x) => x.toFixed(2)).join(", ")} |`,
  );
}
const workerStep = median(results.worker.map((r) => r.stepMsPerToken!));
console.log("");
console.log(
  `worker: step() itself ${workerStep.toFixed(3)} ms/token (median), so ` +
    `${(med("worker") - workerStep).toFixed(3)} ms/token is messaging and yielding`,
);
console.log(
  `per step besides step(): engine.stats() ${extra.statsUs.toFixed(1)} us, ` +
    `structured clone of one outputs message ${extra.cloneUs.toFixed(1)} us`,
);
console.log(
  `bare worker loop: postMessage ${loop.postUs.toFixed(1)} us per step, with the setImmediate ` +
    `yield ${loop.postAndYieldUs.toFixed(1)} us`,
);
const allowedMs = Math.max(0.1 * base, 0.2);
for (const mode of ["worker", "http"] as const) {
  const overMs = med(mode) - base;
  console.log(
    `${overMs <= allowedMs ? "PASS" : "FAIL"}: ${mode} is ${overMs.toFixed(3)} ms/token over ` +
      `in-process by medians, ${pairedOverMs(mode).toFixed(3)} paired ` +
      `(allowed ${allowedMs.toFixed(3)} ms: 10% or 0.2 ms, whichever is larger)`,
  );
}
console.log(`load average after ${loadAverage()}`);
