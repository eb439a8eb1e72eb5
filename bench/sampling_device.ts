// Benchmark (not a test): host against device sampling (--sampling-device) at batch 16. Per
// decode step, the bytes copied device to host and the decode tok/s, medians of --runs runs
// (host and device alternate), for greedy and for seeded temperature sampling.
//
//   deno task bench:sampling-device [--model PATH] [--threads 1] [--tokens 64] [--runs 3]
//     [--batch 16] [--library PATH]
//
// On the CPU build both copies are memcpy of host memory, so the speed is only informative; the
// point of device sampling is the CUDA build, where the logits copy is a PCIe transfer and a sync.
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import type { SamplingDevice } from "../src/engine/sampling_device.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY, type SamplingParams } from "../src/sampling.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/models/stories260K/hf" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "64" },
    runs: { type: "string", default: "3" },
    batch: { type: "string", default: "16" },
    library: { type: "string" },
  },
});
const maxTokens = Number(v.tokens);
const numRuns = Number(v.runs);
const batchSize = Number(v.batch);

const backend = NativeBackend.open({ numThreads: Number(v.threads), libraryPath: v.library });
const loaded = await loadModel(backend, v.model, { showProgress: false });
const vocab = loaded.config.vocabSize;

/** Device-to-host bytes since the last reset (every dl_copy_to_host goes through download). */
const copied = { numBytes: 0 };
const download = backend.download;
backend.download = (dst, src, offsetBytes) => {
  copied.numBytes += dst.byteLength;
  download.call(backend, dst, src, offsetBytes);
};

/** One batch to the end; decode-only steps are timed and their copies counted. */
function runBatch(llm: LLM, sampling: SamplingParams, round: number) {
  const engine = llm.engine;
  for (let i = 0; i < batchSize; i++) {
    const seeded = sampling.temperature > 0 ? { ...sampling, seed: round * 1000 + i } : sampling;
    engine.addRequest(`b${round}-${i}`, [1, 10 + i, 20 + round, 30], {
      maxTokens,
      sampling: seeded,
      ignoreEos: true,
    });
  }
  let decodeMs = 0;
  let numDecodeTokens = 0;
  let numDecodeSteps = 0;
  let decodeBytes = 0;
  while (engine.hasWork) {
    copied.numBytes = 0;
    const started = performance.now();
    engine.step();
    const ms = performance.now() - started;
    const stats = engine.stats();
    if (stats.lastStepPrefillTokens === 0 && stats.lastStepDecodeTokens === batchSize) {
      decodeMs += ms;
      numDecodeTokens += stats.lastStepDecodeTokens;
      numDecodeSteps++;
      decodeBytes += copied.numBytes;
    }
  }
  return {
    tokPerS: numDecodeTokens / (decodeMs / 1000),
    bytesPerStep: decodeBytes / numDecodeSteps,
  };
}

const engines = new Map<SamplingDevice, LLM>(
  (["host", "device"] as const).map((mode) => [
    mode,
    LLM.over(backend, loaded, {
      blockSize: 16,
      kvCacheMemoryBytes: 64 << 20,
      maxModelLen: Math.min(512, loaded.config.maxPositionEmbeddings),
      maxNumBatchedTokens: 512,
      maxNumSeqs: batchSize,
      enablePrefixCaching: false,
      samplingDevice: mode,
    }),
  ]),
);
const SAMPLINGS: [string, SamplingParams][] = [
  ["greedy", GREEDY],
  ["T 0.8 top-p 0.95", { temperature: 0.8, topK: 0, topP: 0.95, minP: 0 }],
];

console.log(
  `${v.model}: vocab ${vocab}, batch ${batchSize}, ${maxTokens} tokens, threads ${v.threads}, ` +
    `${backend.name} build, load average ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`,
);
for (const [label, sampling] of SAMPLINGS) {
  const results = new Map<SamplingDevice, { tokPerS: number[]; bytesPerStep: number[] }>();
  for (let round = 0; round < numRuns; round++) {
    for (const [mode, llm] of engines) {
      const r = runBatch(llm, sampling, round);
      const entry = results.get(mode) ?? { tokPerS: [], bytesPerStep: [] };
      entry.tokPerS.push(r.tokPerS);
      entry.bytesPerStep.push(r.bytesPerStep);
      results.set(mode, entry);
    }
  }
  for (const [mode, r] of results) {
    console.log(
      `  ${label.padEnd(17)} ${mode.padEnd(6)} ${median(r.tokPerS).toFixed(0).padStart(7)} tok/s ` +
        `(runs ${r.tokPerS.map((x) => x.toFixed(0)).join(", ")}), ` +
        `${median(r.bytesPerStep).toFixed(0)} bytes device->host per decode step`,
    );
  }
}
console.log(`load average after: ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
for (const llm of engines.values()) llm.release();
loaded.release();
backend.close();
