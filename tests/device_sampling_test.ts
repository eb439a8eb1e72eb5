// Device sampling through the real engine on stories260K (CPU build): greedy equals the host
// sampler, alone and 16 at once, with no logits copied; seeded tokens are dl_sample's on (seed,
// token index) whatever shares the step, and follow the softmax; requests that need logits
// sample on the host; --sampling-device auto keeps the host on the CPU build.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { Metrics } from "../src/api/metrics.ts";
import { type EngineStats, LLMEngine } from "../src/engine/engine.ts";
import { type Executor, LocalExecutor } from "../src/engine/executor.ts";
import type { ForwardBatch } from "../src/engine/forward_batch.ts";
import { LLM } from "../src/engine/llm.ts";
import type { LocalEngineOptions } from "../src/engine/local_engine.ts";
import type { RequestParams } from "../src/engine/request.ts";
import type { SamplingDevice } from "../src/engine/sampling_device.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY, Rng, type SamplingParams } from "../src/sampling.ts";
import { withDeviceBuffers } from "./device_buffers.ts";
import { sampleOn } from "./sample_helpers.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const backend = NativeBackend.open({ numThreads: 1 });
const loaded = await loadModel(backend, MODEL, { showProgress: false });
const VOCAB = loaded.config.vocabSize;
globalThis.addEventListener("unload", () => {
  loaded.release();
  backend.close();
});

interface Job {
  id: string;
  promptIds: number[];
  params: RequestParams;
}

/** Counts device-to-host copies: every size, and how many were a row of logits or more. */
function watchDownloads() {
  const seen = { numBytes: 0, numLogitCopies: 0 };
  const download = backend.download;
  backend.download = (dst, src, offsetBytes) => {
    seen.numBytes += dst.byteLength;
    if (dst.byteLength >= VOCAB * 4) seen.numLogitCopies++;
    download.call(backend, dst, src, offsetBytes);
  };
  return { seen, stop: () => (backend.download = download) };
}

/** Runs jobs to the end on one engine; returns each sample's tokens, outputs and the stats. */
function run(
  jobs: readonly Job[],
  samplingDevice: SamplingDevice,
  options: LocalEngineOptions = {},
) {
  const llm = LLM.over(backend, loaded, {
    blockSize: 8,
    numKvBlocks: 256,
    maxNumBatchedTokens: 256,
    maxNumSeqs: 64,
    samplingDevice,
    ...options,
  });
  const tokens = new Map<string, number[]>();
  const outputs = new Map<string, ReturnType<LLMEngine["step"]>>();
  try {
    const atStart = backend.memoryStats();
    for (const job of jobs) llm.engine.addRequest(job.id, job.promptIds, job.params);
    while (llm.engine.hasWork) {
      for (const out of llm.engine.step()) {
        const key = `${out.requestId}/${out.index}`;
        tokens.set(key, [...(tokens.get(key) ?? []), ...out.newTokenIds]);
        outputs.set(key, [...(outputs.get(key) ?? []), out]);
      }
    }
    const numStepAllocs = backend.memoryStats().numAllocs - atStart.numAllocs;
    return { tokens, outputs, stats: llm.engine.stats(), numStepAllocs };
  } finally {
    llm.release();
  }
}

/** `n` requests on prompts of random tokens after a story opening. */
function randomJobs(n: number, seed: number, params: (i: number) => RequestParams): Job[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const promptIds = loaded.tokenizer.encode(["Once upon a time", "The dog", "Lily"][i % 3]);
    for (let j = Math.floor(rng.next() * 40); j > 0; j--) {
      promptIds.push(3 + Math.floor(rng.next() * (VOCAB - 3)));
    }
    return { id: `r${i}`, promptIds, params: params(i) };
  });
}

function totalTokens(tokens: Map<string, number[]>): number {
  return [...tokens.values()].reduce((n, t) => n + t.length, 0);
}

