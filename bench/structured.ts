// Benchmark (not a test): what constrained decoding costs. Decode tok/s of streams that must
// follow a JSON schema against the same streams unconstrained, at batch 1 and 16 concurrent
// streams, through the engine worker (`AsyncEngine`, where masks are prefetched between steps);
// then the cost of one mask on its own, in this thread.
//
//   deno task bench:structured [--model PATH] [--threads 1] [--tokens 128] [--runs 3]
//
// Unconstrained streams ignore EOS and run --tokens tokens; a constrained stream ends when its JSON
// does (printed: its median length). Goal: under 10% slower.
import { parseArgs } from "node:util";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import { GrammarCompiler, maskTiming } from "../src/engine/grammar.ts";
import type { RequestParams } from "../src/engine/request.ts";
import { openModelSource } from "../src/model/load.ts";
import { median } from "./common.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/models/stories260K/hf" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "128" },
    runs: { type: "string", default: "3" },
  },
});
const maxTokens = Number(v.tokens);
const numRuns = Number(v.runs);
const SCHEMA = JSON.stringify({
  type: "object",
  properties: { story: { type: "string" } },
  required: ["story"],
});

const engine = await AsyncEngine.start({
  modelPath: v.model,
  numThreads: Number(v.threads),
  kvCacheMemoryBytes: 64 << 20,
  maxModelLen: 1024,
  maxNumBatchedTokens: 512,
  maxNumSeqs: 16,
  enablePrefixCaching: false,
});

/** Decode tok/s of `numStreams` concurrent streams (from each one's first token to its last). */
async function run(
  numStreams: number,
  structured: boolean,
  round: number,
): Promise<{ tokPerS: number; tokensPerStream: number }> {
  const params: RequestParams = {
    maxTokens,
    sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, seed: round },
    ignoreEos: !structured,
    ...(structured ? { structured: { type: "json_schema", schema: SCHEMA } } : {}),
  };
  const started = performance.now();
  let firstAt = Infinity;
  let numTokens = 0;
  await Promise.all(Array.from({ length: numStreams }, async (_, i) => {
    const prompt = [1, 10 + i, 20 + round, 30];
    for await (const out of engine.generate(`r${round}-${structured}-${i}`, prompt, params)) {
      if (out.newTokenIds.length > 0 && firstAt === Infinity) firstAt = performance.now();
      numTokens += out.newTokenIds.length;
    }
  }));
  const decodeMs = performance.now() - Math.max(started, firstAt);
  return {
    tokPerS: (numTokens - numStreams) / (decodeMs / 1000),
    tokensPerStream: numTokens / numStreams,
  };
}

console.log(`model ${v.model}, ${maxTokens} tokens per stream, ${numRuns} runs, medians`);
console.log(`load average before: ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
await run(1, true, -1); // compiles the tokenizer info and the schema once
for (const numStreams of [1, 16]) {
  const plain: number[] = [];
  const constrained: number[] = [];
  const lengths: number[] = [];
  for (let r = 0; r < numRuns; r++) {
    plain.push((await run(numStreams, false, r)).tokPerS);
    const c = await run(numStreams, true, r);
    constrained.push(c.tokPerS);
    lengths.push(c.tokensPerStream);
  }
  const a = median(plain);
  const b = median(constrained);
  // A constrained stream may close its string early; its length says how comparable it is.
  console.log(
    `batch ${String(numStreams).padStart(2)}: unconstrained ${a.toFixed(0)} tok/s, ` +
      `json_schema ${b.toFixed(0)} tok/s (${((b / a - 1) * 100).toFixed(1)}%), ` +
      `constrained streams ${median(lengths).toFixed(0)} of ${maxTokens} tokens`,
  );
}
await engine.shutdown();

// One mask on its own: a random walk through the schema, timing the synchronous path.
const source = await openModelSource(v.model);
const compiler = new GrammarCompiler(source.tokenizer, source.tokenizer.vocabSize);
let t = performance.now();
const [grammar] = await compiler.matchers({ type: "json_schema", schema: SCHEMA }, 1);
const compileMs = performance.now() - t;
const times: number[] = [];
for (let step = 0; step < 200 && !grammar.isTerminated; step++) {
  // Let the prefetch lose the race, so that mask() computes synchronously.
  t = performance.now();
  const before = maskTiming.totalMs;
  const mask = grammar.mask();
  times.push(maskTiming.totalMs - before || performance.now() - t);
  const allowed: number[] = [];
  for (let id = 0; id < source.tokenizer.vocabSize; id++) {
    if ((mask[id >> 5] >>> (id & 31)) & 1) allowed.push(id);
  }
  grammar.accept(allowed[(step * 7919) % allowed.length]);
}
grammar.dispose();
console.log(
  `vocab ${source.tokenizer.vocabSize}: first compile ${compileMs.toFixed(1)} ms, ` +
    `mask median ${(median(times) * 1000).toFixed(0)} µs/step over ${times.length} steps`,
);
console.log(`load average after: ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
