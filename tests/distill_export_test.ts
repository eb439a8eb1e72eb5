// `denollm distill-export` on stories260K: the exported top-K ids and logprobs equal what the API
// returns for the same positions (echo + logprobs, prompt_logprobs, and one greedy token's
// logprobs for the last position), read back from the safetensors file as a trainer would.
import assert from "node:assert/strict";
import { makeApi, MODEL, postJson, startEngine } from "./api_helpers.ts";
import { readExport } from "./distill_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const TOP_K = 5;
/**
 * The export and the API run the same engine and arithmetic; the export stores f32 where the API
 * sends the double it computed, so they differ by f32 rounding (~1e-7 relative). Batch
 * composition does not change the logits (the batch-invariance tests), so this bound is loose.
 */
const TOLERANCE = 1e-5;

const TEXTS = [
  "Once upon a time, there was a little girl named Lily. She loved to play outside.",
  "The dog ran to the park",
  "Tom and Sam went to the big tree. They saw a bird!",
  "Hi",
];

Deno.test("distill-export: top-K logprobs equal the API's for every position", async () => {
  const dir = await Deno.makeTempDir({ prefix: "denollm_distill_" });
  const engine = await startEngine();
  try {
    const input = `${dir}/texts.jsonl`;
    await Deno.writeTextFile(input, TEXTS.map((text) => JSON.stringify({ text })).join("\n"));
    const out = `${dir}/teacher.safetensors`;
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        "--allow-ffi",
        MAIN,
        "distill-export",
        "--model",
        MODEL,
        "--input",
        input,
        "--top-k",
        String(TOP_K),
        "--out",
        out,
        "--threads",
        "1",
        "--kv-cache-memory",
        "8M",
        "--max-model-len",
        "512",
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    const { metadata, tensors } = await readExport(out);
    assert.equal(metadata.top_k, String(TOP_K));
    assert.equal(metadata.num_texts, String(TEXTS.length));
    assert.deepEqual(JSON.parse(metadata.ids), ["1", "2", "3", "4"]);

    const { app } = await makeApi(engine);
    let maxDiff = 0;
    const near = (a: number, b: number, what: string) => {
      maxDiff = Math.max(maxDiff, Math.abs(a - b));
      assert.ok(Math.abs(a - b) <= TOLERANCE, `${what}: ${a} vs ${b}`);
    };
    for (const [i, text] of TEXTS.entries()) {
      const ids = tensors.get(`t${i}.token_ids`)!;
      const topIds = tensors.get(`t${i}.topk_ids`)!;
      const topLogprobs = tensors.get(`t${i}.topk_logprobs`)!;
      const n = ids.shape[0];
      assert.deepEqual([ids.dtype, topIds.dtype, topLogprobs.dtype], ["I32", "I32", "F32"]);
      assert.deepEqual(topIds.shape, [n, TOP_K]);
      assert.deepEqual(topLogprobs.shape, [n, TOP_K]);
      assert.equal(JSON.parse(metadata.num_tokens)[i], n);

      const echoed = await postJson(app, "/v1/completions", {
        prompt: text,
        echo: true,
        logprobs: TOP_K,
        max_tokens: 0,
        prompt_logprobs: TOP_K,
      });
      const choice = echoed.choices[0];
      assert.equal(echoed.usage.prompt_tokens, n);
      assert.equal(choice.logprobs.top_logprobs[0], null);
      for (let p = 1; p < n; p++) {
        // Row p - 1 predicts token p. prompt_logprobs names ids: the top K by rank.
        const byId = choice.prompt_logprobs[p] as Record<string, { logprob: number; rank: number }>;
        assert.ok(String(ids.data[p]) in byId, `token ${p} of text ${i} is the API's`);
        const top = Object.entries(byId).filter(([, e]) => e.rank <= TOP_K)
          .sort((a, b) => a[1].rank - b[1].rank);
        assert.equal(top.length, TOP_K);
        top.forEach(([id, e], k) => {
          assert.equal(topIds.data[(p - 1) * TOP_K + k], Number(id), `text ${i} row ${p - 1}`);
          near(topLogprobs.data[(p - 1) * TOP_K + k], e.logprob, `text ${i} row ${p - 1}`);
        });
        // echo's top_logprobs (keyed by text) carry the same numbers, plus the token's own.
        const row = Array.from(topLogprobs.data.subarray((p - 1) * TOP_K, p * TOP_K));
        const echoTop = choice.logprobs.top_logprobs[p] as Record<string, number>;
        for (const [key, logprob] of Object.entries(echoTop)) {
          if (key === choice.logprobs.tokens[p]) continue;
          const closest = row.reduce((a, b) =>
            Math.abs(b - logprob) < Math.abs(a - logprob) ? b : a
          );
          near(closest, logprob, `echo, text ${i} row ${p - 1}`);
        }
      }
      // The last row: the distribution after the whole text, as a greedy token's logprobs.
      const next = await postJson(app, "/v1/completions", {
        prompt: text,
        max_tokens: 1,
        temperature: 0,
        ignore_eos: true,
        logprobs: TOP_K,
      });
      const last = Object.values(next.choices[0].logprobs.top_logprobs[0] as number[])
        .sort((a, b) => b - a);
      last.forEach((logprob, k) => near(topLogprobs.data[(n - 1) * TOP_K + k], logprob, "last"));
    }
    console.log(`largest difference from the API: ${maxDiff.toExponential(2)}`);
  } finally {
    await engine.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
