// vLLM's sampling extras through the HTTP API on stories260K, on both generation routes:
// min_tokens, include_stop_str_in_output, truncate_prompt_tokens and best_of.
import assert from "node:assert/strict";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import { expectError, makeApi, post, postJson, startEngine } from "./api_helpers.ts";

const PROMPT = "Once upon a time";

Deno.test("sampling fields", async (t) => {
  const engine = await startEngine();
  try {
    await samplingFields(t, engine);
  } finally {
    await engine.shutdown();
  }
});

async function samplingFields(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, deps } = await makeApi(engine);
  const tokenizer = deps.tokenizer;
  // A bias that makes </s> the greedy choice at once.
  const eos = tokenizer.eosIds[0];
  const toEos = { logit_bias: { [eos]: 100 }, temperature: 0 };
  const chat = { messages: [{ role: "user", content: "Hi" }] };
  const greedy = { prompt: PROMPT, max_tokens: 16, temperature: 0, ignore_eos: true };
  const reference = (await postJson(app, "/v1/completions", greedy)).choices[0].text as string;
  // A word of the reference output after its first few characters, as a stop string.
  const stop = reference.slice(reference.indexOf(" ", 3), reference.indexOf(" ", 3) + 4);
  assert.ok(stop.length === 4 && reference.indexOf(stop) > 0, JSON.stringify(reference));

  await t.step("min_tokens: no EOS before it, on both routes", async () => {
    const early = await postJson(app, "/v1/completions", { prompt: PROMPT, ...toEos });
    assert.equal(early.usage.completion_tokens, 1);
    for (
      const [path, body] of [["/v1/completions", { prompt: PROMPT }], [
        "/v1/chat/completions",
        chat,
      ]] as const
    ) {
      const res = await postJson(app, path, { ...body, ...toEos, min_tokens: 5, max_tokens: 10 });
      const choice = res.choices[0];
      assert.equal(choice.finish_reason, "stop");
      // 5 generated tokens, then the stop token that is counted but not shown.
      assert.equal(res.usage.completion_tokens, 6);
      assert.ok((choice.text ?? choice.message.content).length > 0);
    }
  });

  await t.step("min_tokens: no stop string ends the output before it", async () => {
    const cut = await postJson(app, "/v1/completions", { ...greedy, stop });
    assert.equal(cut.choices[0].text, reference.slice(0, reference.indexOf(stop)));
    const numMin = cut.usage.completion_tokens + 4;
    const kept = await postJson(app, "/v1/completions", { ...greedy, stop, min_tokens: numMin });
    assert.ok(kept.usage.completion_tokens >= numMin, JSON.stringify(kept.usage));
    assert.ok(kept.choices[0].text.startsWith(reference.slice(0, reference.indexOf(stop) + 4)));
    const chatRes = await postJson(app, "/v1/chat/completions", {
      ...chat,
      max_tokens: 8,
      min_tokens: 8,
      ignore_eos: true,
      stop: [" ", "."],
      temperature: 0,
    });
    assert.equal(chatRes.usage.completion_tokens, 8);
  });

  await t.step("min_tokens above max_tokens is a 400", async () => {
    for (
      const [path, body] of [["/v1/completions", { prompt: PROMPT }], [
        "/v1/chat/completions",
        chat,
      ]] as const
    ) {
      const error = await expectError(
        post(app, path, { ...body, max_tokens: 3, min_tokens: 4 }),
        400,
      );
      assert.equal(error.param, "min_tokens");
      const negative = await expectError(post(app, path, { ...body, min_tokens: -1 }), 400);
      assert.equal(negative.param, "min_tokens");
    }
  });

  await t.step("include_stop_str_in_output keeps the stop string", async () => {
    const res = await postJson(app, "/v1/completions", {
      ...greedy,
      stop,
      include_stop_str_in_output: true,
    });
    assert.equal(res.choices[0].text, reference.slice(0, reference.indexOf(stop) + stop.length));
    assert.equal(res.choices[0].finish_reason, "stop");
    const chatRef = await postJson(app, "/v1/chat/completions", {
      ...chat,
      max_tokens: 16,
      temperature: 0,
      ignore_eos: true,
    });
    const content = chatRef.choices[0].message.content as string;
    const chatStop = content.slice(2, 5);
    const chatRes = await postJson(app, "/v1/chat/completions", {
      ...chat,
      max_tokens: 16,
      temperature: 0,
      ignore_eos: true,
      stop: chatStop,
      include_stop_str_in_output: true,
    });
    assert.equal(
      chatRes.choices[0].message.content,
      content.slice(0, content.indexOf(chatStop) + 3),
    );
    const streamed = await post(app, "/v1/completions", {
      ...greedy,
      stop,
      include_stop_str_in_output: true,
      stream: true,
    });
    const text = (await streamed.text()).split("\n\n").filter((b) => b.startsWith("data: {"))
      .map((b) => JSON.parse(b.slice(6)).choices[0]?.text ?? "").join("");
    assert.equal(text, res.choices[0].text);
  });

  await t.step("truncate_prompt_tokens keeps the last N prompt tokens", async () => {
    const ids = tokenizer.encode("Once upon a time there was a little girl");
    const tail = ids.slice(-3);
    const direct = await postJson(app, "/v1/completions", {
      ...greedy,
      prompt: tail,
      max_tokens: 6,
    });
    const truncated = await postJson(app, "/v1/completions", {
      ...greedy,
      prompt: tokenizer.decode(ids, { skipSpecial: true }),
      max_tokens: 6,
      truncate_prompt_tokens: 3,
      echo: true,
    });
    assert.equal(truncated.usage.prompt_tokens, 3);
    const echoed = tokenizer.decode(tail, { skipSpecial: true });
    assert.equal(truncated.choices[0].text, echoed + direct.choices[0].text);
    const longer = await postJson(app, "/v1/completions", {
      ...greedy,
      prompt: tail,
      truncate_prompt_tokens: 50,
      max_tokens: 2,
    });
    assert.equal(longer.usage.prompt_tokens, 3);
    const chatRes = await postJson(app, "/v1/chat/completions", {
      ...chat,
      max_tokens: 2,
      truncate_prompt_tokens: 4,
    });
    assert.equal(chatRes.usage.prompt_tokens, 4);
    for (
      const [path, body] of [["/v1/completions", { prompt: PROMPT }], [
        "/v1/chat/completions",
        chat,
      ]] as const
    ) {
      for (const bad of [0, -2, 1.5, 513]) {
        const error = await expectError(
          post(app, path, { ...body, truncate_prompt_tokens: bad }),
          400,
        );
        assert.equal(error.param, "truncate_prompt_tokens");
      }
    }
  });

  await t.step("best_of returns the n samples with the highest cumulative logprob", async () => {
    const sampled = { prompt: PROMPT, max_tokens: 6, temperature: 1, ignore_eos: true, seed: 11 };
    // The same seed gives the same samples: generate all 4 with their logprobs to rank them.
    const all = await postJson(app, "/v1/completions", { ...sampled, n: 4, logprobs: 0 });
    const sums = all.choices.map((c: { logprobs: { token_logprobs: number[] } }) =>
      c.logprobs.token_logprobs.reduce((a, b) => a + b, 0)
    );
    const order = [0, 1, 2, 3].sort((a, b) => sums[b] - sums[a] || a - b);
    const best = await postJson(app, "/v1/completions", { ...sampled, n: 2, best_of: 4 });
    assert.deepEqual(
      best.choices.map((c: { text: string; index: number; logprobs: unknown }) => [
        c.index,
        c.text,
        c.logprobs,
      ]),
      [[0, all.choices[order[0]].text, null], [1, all.choices[order[1]].text, null]],
    );
    assert.equal(best.usage.completion_tokens, 12);
    const withLogprobs = await postJson(app, "/v1/completions", {
      ...sampled,
      best_of: 4,
      logprobs: 0,
    });
    assert.deepEqual(withLogprobs.choices[0].logprobs, all.choices[order[0]].logprobs);
    // Chat: the same ranking, on the chat prompt.
    const chatSampled = { ...chat, max_tokens: 6, temperature: 1, ignore_eos: true, seed: 5 };
    const chatAll = await postJson(app, "/v1/chat/completions", {
      ...chatSampled,
      n: 3,
      logprobs: true,
    });
    const chatSums = chatAll.choices.map((c: { logprobs: { content: { logprob: number }[] } }) =>
      c.logprobs.content.reduce((a, b) => a + b.logprob, 0)
    );
    const top = [0, 1, 2].sort((a, b) => chatSums[b] - chatSums[a] || a - b)[0];
    const chatBest = await postJson(app, "/v1/chat/completions", { ...chatSampled, best_of: 3 });
    assert.equal(chatBest.choices.length, 1);
    assert.equal(chatBest.choices[0].message.content, chatAll.choices[top].message.content);
    assert.equal(chatBest.choices[0].logprobs, null);
  });

  await t.step("best_of below n, or above n with streaming, is a 400", async () => {
    for (
      const [path, body] of [["/v1/completions", { prompt: PROMPT }], [
        "/v1/chat/completions",
        chat,
      ]] as const
    ) {
      const below = await expectError(post(app, path, { ...body, n: 3, best_of: 2 }), 400);
      assert.equal(below.param, "best_of");
      const streamed = await expectError(
        post(app, path, { ...body, best_of: 2, stream: true }),
        400,
      );
      assert.equal(streamed.param, "best_of");
      // best_of equal to n streams as before.
      const res = await post(app, path, { ...body, n: 2, best_of: 2, stream: true, max_tokens: 2 });
      assert.equal(res.status, 200);
      await res.text();
    }
  });
}
