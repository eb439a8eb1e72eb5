// Benchmark (not a test): in-flight (continuous) batching with a paged KV cache against the static
// batching baseline, on a random-weight model of a real shape and a workload whose output lengths
// are long-tailed. Prints KV memory waste, output throughput and request latency for each mode.
//
//   deno task bench:batching [--preset smollm-135m] [--dtype f16] [--layers N] [--requests 48]
//     [--max-num-seqs 16] [--kv-tokens 8192] [--max-model-len 512] [--threads 2] [--seed 1]
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { getPreset } from "../src/random_model/presets.ts";
import { generateRandomModel } from "../src/random_model/random_model.ts";
import { GREEDY, Rng } from "../src/sampling.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    preset: { type: "string", default: "smollm-135m" },
    dtype: { type: "string", default: "f16" },
    layers: { type: "string" },
    requests: { type: "string", default: "48" },
    "max-num-seqs": { type: "string", default: "16" },
    "kv-tokens": { type: "string", default: "8192" },
    "max-model-len": { type: "string", default: "512" },
    threads: { type: "string", default: "2" },
    seed: { type: "string", default: "1" },
  },
});

interface Job {
  promptIds: number[];
  maxTokens: number;
}

/** Prompts of 16–128 tokens; outputs log-normal (median 32, long tail), clipped to [4, 384]. */
function workload(count: number, vocab: number, seed: number): Job[] {
  const rng = new Rng(seed);
  const normal = () => {
    const u = Math.max(rng.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  };
  return Array.from({ length: count }, () => {
    const promptLen = 16 + Math.floor(rng.next() * 113);
    return {
      promptIds: Array.from({ length: promptLen }, () => Math.floor(rng.next() * (vocab - 16))),
      maxTokens: Math.min(384, Math.max(4, Math.round(32 * Math.exp(1.0 * normal())))),
    };
  });
}

function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const dir = await Deno.makeTempDir({ prefix: "denollm-bench-" });
try {
  const preset = getPreset(v.preset!, v.layers ? { numLayers: Number(v.layers) } : {});
  const made = await generateRandomModel(preset, {
    outDir: dir,
    seed: 1,
    dtype: v.dtype!.toUpperCase() as "F32" | "F16" | "BF16",
    formats: ["hf"],
  });
  const backend = NativeBackend.open({ numThreads: Number(v.threads) });
  const loaded = await loadModel(backend, made.hfDir!, { showProgress: false });
  const config = loaded.config;
  const jobs = workload(Number(v.requests), config.vocabSize, Number(v.seed));
  const blockSize = 16;
  const numBlocks = Math.ceil(Number(v["kv-tokens"]) / blockSize) + 1;
  // The length limit a server is configured with: static batching must reserve it per request.
  const maxModelLen = Number(v["max-model-len"]);
  const outputTokens = jobs.reduce((n, j) => n + j.maxTokens, 0);
  console.log(
    `model: random ${v.preset} (${config.numLayers} layers, ${v.dtype}), ${jobs.length} requests, ` +
      `${outputTokens} output tokens (max ${Math.max(...jobs.map((j) => j.maxTokens))}), ` +
      `KV cache ${(numBlocks - 1) * blockSize} tokens, max ${v["max-num-seqs"]} sequences, ` +
      `max model length ${maxModelLen}, ` +
      `${v.threads} threads`,
  );
  console.log(
    "| mode | output tok/s | mean latency s | p50 s | p90 s | KV waste (time avg) | steps |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");

  for (const mode of ["continuous", "static"] as const) {
    const llm = LLM.over(backend, loaded, {
      blockSize,
      numKvBlocks: numBlocks,
      maxNumBatchedTokens: 512,
      maxNumSeqs: Number(v["max-num-seqs"]),
      maxModelLen,
      mode,
      // The workload has no shared prefixes; keep caching out of the comparison.
      enablePrefixCaching: false,
    });
    const engine = llm.engine;
    const started = performance.now();
    jobs.forEach((job, i) =>
      engine.addRequest(`r${i}`, job.promptIds, {
        maxTokens: job.maxTokens,
        sampling: GREEDY,
        ignoreEos: true,
      })
    );
    const latency = new Map<string, number>();
    let wasteTime = 0;
    let totalTime = 0;
    let steps = 0;
    while (engine.hasWork) {
      const stepStart = performance.now();
      // Waste is measured on the KV held during the step: allocated slots not holding a token.
      const outputs = engine.step();
      const stats = engine.stats();
      const allocated = (stats.numKvBlocks - stats.numFreeKvBlocks) * blockSize;
      const stepMs = performance.now() - stepStart;
      if (allocated > 0) {
        wasteTime += stepMs * (1 - stats.numKvTokensInUse / allocated);
        totalTime += stepMs;
      }
      steps++;
      for (const out of outputs) {
        if (out.finished) latency.set(out.requestId, (performance.now() - started) / 1000);
      }
    }
    const elapsed = (performance.now() - started) / 1000;
    const lat = [...latency.values()].sort((a, b) => a - b);
    const mean = lat.reduce((a, b) => a + b, 0) / lat.length;
    console.log(
      `| ${mode === "continuous" ? "in-flight, paged" : "static, reserved"} | ${
        (outputTokens / elapsed).toFixed(1)
      } | ${mean.toFixed(2)} | ${percentile(lat, 0.5).toFixed(2)} | ${
        percentile(lat, 0.9).toFixed(2)
      } | ${((100 * wasteTime) / totalTime).toFixed(1)}% | ${steps} |`,
    );
    llm.release();
  }
  loaded.release();
  backend.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