function deviceStats(stats: EngineStats) {
  assert.ok(stats.deviceSampling !== undefined, "the engine samples on the device");
  return stats.deviceSampling;
}

/** The logits of every position of `ids`, [ids.length, vocab], from one prefill step. */
function logitsOf(ids: readonly number[]): Float32Array {
  const n = ids.length;
  const blockSize = 8;
  const numBlocks = Math.ceil(n / blockSize);
  const kvCache = new KvCache(backend, loaded.config, { blockSize, numBlocks: numBlocks + 1 });
  const executor = new LocalExecutor(backend, { model: loaded.model, kvCache }, {
    maxNumTokens: n,
    maxNumSeqs: 1,
    maxNumLogitRows: n,
    maxBlocksPerSeq: numBlocks,
    blockSize,
  });
  const batch: ForwardBatch = {
    tokenIds: Int32Array.from(ids),
    positions: Int32Array.from({ length: n }, (_, i) => i),
    slotMapping: Int32Array.from({ length: n }, (_, i) => blockSize + i), // blocks 1, 2, …
    seqLens: Int32Array.of(n),
    queryStart: Int32Array.of(0, n),
    blockTables: Int32Array.from({ length: numBlocks }, (_, i) => 1 + i),
    maxBlocksPerSeq: numBlocks,
    logitRows: Int32Array.from({ length: n }, (_, i) => i),
    blockCopies: new Int32Array(0),
  };
  try {
    return executor.execute(batch).slice();
  } finally {
    executor.release();
    kvCache.release();
  }
}

Deno.test("device sampling: greedy equals the host's, alone and 16 at once, no logits copied", () => {
  const one: Job[] = [{
    id: "one",
    promptIds: loaded.tokenizer.encode("Once upon a time"),
    params: { maxTokens: 64, sampling: GREEDY, ignoreEos: true },
  }];
  const rng = new Rng(11);
  const sixteen = randomJobs(16, 3, () => ({
    maxTokens: 1 + Math.floor(rng.next() * 40),
    sampling: GREEDY,
    ignoreEos: true,
  }));
  for (const [label, jobs] of [["alone", one], ["16 at once", sixteen]] as const) {
    const host = run(jobs, "host");
    assert.equal(host.stats.deviceSampling, undefined, "the host engine samples on the host");
    const watch = watchDownloads();
    let device;
    try {
      device = run(jobs, "device");
    } finally {
      watch.stop();
    }
    assert.deepEqual(device.tokens, host.tokens, label);
    const stats = deviceStats(device.stats);
    assert.equal(stats.numTokens, totalTokens(host.tokens), `${label}: every token on the device`);
    assert.equal(stats.numSteps, device.stats.numSteps, `${label}: every step`);
    assert.equal(stats.numStepsWithLogits, 0);
    assert.equal(watch.seen.numLogitCopies, 0, `${label}: no row of logits came back`);
    assert.equal(device.numStepAllocs, 0, `${label}: the steps allocate nothing`);
    console.log(
      `  ${label}: ${stats.numTokens} tokens in ${stats.numSteps} steps, ` +
        `${(watch.seen.numBytes / stats.numSteps).toFixed(0)} bytes device->host per step`,
    );
  }
});

