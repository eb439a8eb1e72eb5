// Quantized GGUF checkpoints under tensor parallelism: shard-on-read cuts Q8_0 rows and, for the
// row-parallel layers, columns on block boundaries, and TP=2 gives one rank's greedy tokens; a cut
// inside a block fails the start with the tensor, the format and the block length named.
import assert from "node:assert/strict";
import type { ParallelOptions } from "../src/parallel/plan.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel } from "../tools/random_model/random_model.ts";
import { greedyRun, maxLogprobDiff, prompts } from "./parallel_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TP2: ParallelOptions = { tensorParallelSize: 2, pipelineParallelSize: 1 };
/** Both runs read the same Q8_0 blocks; only the order of the partial sums differs. */
const LOGPROB_TOLERANCE = 1e-3;

/** A random tiny-llama GGUF with the given heads, quantized to Q8_0 by `deno task quantize`. */
async function q8Model(dir: string, heads: number, kvHeads: number): Promise<string> {
  const p = getPreset("tiny-llama-untied");
  Object.assign(p.config, {
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    intermediate_size: 128,
    vocab_size: 512,
    num_hidden_layers: 2,
  });
  const model = await generateRandomModel(p, { outDir: dir, seed: 5, formats: ["gguf"] });
  const out = `${dir}/q8_0.gguf`;
  const run = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-ffi",
      "tools/quantize.ts",
      model.ggufPath!,
      out,
      "--type",
      "q8_0",
      "--pure",
      "--threads",
      "1",
    ],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(run.success, new TextDecoder().decode(run.stderr));
  return out;
}

Deno.test("parallel: Q8_0 GGUF shards on block boundaries", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "denollm-parallel-q8-" });
  try {
    await t.step(
      "4 heads of 16 (32-column cuts), MLP 128: TP=2 gives one rank's tokens",
      async () => {
        const path = await q8Model(`${root}/aligned`, 4, 2);
        const list = prompts(512, 16);
        const reference = await greedyRun(path, list);
        assert.ok(reference.tokens.every((ts) => ts.length === 10));
        const run = await greedyRun(path, list, TP2);
        assert.deepEqual(run.tokens, reference.tokens);
        const diff = maxLogprobDiff(run, reference);
        assert.ok(diff <= LOGPROB_TOLERANCE, `logprobs differ by up to ${diff}`);
      },
    );
    await t.step("6 heads of 16 (a 48-column cut): a clear start-up error", async () => {
      const path = await q8Model(`${root}/unaligned`, 6, 2);
      await assert.rejects(
        () => greedyRun(path, [[1, 2, 3]], TP2),
        /tensor \S*(attn_output|o_proj)\S* \(Q8_0\) cannot be split for tensor parallelism: a cut at column 48 is not on a 32-element Q8_0 block boundary/,
      );
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
