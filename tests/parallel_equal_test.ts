// TP=2, TP=2 with sequence parallelism, PP=2 and TP=2×PP=2, with ranks as separate processes over
// Gloo, give one rank's greedy tokens and logprobs (within LOGPROB_TOLERANCE) through the serving
// engine with 16 concurrent requests: for stories260K and for random GQA models whose KV heads
// split unevenly (6 heads, 3 KV heads: 2 + 1 KV groups) or are fewer than the ranks (4 heads, 1
// KV head: replicated), with odd vocabularies, MLP widths and layer counts.
import assert from "node:assert/strict";
import type { RankStats } from "../src/parallel/executor.ts";
import type { ParallelOptions } from "../src/parallel/plan.ts";
import { greedyRun, makeModel, maxLogprobDiff, prompts, STORIES_260K } from "./parallel_helpers.ts";

/** Float sums in another order (partial matmuls, then the all-reduce): f32 rounding, no more. */
const LOGPROB_TOLERANCE = 1e-4;

const MODES: Record<string, ParallelOptions> = {
  "TP=2": { tensorParallelSize: 2, pipelineParallelSize: 1 },
  "TP=2+SP": { tensorParallelSize: 2, pipelineParallelSize: 1, sequenceParallel: true },
  "PP=2": { tensorParallelSize: 1, pipelineParallelSize: 2 },
  "TP=2×PP=2": { tensorParallelSize: 2, pipelineParallelSize: 2 },
};

async function checkModel(t: Deno.TestContext, modelPath: string, vocab: number, modes: string[]) {
  const list = prompts(vocab, 16);
  const reference = await greedyRun(modelPath, list);
  assert.ok(reference.tokens.every((ts) => ts.length === 10));
  const stats = new Map<string, RankStats[]>();
  for (const mode of modes) {
    await t.step(mode, async () => {
      const run = await greedyRun(modelPath, list, MODES[mode]);
      stats.set(mode, run.stats!);
      assert.deepEqual(run.tokens, reference.tokens);
      const diff = maxLogprobDiff(run, reference);
      assert.ok(diff <= LOGPROB_TOLERANCE, `logprobs differ by up to ${diff}`);
    });
  }
  const tp = stats.get("TP=2");
  const sp = stats.get("TP=2+SP");
  if (tp && sp) {
    await t.step("SP reserves the residual stream at its shard size", () => {
      // x shrinks to half the tokens' rows, h (the gathered rows) stays full: 2T -> 1.5T rows.
      for (let r = 0; r < 2; r++) {
        assert.equal(sp[r].residualBytes * 4, tp[r].residualBytes * 3);
        assert.equal(tp[r].reservedBytes - sp[r].reservedBytes, tp[r].residualBytes / 4);
      }
    });
  }
}

Deno.test("parallel: stories260K gives one rank's tokens in every mode", async (t) => {
  await checkModel(t, STORIES_260K, 512, Object.keys(MODES));
});

Deno.test("parallel: random GQA models with uneven and replicated KV heads", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "denollm-parallel-" });
  try {
    await t.step("6 heads, 3 KV heads (uneven split), bias, vocab 1001", async (t) => {
      const dir = await makeModel(`${root}/uneven`, "tiny-qwen2", {
        heads: 6,
        kvHeads: 3,
        vocab: 1001,
        intermediate: 161,
        layers: 3,
      });
      await checkModel(t, dir, 1001, Object.keys(MODES));
    });
    await t.step("4 heads, 1 KV head (replicated), untied, 3 layers", async (t) => {
      const dir = await makeModel(`${root}/mqa`, "tiny-llama-untied", {
        heads: 4,
        kvHeads: 1,
        vocab: 799,
        intermediate: 97,
        layers: 3,
      });
      await checkModel(t, dir, 799, Object.keys(MODES));
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