Deno.test("device sampling: seeded tokens are dl_sample's on (seed, token index)", () => {
  const sampling: SamplingParams = { temperature: 0.9, topK: 40, topP: 0.95, minP: 0.02 };
  const target: Job = {
    id: "target",
    promptIds: loaded.tokenizer.encode("Once upon a time"),
    params: { maxTokens: 48, sampling: { ...sampling, seed: 1234 }, ignoreEos: true },
  };
  const alone = run([target], "device").tokens.get("target/0")!;
  assert.equal(alone.length, 48);
  assert.deepEqual(run([target], "device").tokens.get("target/0"), alone, "the same run twice");
  // Beside 15 others, some with logprobs (their steps copy logits) and some unseeded.
  const others = randomJobs(15, 9, (i) => ({
    maxTokens: 10 + i,
    sampling: i % 2 === 0 ? { ...sampling, seed: i } : sampling,
    ignoreEos: true,
    ...(i % 5 === 0 ? { logprobs: 1 } : {}),
  }));
  const crowded = run([...others, target], "device");
  assert.deepEqual(crowded.tokens.get("target/0"), alone, "whatever shares the steps");
  assert.ok(deviceStats(crowded.stats).numStepsWithLogits > 0, "some steps copied logits too");

  // The reference: dl_sample called directly on each position's logits.
  const ids = [...target.promptIds, ...alone];
  const logits = logitsOf(ids).subarray((target.promptIds.length - 1) * VOCAB);
  const rows = alone.map((_, i) => ({ ...sampling, seed: 1234n, counter: BigInt(i) }));
  const expected = withDeviceBuffers(
    backend,
    (s) => sampleOn(s, logits.slice(0, alone.length * VOCAB), rows, VOCAB),
  );
  assert.deepEqual(alone, [...expected]);
  // Host sampling of the same request is a different, seeded stream.
  const host = run([target], "host").tokens.get("target/0")!;
  assert.deepEqual(run([target], "host").tokens.get("target/0"), host);
  console.log(`  ${alone.filter((t, i) => t !== host[i]).length}/48 tokens differ from the host's`);
});

Deno.test("device sampling: first tokens of 1500 seeds follow softmax(top-k / temperature)", () => {
  const prompt = loaded.tokenizer.encode("Once upon a time there was a little");
  const temperature = 1.3;
  const topK = 12;
  const n = 1500;
  const jobs = Array.from({ length: n }, (_, i) => ({
    id: `s${i}`,
    promptIds: prompt,
    params: { maxTokens: 1, sampling: { temperature, topK, topP: 1, minP: 0, seed: i } },
  }));
  const result = run(jobs, "device");
  assert.equal(deviceStats(result.stats).numTokens, n);
  const counts = new Map<number, number>();
  for (const outs of result.outputs.values()) {
    // A first token that is EOS ends the sample with no token; it is a draw all the same.
    const token = outs[0].newTokenIds[0] ?? loaded.tokenizer.eosIds[0];
    counts.set(token, (counts.get(token) ?? 0) + 1);
  }
  const row = logitsOf(prompt).subarray((prompt.length - 1) * VOCAB, prompt.length * VOCAB);
  const top = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b).slice(0, topK);
  const weights = top.map((id) => Math.exp((row[id] - row[top[0]]) / temperature));
  const sum = weights.reduce((a, b) => a + b, 0);
  for (const id of counts.keys()) assert.ok(top.includes(id), `token ${id} is outside the top-k`);
  top.forEach((id, j) => {
    const p = weights[j] / sum;
    const sigma = Math.sqrt(n * p * (1 - p));
    const seen = counts.get(id) ?? 0;
    assert.ok(
      Math.abs(seen - n * p) <= 5 * sigma + 1,
      `token ${id}: drawn ${seen} times, expected ${(n * p).toFixed(1)}`,
    );
  });
  console.log(`  ${counts.size} of the top ${topK} drawn, each within 5 sigma of n p`);
});

