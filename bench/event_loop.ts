// Benchmark (not a test) behind the choice to run the engine in a Worker: how long the main
// thread's event loop stalls while the engine generates, with the engine in a worker versus in the
// main thread, and what a nonblocking FFI call (the other way to free the event loop) costs.
//
//   deno task bench:event-loop [--model PATH] [--requests 16] [--max-tokens 64]
import { parseArgs } from "node:util";
import { defaultLibraryPath, NativeBackend } from "../ffi/native.ts";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/models/stories260K/hf" },
    requests: { type: "string", default: "16" },
    "max-tokens": { type: "string", default: "64" },
  },
});
const numRequests = Number(v.requests);
const maxTokens = Number(v["max-tokens"]);
const prompt = Array.from({ length: 48 }, (_, i) => 10 + i);
const engineConfig = { maxNumBatchedTokens: 512, maxNumSeqs: 32 };

/** Samples event-loop lag with a 1 ms timer until stopped; returns the gaps beyond 1 ms. */
function lagProbe() {
  const gaps: number[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    gaps.push(now - last - 1);
    last = now;
  }, 1);
  return {
    stop() {
      clearInterval(timer);
      gaps.sort((a, b) => a - b);
      return {
        p99: gaps[Math.floor(gaps.length * 0.99)] ?? 0,
        max: gaps.at(-1) ?? 0,
        ticks: gaps.length,
      };
    },
  };
}

async function inWorker() {
  const engine = await AsyncEngine.start({
    modelPath: v.model!,
    kvCacheMemoryBytes: 256 << 20,
    maxModelLen: 512,
    ...engineConfig,
  });
  const probe = lagProbe();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: numRequests }, async (_, i) => {
      for await (const _out of engine.generate(`w${i}`, prompt, { maxTokens, sampling: GREEDY })) {
        // drain
      }
    }),
  );
  const elapsed = performance.now() - started;
  const lag = probe.stop();
  await engine.shutdown();
  return { elapsed, ...lag };
}

async function inMainThread() {
  const backend = NativeBackend.open();
  const loaded = await loadModel(backend, v.model!, { showProgress: false });
  const llm = LLM.over(backend, loaded, {
    blockSize: 16,
    numKvBlocks: 512,
    ...engineConfig,
    maxModelLen: 512,
  });
  const engine = llm.engine;
  for (let i = 0; i < numRequests; i++) {
    engine.addRequest(`m${i}`, prompt, { maxTokens, sampling: GREEDY });
  }
  const probe = lagProbe();
  const started = performance.now();
  while (engine.hasWork) {
    engine.step();
    // The best a single thread can do: yield to the event loop between steps.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  const elapsed = performance.now() - started;
  const lag = probe.stop();
  llm.release();
  loaded.release();
  backend.close();
  return { elapsed, ...lag };
}

/** Round-trip cost of one nonblocking FFI call (a trivial function run on Deno's thread pool). */
async function nonblockingCallCost() {
  const lib = Deno.dlopen(defaultLibraryPath("cpu"), {
    dl_abi_version: { parameters: [], result: "u32", nonblocking: true },
  });
  const n = 2000;
  const started = performance.now();
  for (let i = 0; i < n; i++) await lib.symbols.dl_abi_version();
  const perCallUs = ((performance.now() - started) / n) * 1000;
  lib.close();
  return perCallUs;
}

const worker = await inWorker();
const main = await inMainThread();
const callUs = await nonblockingCallCost();
console.log(`model ${v.model}, ${numRequests} requests x ${maxTokens} tokens`);
console.log("| engine runs in | wall ms | event-loop lag p99 ms | max ms | timer ticks |");
console.log("| --- | --- | --- | --- | --- |");
for (const [name, r] of [["worker", worker], ["main thread", main]] as const) {
  console.log(
    `| ${name} | ${r.elapsed.toFixed(0)} | ${r.p99.toFixed(2)} | ${
      r.max.toFixed(2)
    } | ${r.ticks} |`,
  );
}
console.log(
  `nonblocking FFI: ${callUs.toFixed(1)} µs per awaited call; a Llama forward pass makes ` +
    `~12 calls per layer (${
      (callUs * 12 * 30 / 1000).toFixed(1)
    } ms of overhead per step at 30 layers)`,
);
