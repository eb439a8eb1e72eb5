// Shared by the parallel tests: random GQA models whose head counts do and do not split evenly,
// and greedy runs of the serving engine (in-process `LLM`) with logprobs to compare ranks against.
import { LLM } from "../src/engine/llm.ts";
import type { EngineOptions } from "../src/engine/local_engine.ts";
import type { RankStats } from "../src/parallel/executor.ts";
import type { ParallelOptions } from "../src/parallel/plan.ts";
import { GREEDY } from "../src/sampling.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";

export const STORIES_260K = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;

/**
 * A random model of a tiny preset with its head counts, vocabulary, MLP width and depth replaced,
 * written as a real safetensors checkpoint (so shards are read from the file).
 */
export async function makeModel(
  dir: string,
  preset: "tiny-qwen2" | "tiny-llama-untied",
  shape: { heads: number; kvHeads: number; vocab: number; intermediate: number; layers: number },
): Promise<string> {
  const p = getPreset(preset);
  Object.assign(p.config, {
    num_attention_heads: shape.heads,
    num_key_value_heads: shape.kvHeads,
    vocab_size: shape.vocab,
    intermediate_size: shape.intermediate,
    num_hidden_layers: shape.layers,
  });
  await generateRandomModel(p, { outDir: dir, seed: 3, formats: ["hf"] });
  return dir;
}

/** A request's greedy tokens and, per token, the sampled and top-3 logprobs. */
export interface GreedyRun {
  tokens: number[][];
  logprobs: number[][][];
  /** Every rank's counters and reserved bytes at the end (parallel runs only). */
  stats: RankStats[] | null;
}

/** Prompts of varying lengths (chunked prefill and mixed batches), the same for every run. */
export function prompts(vocab: number, count: number): number[][] {
  let state = 12345;
  const next = () => (state = (state * 1103515245 + 12345) % 2 ** 31);
  return Array.from({ length: count }, (_, i) => {
    const length = 2 + ((i * 7) % 29);
    return Array.from({ length }, () => 1 + (next() % (vocab - 1)));
  });
}

/** Runs every prompt concurrently through one engine (16 sequences in flight) to the end. */
export async function greedyRun(
  modelPath: string,
  promptList: number[][],
  parallel?: ParallelOptions,
  extra: Partial<EngineOptions> = {},
): Promise<GreedyRun> {
  const llm = await LLM.load({
    modelPath,
    numKvBlocks: 128,
    blockSize: 8,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 96,
    numThreads: 1,
    parallel: parallel && { rankTimeoutMs: 30_000, ...parallel },
    ...extra,
  });
  try {
    const run: GreedyRun = {
      tokens: promptList.map(() => []),
      logprobs: promptList.map(() => []),
      stats: null,
    };
    promptList.forEach((ids, i) =>
      llm.engine.addRequest(`r${i}`, ids, {
        maxTokens: 10,
        sampling: GREEDY,
        logprobs: 3,
        ignoreEos: true,
      })
    );
    while (llm.engine.hasWork) {
      for (const out of llm.engine.step()) {
        const i = Number(out.requestId.slice(1));
        run.tokens[i].push(...out.newTokenIds);
        for (const lp of out.logprobs ?? []) {
          run.logprobs[i].push([lp.logprob, ...lp.top.map((t) => t.logprob)]);
        }
      }
    }
    run.stats = llm.local.rankStats?.() ?? null;
    return run;
  } finally {
    llm.release();
  }
}

/** The largest |a - b| over every logprob of two runs (which must have the same shape). */
export function maxLogprobDiff(a: GreedyRun, b: GreedyRun): number {
  let worst = 0;
  a.logprobs.forEach((req, i) =>
    req.forEach((tok, j) =>
      tok.forEach((v, k) => {
        worst = Math.max(worst, Math.abs(v - b.logprobs[i][j][k]));
      })
    )
  );
  return worst;
}