Deno.test("device sampling: requests that need logits sample on the host", async (t) => {
  const prompt = loaded.tokenizer.encode("Once upon a time");
  const sampling = { temperature: 0.8, topK: 0, topP: 1, minP: 0, seed: 77 };
  const needsLogits: Record<string, Partial<RequestParams>> = {
    logprobs: { logprobs: 2 },
    "presence penalty": { sampling: { ...sampling, presencePenalty: 0.5 } },
    "frequency penalty": { sampling: { ...sampling, frequencyPenalty: 0.5 } },
    "repetition penalty": { sampling: { ...sampling, repetitionPenalty: 1.3 } },
    "logit bias": { sampling: { ...sampling, logitBias: { 5: 3 } } },
  };
  for (const [label, extra] of Object.entries(needsLogits)) {
    await t.step(label, () => {
      const job = { id: "x", promptIds: prompt, params: { maxTokens: 12, sampling, ...extra } };
      const device = run([job], "device");
      const host = run([job], "host");
      assert.deepEqual(device.tokens, host.tokens, "the host sampler's seeded stream");
      assert.equal(deviceStats(device.stats).numTokens, 0);
      assert.equal(deviceStats(device.stats).numSteps, 0);
      const logprobs = (r: typeof device) => r.outputs.get("x/0")!.flatMap((o) => o.logprobs ?? []);
      assert.deepEqual(logprobs(device), logprobs(host));
      assert.equal(logprobs(device).length, extra.logprobs === undefined ? 0 : 12);
    });
  }
  await t.step("prompt logprobs: those rows' logits come back, the tokens from the device", () => {
    const job = {
      id: "x",
      promptIds: prompt,
      params: { maxTokens: 12, sampling, promptLogprobs: 2 },
    };
    const device = run([job], "device");
    const host = run([job], "host");
    const promptLogprobs = (r: typeof device) => r.outputs.get("x/0")![0].promptLogprobs;
    assert.equal(promptLogprobs(device)?.length, prompt.length - 1);
    assert.deepEqual(promptLogprobs(device), promptLogprobs(host));
    const stats = deviceStats(device.stats);
    assert.equal(stats.numTokens, device.outputs.get("x/0")!.at(-1)!.numOutputTokens);
    assert.equal(stats.numStepsWithLogits, 1, "the prompt's step");
  });
  await t.step("temperatures dl_sample's f32 cannot take: on the host", () => {
    for (const temperature of [1e-39, 1e39]) {
      const job = {
        id: "x",
        promptIds: prompt,
        params: { maxTokens: 6, sampling: { ...sampling, temperature }, ignoreEos: true },
      };
      const device = run([job], "device");
      assert.deepEqual(device.tokens, run([job], "host").tokens, `temperature ${temperature}`);
      assert.equal(deviceStats(device.stats).numTokens, 0, `temperature ${temperature}`);
    }
  });
  await t.step("min_tokens: on the host until min_tokens, then on the device", () => {
    const job = { id: "x", promptIds: prompt, params: { maxTokens: 12, sampling, minTokens: 5 } };
    const device = run([job], "device");
    const out = device.outputs.get("x/0")!.at(-1)!;
    assert.equal(deviceStats(device.stats).numTokens, out.numOutputTokens - 5);
  });
  await t.step("n = 2: the shared first row on the host, then each on the device", () => {
    const job = {
      id: "x",
      promptIds: prompt,
      params: { maxTokens: 8, sampling, n: 2, ignoreEos: true },
    };
    const device = run([job], "device");
    assert.equal(totalTokens(device.tokens), 16);
    assert.equal(deviceStats(device.stats).numTokens, 14);
  });
  await t.step("speculative verification on the host, the other steps on the device", () => {
    // A story told twice: n-gram lookup finds the second telling in the first.
    const story = loaded.tokenizer.encode(
      "Once upon a time there was a little girl named Lily. She liked to play outside.",
    );
    const jobs = [0, 1, 2].map((i) => ({
      id: `g${i}`,
      promptIds: [...story, ...story.slice(0, 4 + i)],
      params: { maxTokens: 24, sampling: GREEDY, ignoreEos: true },
    }));
    const spec = run(jobs, "device", {
      speculative: { model: "ngram", numSpeculativeTokens: 3, disableBySize: 8 },
    });
    assert.deepEqual(spec.tokens, run(jobs, "host").tokens);
    assert.ok((spec.stats.specDecode?.numDrafts ?? 0) > 0, "some steps verified proposals");
    const numTokens = deviceStats(spec.stats).numTokens;
    assert.ok(numTokens > 0 && numTokens < totalTokens(spec.tokens), `${numTokens} on the device`);
  });
  await t.step("an embedding request beside generation: its pooled rows, their ids", () => {
    const jobs = [
      { id: "e", promptIds: prompt, params: { maxTokens: 0, sampling: GREEDY, pooling: "mean" } },
      { id: "g", promptIds: prompt, params: { maxTokens: 8, sampling: GREEDY, ignoreEos: true } },
    ] satisfies Job[];
    const device = run(jobs, "device");
    const host = run(jobs, "host");
    assert.deepEqual(device.tokens, host.tokens);
    const embedding = (r: typeof device) => r.outputs.get("e/0")!.at(-1)!.embedding;
    assert.ok(embedding(device) !== undefined);
    assert.deepEqual(embedding(device), embedding(host));
    assert.equal(deviceStats(device.stats).numTokens, 8);
  });
  await t.step("a logprobs request beside a plain one: each where it must be", () => {
    const plain = { id: "p", promptIds: prompt, params: { maxTokens: 10, sampling: GREEDY } };
    const withLogprobs = {
      id: "l",
      promptIds: prompt,
      params: { maxTokens: 10, sampling: GREEDY, logprobs: 1, ignoreEos: true },
    };
    const device = run([plain, withLogprobs], "device");
    const host = run([plain, withLogprobs], "host");
    assert.deepEqual(device.tokens, host.tokens);
    const stats = deviceStats(device.stats);
    assert.equal(stats.numTokens, device.tokens.get("p/0")!.length);
    assert.ok(stats.numStepsWithLogits > 0);
    const logprobs = device.outputs.get("l/0")!.flatMap((o) => o.logprobs ?? []);
    assert.equal(logprobs.length, 10);
  });
});

