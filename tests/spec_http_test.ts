// Speculative decoding through the HTTP API: greedy completions (one, and 16 at once) are the
// same with n-gram speculation as without, /metrics shows vLLM's spec_decode counters, and the
// request log gives each request's acceptance.
import assert from "node:assert/strict";
import { Metrics } from "../src/api/mod.ts";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import type { EngineOptions } from "../src/engine/local_engine.ts";
import { makeApi, MODEL, postJson, type TestApi } from "./api_helpers.ts";

const OPTIONS: EngineOptions = {
  modelPath: MODEL,
  numThreads: 2,
  kvCacheMemoryBytes: 8 << 20,
  maxModelLen: 512,
  maxNumBatchedTokens: 256,
  maxNumSeqs: 32,
};
// Repeats itself, so n-gram lookup has something to propose.
const PROMPT = "Once upon a time, there was a little girl named Lily. She liked to play. " +
  "Once upon a time, there was a little girl named Lily. She";

async function completions(api: TestApi, prompts: string[]) {
  return await Promise.all(prompts.map((prompt) =>
    postJson(api.app, "/v1/completions", {
      model: "stories260K",
      prompt,
      max_tokens: 48,
      temperature: 0,
    })
  ));
}

Deno.test("greedy completions over HTTP are the same with n-gram speculation", async () => {
  const plainEngine = await AsyncEngine.start(OPTIONS);
  const specEngine = await AsyncEngine.start({
    ...OPTIONS,
    speculative: { model: "ngram", numSpeculativeTokens: 4, disableBySize: 32 },
  });
  try {
    const plain = await makeApi(plainEngine);
    const requestLines: Record<string, unknown>[] = [];
    const spec = await makeApi(specEngine, {
      metrics: new Metrics({ names: "vllm", modelName: "stories260K" }),
      requestLog: (_level, fields) => requestLines.push({ ...fields }),
    });
    const prompts = Array.from({ length: 16 }, (_, i) => i === 0 ? PROMPT : `${PROMPT} ${i}`);
    for (const batch of [[PROMPT], prompts]) {
      const a = await completions(plain, batch);
      const b = await completions(spec, batch);
      for (const [i, body] of a.entries()) {
        assert.equal(b[i].choices[0].text, body.choices[0].text, `prompt ${i}`);
        assert.equal(b[i].choices[0].finish_reason, body.choices[0].finish_reason);
        assert.deepEqual(b[i].usage, body.usage);
      }
    }
    const metrics = await (await spec.app.request("/metrics")).text();
    const value = (name: string) => {
      const line = metrics.split("\n").find((l) => l.startsWith(name));
      assert.ok(line !== undefined, `${name} in /metrics`);
      return Number(line.split(" ").pop());
    };
    const drafts = value("vllm:spec_decode_num_drafts_total{");
    const draftTokens = value("vllm:spec_decode_num_draft_tokens_total{");
    const accepted = value("vllm:spec_decode_num_accepted_tokens_total{");
    const first = value(
      'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="stories260K",position="0"}',
    );
    assert.ok(drafts > 0 && draftTokens >= drafts && accepted > 0 && accepted <= draftTokens);
    assert.ok(first > 0 && first <= accepted);
    const logged = requestLines.filter((l) => l.route === "/v1/completions");
    assert.equal(logged.length, 17);
    assert.ok(logged.some((l) => typeof l.spec_acceptance === "number" && l.spec_acceptance > 0));
    for (const l of logged) {
      if (l.spec_acceptance === undefined) continue;
      assert.ok((l.spec_draft_tokens as number) > 0);
      assert.ok((l.spec_acceptance as number) >= 0 && (l.spec_acceptance as number) <= 1);
    }
  } finally {
    await plainEngine.shutdown();
    await specEngine.shutdown();
  }
});
