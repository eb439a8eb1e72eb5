// /v1/completions against the real engine on stories260K: shapes, sampling parameters, n > 1,
// multiple and token-id prompts, echo, stop, logprobs, streaming and include_usage.
import assert from "node:assert/strict";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import {
  makeApi,
  post,
  postJson,
  readSse,
  SERVED_NAME,
  startEngine,
  waitFor,
} from "./api_helpers.ts";

const PROMPT = "Once upon a time";

Deno.test("/v1/completions", async (t) => {
  const engine = await startEngine();
  try {
    await completions(t, engine);
  } finally {
    await engine.shutdown();
  }
});

async function completions(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, deps, inflight } = await makeApi(engine);
  const greedy = { model: SERVED_NAME, prompt: PROMPT, max_tokens: 12, temperature: 0 };
  const reference = await postJson(app, "/v1/completions", { ...greedy, ignore_eos: true });

  await t.step("non-streaming shape and usage", async () => {
    const body = await postJson(app, "/v1/completions", { ...greedy, max_tokens: 5 });
    assert.deepEqual(Object.keys(body), ["id", "object", "created", "model", "choices", "usage"]);
    assert.match(body.id, /^cmpl-[0-9a-f]{32}$/);
    assert.equal(body.object, "text_completion");
    assert.equal(body.model, SERVED_NAME);
    assert.ok(Math.abs(body.created - Date.now() / 1000) < 60);
    assert.equal(body.choices.length, 1);
    const [choice] = body.choices;
    assert.deepEqual(Object.keys(choice), ["text", "index", "logprobs", "finish_reason"]);
    assert.equal(choice.index, 0);
    assert.equal(choice.logprobs, null);
    assert.equal(choice.finish_reason, "length");
    assert.ok(reference.choices[0].text.startsWith(choice.text));
    const promptTokens = deps.tokenizer.encode(PROMPT).length;
    assert.deepEqual(body.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: 5,
      total_tokens: promptTokens + 5,
    });
  });

  await t.step("greedy is deterministic; a seed makes sampling reproducible", async () => {
    const again = await postJson(app, "/v1/completions", { ...greedy, ignore_eos: true });
    assert.equal(again.choices[0].text, reference.choices[0].text);
    const sampled = { prompt: PROMPT, max_tokens: 12, temperature: 1.0, ignore_eos: true };
    const [a, b, c] = await Promise.all([
      postJson(app, "/v1/completions", { ...sampled, seed: 1234 }),
      postJson(app, "/v1/completions", { ...sampled, seed: 1234 }),
      postJson(app, "/v1/completions", { ...sampled, seed: 99, top_k: 50, top_p: 0.9 }),
    ]);
    assert.equal(a.choices[0].text, b.choices[0].text);
    assert.notEqual(a.choices[0].text, c.choices[0].text);
  });

  await t.step("n > 1: indexes 0..n-1, seeded samples differ and reproduce", async () => {
    const body = {
      prompt: PROMPT,
      max_tokens: 16,
      temperature: 1,
      seed: 7,
      n: 3,
      ignore_eos: true,
    };
    const [x, y] = await Promise.all([
      postJson(app, "/v1/completions", body),
      postJson(app, "/v1/completions", body),
    ]);
    assert.deepEqual(x.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
    assert.deepEqual(x.choices, y.choices);
    assert.equal(new Set(x.choices.map((c: { text: string }) => c.text)).size, 3);
    assert.equal(x.usage.completion_tokens, 48);
  });

  await t.step("several prompts: choice index = prompt × n + sample", async () => {
    const prompts = ["Once upon a time", "The little dog"];
    const body = await postJson(app, "/v1/completions", {
      prompt: prompts,
      n: 2,
      max_tokens: 4,
      echo: true,
      temperature: 0,
      ignore_eos: true,
    });
    assert.equal(body.choices.length, 4);
    for (const [i, choice] of body.choices.entries()) {
      assert.equal(choice.index, i);
      assert.ok(choice.text.startsWith(prompts[Math.floor(i / 2)]), choice.text);
    }
    assert.equal(body.choices[0].text, body.choices[1].text); // greedy
    const promptTokens = prompts.reduce((s, p) => s + deps.tokenizer.encode(p).length, 0);
    assert.equal(body.usage.prompt_tokens, promptTokens);
    assert.equal(body.usage.completion_tokens, 16);
  });

  await t.step("token id prompts, one or several", async () => {
    const ids = deps.tokenizer.encode(PROMPT);
    const one = await postJson(app, "/v1/completions", {
      ...greedy,
      prompt: ids,
      ignore_eos: true,
    });
    assert.equal(one.choices[0].text, reference.choices[0].text);
    const two = await postJson(app, "/v1/completions", {
      ...greedy,
      prompt: [ids, ids.slice(0, 3)],
      max_tokens: 3,
      echo: true,
    });
    assert.equal(two.choices.length, 2);
    assert.equal(two.choices[0].text.slice(0, PROMPT.length), PROMPT);
    assert.equal(two.usage.prompt_tokens, ids.length + 3);
  });

  await t.step("echo puts the prompt before the completion", async () => {
    const body = await postJson(app, "/v1/completions", {
      ...greedy,
      echo: true,
      ignore_eos: true,
    });
    assert.equal(body.choices[0].text, PROMPT + reference.choices[0].text);
  });

  await t.step("stop strings and stop token ids", async () => {
    const text: string = reference.choices[0].text;
    // A stop string from the middle of the greedy text: the output ends right before it.
    const stop = text.slice(6, 9);
    const cut = text.indexOf(stop);
    const body = await postJson(app, "/v1/completions", { ...greedy, stop: [stop, "zzzz"] });
    assert.equal(body.choices[0].text, text.slice(0, cut));
    assert.equal(body.choices[0].finish_reason, "stop");
    const single = await postJson(app, "/v1/completions", { ...greedy, stop });
    assert.equal(single.choices[0].text, text.slice(0, cut));
    // The greedy first token as a stop token: nothing is generated.
    const ids = deps.tokenizer.encode(PROMPT + text, { addSpecial: false });
    const first = ids[deps.tokenizer.encode(PROMPT, { addSpecial: false }).length];
    const stopped = await postJson(app, "/v1/completions", { ...greedy, stop_token_ids: [first] });
    assert.equal(stopped.choices[0].finish_reason, "stop");
    assert.equal(stopped.choices[0].text, "");
    // The stop token is counted, though its text is not shown.
    assert.equal(stopped.usage.completion_tokens, 1);
  });

  await t.step("logit_bias and penalties are applied", async () => {
    const ids = deps.tokenizer.encode(PROMPT + reference.choices[0].text, { addSpecial: false });
    const first = ids[deps.tokenizer.encode(PROMPT, { addSpecial: false }).length];
    const body = await postJson(app, "/v1/completions", {
      ...greedy,
      max_tokens: 1,
      logit_bias: { [first]: -100 },
      logprobs: 0,
    });
    assert.notEqual(deps.tokenizer.encode(body.choices[0].text, { addSpecial: false })[0], first);
    const penalized = await postJson(app, "/v1/completions", {
      ...greedy,
      ignore_eos: true,
      repetition_penalty: 1.5,
      presence_penalty: 1.5,
      frequency_penalty: 1,
      min_p: 0.05,
    });
    assert.equal(penalized.choices[0].finish_reason, "length");
  });

  await t.step("logprobs: tokens, token_logprobs, top_logprobs, text_offset", async () => {
    const body = await postJson(app, "/v1/completions", {
      ...greedy,
      ignore_eos: true,
      logprobs: 2,
    });
    const lp = body.choices[0].logprobs;
    assert.deepEqual(Object.keys(lp), ["tokens", "token_logprobs", "top_logprobs", "text_offset"]);
    assert.equal(lp.tokens.length, 12);
    assert.equal(lp.tokens.join(""), body.choices[0].text);
    let offset = 0;
    for (let i = 0; i < 12; i++) {
      assert.equal(lp.text_offset[i], offset);
      offset += lp.tokens[i].length;
      assert.ok(lp.token_logprobs[i] <= 0);
      const top = lp.top_logprobs[i];
      const entries = Object.entries(top) as [string, number][];
      assert.ok(entries.length >= 2 && entries.length <= 3);
      // Greedy: the sampled token is the most likely one.
      assert.equal(Math.max(...entries.map(([, v]) => v)), lp.token_logprobs[i]);
      assert.equal(top[lp.tokens[i]], lp.token_logprobs[i]);
    }
    // With echo the prompt tokens come first, with logprobs of their own but for the first.
    const echoed = await postJson(app, "/v1/completions", {
      ...greedy,
      max_tokens: 2,
      echo: true,
      logprobs: 1,
    });
    const elp = echoed.choices[0].logprobs;
    const numPrompt = deps.tokenizer.encode(PROMPT).length;
    assert.equal(elp.tokens.length, numPrompt + 2);
    assert.equal(elp.token_logprobs[0], null);
    for (let i = 1; i < numPrompt; i++) assert.equal(typeof elp.token_logprobs[i], "number");
    assert.equal(typeof elp.token_logprobs[numPrompt], "number");
  });

  await t.step("streaming: text_completion chunks, then [DONE]", async () => {
    const res = await post(app, "/v1/completions", { ...greedy, ignore_eos: true, stream: true });
    assert.equal(res.headers.get("cache-control"), "no-cache");
    const { events, isDone } = await readSse(res);
    assert.ok(isDone);
    assert.ok(events.length >= 2);
    const id = events[0].id;
    let text = "";
    for (const [i, event] of events.entries()) {
      assert.deepEqual(Object.keys(event), ["id", "object", "created", "model", "choices"]);
      assert.equal(event.id, id);
      assert.equal(event.object, "text_completion");
      assert.equal(event.choices.length, 1);
      const choice = event.choices[0];
      assert.deepEqual(Object.keys(choice), ["text", "index", "logprobs", "finish_reason"]);
      text += choice.text;
      assert.equal(choice.finish_reason, i === events.length - 1 ? "length" : null);
    }
    assert.equal(text, reference.choices[0].text);
  });

  await t.step("streaming with include_usage, echo and logprobs", async () => {
    const res = await post(app, "/v1/completions", {
      ...greedy,
      max_tokens: 6,
      ignore_eos: true,
      echo: true,
      logprobs: 1,
      stream: true,
      stream_options: { include_usage: true },
    });
    const { events, isDone } = await readSse(res);
    assert.ok(isDone);
    const last = events.at(-1);
    assert.deepEqual(last.choices, []);
    const numPrompt = deps.tokenizer.encode(PROMPT).length;
    assert.deepEqual(last.usage, {
      prompt_tokens: numPrompt,
      completion_tokens: 6,
      total_tokens: numPrompt + 6,
    });
    for (const event of events.slice(0, -1)) assert.equal(event.usage, null);
    assert.equal(events[0].choices[0].text, PROMPT);
    const text = events.slice(0, -1).map((e) => e.choices[0].text).join("");
    assert.equal(text, PROMPT + reference.choices[0].text.slice(0, text.length - PROMPT.length));
    const tokens = events.slice(1, -1).flatMap((e) => e.choices[0].logprobs.tokens);
    assert.equal(tokens.length, 6);
    const offsets = events.slice(0, -1).flatMap((e) => e.choices[0].logprobs.text_offset);
    assert.ok(offsets.every((o: number, i: number) => i === 0 || o >= offsets[i - 1]));
  });

  await t.step("streaming several prompts × n interleaves choices by index", async () => {
    const res = await post(app, "/v1/completions", {
      prompt: ["Once upon a time", "Lily"],
      n: 2,
      // Long enough that the second prompt's arrival, a step or two later, lands mid-stream.
      max_tokens: 40,
      temperature: 0.8,
      seed: 3,
      ignore_eos: true,
      stream: true,
    });
    const { events, isDone } = await readSse(res);
    assert.ok(isDone);
    const texts = ["", "", "", ""];
    const finishes = [0, 0, 0, 0];
    const order: number[] = [];
    for (const event of events) {
      const { index, text, finish_reason } = event.choices[0];
      texts[index] += text;
      order.push(index);
      if (finish_reason !== null) finishes[index]++;
    }
    assert.deepEqual(finishes, [1, 1, 1, 1]);
    // Interleaved: choice 3 shows up before choice 0 is done.
    const lastOf0 = order.lastIndexOf(0);
    assert.ok(order.indexOf(3) < lastOf0, `order ${order}`);
    const whole = await postJson(app, "/v1/completions", {
      prompt: ["Once upon a time", "Lily"],
      n: 2,
      // Long enough that the second prompt's arrival, a step or two later, lands mid-stream.
      max_tokens: 40,
      temperature: 0.8,
      seed: 3,
      ignore_eos: true,
    });
    assert.deepEqual(texts, whole.choices.map((c: { text: string }) => c.text));
  });

  await t.step("default max_tokens fills the context", async () => {
    const ids = Array.from({ length: 505 }, (_, i) => 20 + (i % 200));
    const body = await postJson(app, "/v1/completions", {
      prompt: ids,
      temperature: 0,
      ignore_eos: true,
    });
    assert.equal(body.usage.completion_tokens, 7);
    assert.equal(body.choices[0].finish_reason, "length");
  });

  await t.step("metrics were recorded", () => {
    const m = deps.metrics;
    assert.ok(m.generationTokens.get() > 100);
    assert.ok(m.promptTokens.get() > 20);
    assert.ok(m.requestsFinished.get({ finish_reason: "length" }) > 10);
    assert.ok(m.requestsFinished.get({ finish_reason: "stop" }) >= 3);
    assert.ok(m.timeToFirstToken.count() > 10);
    assert.ok(m.interTokenLatency.count() > 100);
  });

  await t.step("nothing left running", async () => {
    await waitFor(() => engine.stats.numRunning === 0 && inflight.count === 0);
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
  });
}