Deno.test("--sampling-device: auto is the host on the CPU build; device needs an executor for it", () => {
  assert.equal(
    run([{ id: "a", promptIds: [1, 2], params: { maxTokens: 2, sampling: GREEDY } }], "auto")
      .stats.deviceSampling,
    undefined,
  );
  const logitsOnly: Executor = {
    vocabSize: VOCAB,
    numKvBlocks: 8,
    blockSize: 4,
    capacity: {
      maxNumTokens: 16,
      maxNumSeqs: 2,
      maxNumLogitRows: 2,
      maxBlocksPerSeq: 4,
      blockSize: 4,
    },
    reservedBytes: 0,
    hiddenSize: 1,
    execute: () => new Float32Array(VOCAB),
    hiddenRows: () => new Float32Array(0),
    release: () => {},
  };
  const config = { maxNumBatchedTokens: 16, maxNumSeqs: 2, maxModelLen: 16 };
  assert.throws(
    () =>
      new LLMEngine({ executor: logitsOnly, tokenizer: loaded.tokenizer }, {
        ...config,
        samplingDevice: "device",
      }),
    /--sampling-device device needs an executor that samples on its device/,
  );
  const auto = new LLMEngine({ executor: logitsOnly, tokenizer: loaded.tokenizer }, config);
  assert.equal(auto.stats().deviceSampling, undefined);
});

Deno.test("/metrics counts the steps and tokens sampled on the device", () => {
  const jobs = randomJobs(4, 1, () => ({ maxTokens: 6, sampling: GREEDY, ignoreEos: true }));
  jobs.push({ ...jobs[0], id: "lp", params: { ...jobs[0].params, logprobs: 0 } });
  const { stats } = run(jobs, "device");
  const device = deviceStats(stats);
  const metrics = new Metrics();
  metrics.updateFromEngine(stats);
  const lines = metrics.render().split("\n");
  for (
    const line of [
      `denollm_device_sampling_steps_total ${device.numSteps}`,
      `denollm_device_sampling_steps_with_logits_total ${device.numStepsWithLogits}`,
      `denollm_device_sampled_tokens_total ${device.numTokens}`,
    ]
  ) {
    assert.ok(lines.includes(line), line);
  }
  assert.equal(device.numTokens, 24, "the logprobs request's 6 tokens came from the host");
  assert.equal(device.numStepsWithLogits, device.numSteps);
});
