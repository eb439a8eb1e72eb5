// /v1/chat/completions against the real engine on stories260K with a ChatML-ish template added:
// shapes, streaming with the role chunk, include_usage, logprobs, content parts, n > 1.
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

const MESSAGES = [
  { role: "system", content: "You tell stories." },
  { role: "user", content: "Once upon a time" },
];

Deno.test("/v1/chat/completions", async (t) => {
  const engine = await startEngine();
  try {
    await chat(t, engine);
  } finally {
    await engine.shutdown();
  }
});

async function chat(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, deps, inflight } = await makeApi(engine);
  const greedy = {
    model: SERVED_NAME,
    messages: MESSAGES,
    max_completion_tokens: 10,
    temperature: 0,
    ignore_eos: true,
  };
  const tokenized = await postJson(app, "/tokenize", { messages: MESSAGES });
  const numPrompt: number = tokenized.count;

  let reference = "";
  await t.step("non-streaming chat.completion", async () => {
    const body = await postJson(app, "/v1/chat/completions", greedy);
    assert.deepEqual(Object.keys(body), ["id", "object", "created", "model", "choices", "usage"]);
    assert.match(body.id, /^chatcmpl-[0-9a-f]{32}$/);
    assert.equal(body.object, "chat.completion");
    assert.equal(body.model, SERVED_NAME);
    const [choice] = body.choices;
    assert.deepEqual(Object.keys(choice), ["index", "message", "logprobs", "finish_reason"]);
    assert.equal(choice.index, 0);
    assert.equal(choice.message.role, "assistant");
    assert.equal(typeof choice.message.content, "string");
    assert.ok(choice.message.content.length > 0);
    assert.equal(choice.logprobs, null);
    assert.equal(choice.finish_reason, "length");
    assert.deepEqual(body.usage, {
      prompt_tokens: numPrompt,
      completion_tokens: 10,
      total_tokens: numPrompt + 10,
    });
    reference = choice.message.content;
    // The prompt is the rendered template: the same as a completion of the tokenized chat.
    const completion = await postJson(app, "/v1/completions", {
      prompt: tokenized.tokens,
      max_tokens: 10,
      temperature: 0,
      ignore_eos: true,
    });
    assert.equal(completion.choices[0].text, reference);
  });

  await t.step("max_tokens works too; max_completion_tokens wins", async () => {
    const { max_completion_tokens: _, ...rest } = greedy;
    const a = await postJson(app, "/v1/chat/completions", { ...rest, max_tokens: 3 });
    assert.equal(a.usage.completion_tokens, 3);
    const b = await postJson(app, "/v1/chat/completions", {
      ...rest,
      max_tokens: 3,
      max_completion_tokens: 5,
    });
    assert.equal(b.usage.completion_tokens, 5);
  });

  await t.step("content parts and the developer role", async () => {
    const body = await postJson(app, "/v1/chat/completions", {
      ...greedy,
      messages: [
        { role: "developer", content: [{ type: "text", text: "You tell stories." }] },
        {
          role: "user",
          content: [{ type: "text", text: "Once upon " }, { type: "text", text: "a time" }],
        },
      ],
    });
    assert.equal(body.choices[0].finish_reason, "length");
    const parts = await postJson(app, "/tokenize", {
      messages: [
        { role: "developer", content: "You tell stories." },
        { role: "user", content: "Once upon \na time" },
      ],
    });
    assert.equal(body.usage.prompt_tokens, parts.count);
  });

  await t.step("streaming: role chunk first, content deltas, finish, [DONE]", async () => {
    const res = await post(app, "/v1/chat/completions", { ...greedy, stream: true });
    const { events, isDone } = await readSse(res);
    assert.ok(isDone);
    const first = events[0];
    assert.deepEqual(Object.keys(first), ["id", "object", "created", "model", "choices"]);
    assert.equal(first.object, "chat.completion.chunk");
    assert.deepEqual(first.choices, [{
      index: 0,
      delta: { role: "assistant", content: "" },
      logprobs: null,
      finish_reason: null,
    }]);
    let content = "";
    for (const event of events.slice(1)) {
      assert.equal(event.id, first.id);
      assert.equal(event.object, "chat.completion.chunk");
      const [choice] = event.choices;
      assert.equal(choice.delta.role, undefined);
      content += choice.delta.content ?? "";
    }
    assert.equal(events.at(-1).choices[0].finish_reason, "length");
    assert.equal(content, reference);
  });

  await t.step("streaming with include_usage", async () => {
    const res = await post(app, "/v1/chat/completions", {
      ...greedy,
      max_completion_tokens: 4,
      stream: true,
      stream_options: { include_usage: true },
    });
    const { events } = await readSse(res);
    const last = events.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, {
      prompt_tokens: numPrompt,
      completion_tokens: 4,
      total_tokens: numPrompt + 4,
    });
    for (const event of events.slice(0, -1)) assert.equal(event.usage, null);
  });

  await t.step("logprobs with top_logprobs in chat's shape", async () => {
    const body = await postJson(app, "/v1/chat/completions", {
      ...greedy,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = body.choices[0].logprobs.content;
    assert.equal(content.length, 10);
    let text = "";
    for (const entry of content) {
      assert.deepEqual(Object.keys(entry), ["token", "logprob", "bytes", "top_logprobs"]);
      assert.equal(typeof entry.token, "string");
      assert.ok(entry.logprob <= 0);
      assert.deepEqual(new TextDecoder().decode(new Uint8Array(entry.bytes)), entry.token);
      assert.equal(entry.top_logprobs.length, 3);
      for (const top of entry.top_logprobs) {
        assert.deepEqual(Object.keys(top), ["token", "logprob", "bytes"]);
      }
      assert.equal(entry.top_logprobs[0].logprob, entry.logprob); // greedy
      text += entry.token;
    }
    assert.equal(text, body.choices[0].message.content);
    // Without top_logprobs: only the sampled tokens.
    const plain = await postJson(app, "/v1/chat/completions", {
      ...greedy,
      max_completion_tokens: 2,
      logprobs: true,
    });
    assert.deepEqual(plain.choices[0].logprobs.content[0].top_logprobs, []);
    // Streamed, the per-chunk entries add up to the same list.
    const res = await post(app, "/v1/chat/completions", {
      ...greedy,
      logprobs: true,
      top_logprobs: 3,
      stream: true,
    });
    const { events } = await readSse(res);
    const streamed = events.slice(1).flatMap((e) => e.choices[0].logprobs?.content ?? []);
    assert.deepEqual(streamed, content);
  });

  await t.step("n > 1 with a seed, streamed and not", async () => {
    const body = { messages: MESSAGES, max_tokens: 6, temperature: 1, seed: 11, n: 3 };
    const whole = await postJson(app, "/v1/chat/completions", { ...body, ignore_eos: true });
    assert.deepEqual(whole.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
    const res = await post(app, "/v1/chat/completions", {
      ...body,
      ignore_eos: true,
      stream: true,
    });
    const { events } = await readSse(res);
    const contents = ["", "", ""];
    const roles = [0, 0, 0];
    for (const event of events) {
      const [choice] = event.choices;
      if (choice.delta.role === "assistant") roles[choice.index]++;
      contents[choice.index] += choice.delta.content ?? "";
    }
    assert.deepEqual(roles, [1, 1, 1]);
    assert.deepEqual(
      contents,
      whole.choices.map((c: { message: { content: string } }) => c.message.content),
    );
  });

  await t.step("stop strings end the message before them", async () => {
    const stop = reference.slice(3, 6);
    const body = await postJson(app, "/v1/chat/completions", { ...greedy, stop });
    assert.equal(body.choices[0].message.content, reference.slice(0, reference.indexOf(stop)));
    assert.equal(body.choices[0].finish_reason, "stop");
  });

  await t.step("nothing left running", async () => {
    await waitFor(() => engine.stats.numRunning === 0 && inflight.count === 0);
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
    assert.ok(deps.metrics.requestsFinished.get({ finish_reason: "length" }) > 5);
  });
}
