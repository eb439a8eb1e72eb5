// The API's plain routes and every error it answers: loading, auth, unknown routes and methods,
// oversized and malformed bodies, schema violations, context length, queue full, server faults.
import assert from "node:assert/strict";
import type { EngineClient } from "../src/api/mod.ts";
import { Metrics } from "../src/api/mod.ts";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import {
  expectError,
  makeApi,
  post,
  postJson,
  SERVED_NAME,
  startEngine,
  waitFor,
} from "./api_helpers.ts";

const COMPLETION = { model: SERVED_NAME, prompt: "Once upon a time", max_tokens: 4 };

Deno.test("API routes and errors", async (t) => {
  const engine = await startEngine();
  try {
    await routes(t, engine);
  } finally {
    await engine.shutdown();
  }
});

async function routes(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, deps, inflight, logs } = await makeApi(engine);

  await t.step("health: 503 while loading, then 200", async () => {
    const state: { engine?: EngineClient } = {};
    const loading = await makeApi(undefined, { getEngine: () => state.engine });
    let res = await loading.app.request("/health");
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { status: "loading" });
    // Generation and tokenization wait for the engine; model listing and metrics do not.
    const error = await expectError(post(loading.app, "/v1/completions", COMPLETION), 503);
    assert.equal(error.code, "model_loading");
    await expectError(post(loading.app, "/tokenize", { prompt: "hi" }), 503);
    assert.equal((await loading.app.request("/v1/models")).status, 200);
    assert.equal((await loading.app.request("/metrics")).status, 200);
    state.engine = engine;
    res = await loading.app.request("/health");
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ok" });
  });

  await t.step("version and models", async () => {
    assert.deepEqual(await (await app.request("/version")).json(), { version: "0.0.0-test" });
    const models = await (await app.request("/v1/models")).json();
    assert.equal(models.object, "list");
    assert.equal(models.data.length, 1);
    const card = models.data[0];
    assert.equal(card.id, SERVED_NAME);
    assert.equal(card.object, "model");
    assert.equal(typeof card.created, "number");
    assert.equal(card.owned_by, "denollm");
    assert.equal(card.max_model_len, 512);
    assert.deepEqual(await (await app.request(`/v1/models/${SERVED_NAME}`)).json(), card);
    const error = await expectError(app.request("/v1/models/gpt-4"), 404);
    assert.equal(error.code, "model_not_found");
  });

  await t.step("tokenize and detokenize", async () => {
    const tok = await postJson(app, "/tokenize", { prompt: "Once upon a time" });
    assert.deepEqual(Object.keys(tok), ["count", "max_model_len", "tokens"]);
    assert.equal(tok.tokens[0], deps.tokenizer.bosId);
    assert.equal(tok.count, tok.tokens.length);
    assert.equal(tok.max_model_len, 512);
    const plain = await postJson(app, "/tokenize", {
      model: SERVED_NAME,
      prompt: "Once upon a time",
      add_special_tokens: false,
    });
    assert.deepEqual(plain.tokens, tok.tokens.slice(1));
    const detok = await postJson(app, "/detokenize", { tokens: plain.tokens });
    assert.deepEqual(detok, { prompt: "Once upon a time" });
    // The template writes BOS itself, so the chat prompt has exactly one.
    const chat = await postJson(app, "/tokenize", { messages: [{ role: "user", content: "Hi" }] });
    assert.equal(chat.tokens[0], deps.tokenizer.bosId);
    assert.notEqual(chat.tokens[1], deps.tokenizer.bosId);
    assert.equal(chat.tokens.filter((id: number) => id === deps.tokenizer.bosId).length, 1);
    const bad = await expectError(post(app, "/detokenize", { tokens: [1, 99999] }), 400);
    assert.equal(bad.param, "tokens");
    assert.match(bad.message, /99999/);
    await expectError(post(app, "/tokenize", { prompt: "x", model: "nope" }), 404);
    await expectError(post(app, "/tokenize", { prompt: 5 }), 400);
  });

  await t.step("auth: bearer key on everything but /health and /metrics", async () => {
    const key = "sk-test-0123456789";
    const secured = await makeApi(engine, { apiKey: key });
    const auth = { Authorization: `Bearer ${key}` };
    for (const path of ["/v1/models", "/version", "/v1/nothing-here"]) {
      const missing = await expectError(secured.app.request(path), 401);
      assert.equal(missing.code, "invalid_api_key");
    }
    const wrong = await expectError(
      secured.app.request("/v1/models", {
        headers: { Authorization: "Bearer sk-test-0123456788" },
      }),
      401,
    );
    assert.match(wrong.message, /Incorrect API key/);
    await expectError(
      secured.app.request("/v1/models", { headers: { Authorization: key } }),
      401,
    );
    await expectError(
      secured.app.request("/v1/models", { headers: { Authorization: `Bearer ${key}x` } }),
      401,
    );
    await expectError(post(secured.app, "/v1/completions", COMPLETION), 401);
    await expectError(post(secured.app, "/tokenize", { prompt: "hi" }), 401);
    assert.equal((await secured.app.request("/v1/models", { headers: auth })).status, 200);
    assert.equal((await secured.app.request("/health")).status, 200);
    assert.equal((await secured.app.request("/metrics")).status, 200);
    const ok = await secured.app.request("/v1/completions", {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json" },
      body: JSON.stringify(COMPLETION),
    });
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    // With the right key, an unknown route is a 404.
    await expectError(secured.app.request("/v1/nothing-here", { headers: auth }), 404);
  });

  await t.step("404 unknown route, 405 wrong method", async () => {
    const unknown = await expectError(app.request("/v2/completions"), 404);
    assert.match(unknown.message, /GET \/v2\/completions/);
    const res = await app.request("/v1/completions");
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "POST");
    await expectError(Promise.resolve(res), 405);
    const health = await app.request("/health", { method: "POST" });
    assert.equal(health.status, 405);
    assert.equal(health.headers.get("allow"), "GET");
    await health.body?.cancel();
    await expectError(app.request("/v1/chat/completions", { method: "PUT" }), 405);
    await expectError(app.request("/v1/models", { method: "DELETE" }), 405);
  });

  await t.step("413 by Content-Length and by the bytes actually sent", async () => {
    const small = await makeApi(engine, { maxBodyBytes: 1024 });
    const big = JSON.stringify({ prompt: "x".repeat(2000), max_tokens: 1 });
    const declared = await expectError(post(small.app, "/v1/completions", big), 413);
    assert.match(declared.message, /1024 bytes/);
    // A chunked body without Content-Length, and one whose header understates it.
    const chunks = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 8; i++) controller.enqueue(new TextEncoder().encode(" ".repeat(300)));
        controller.close();
      },
    });
    await expectError(
      small.app.request("/v1/completions", { method: "POST", body: chunks }),
      413,
    );
    await expectError(
      small.app.request("/tokenize", {
        method: "POST",
        headers: { "Content-Length": "10" },
        body: big,
      }),
      413,
    );
    // Just under the limit is fine.
    const fits = JSON.stringify({ prompt: "y".repeat(900) });
    assert.equal((await post(small.app, "/tokenize", fits)).status, 200);
  });

  await t.step("400 for bodies that are not a JSON object", async () => {
    for (const body of ["", "{", "{'a': 1}", "[1, 2]", "42", "null", '"text"']) {
      const error = await expectError(post(app, "/v1/completions", body), 400);
      assert.equal(error.type, "invalid_request_error");
    }
    const invalidUtf8 = new Uint8Array([
      0x7b,
      0x22,
      0x70,
      0x22,
      0x3a,
      0x22,
      0xff,
      0xfe,
      0x22,
      0x7d,
    ]);
    const error = await expectError(post(app, "/v1/completions", invalidUtf8), 400);
    assert.match(error.message, /UTF-8/);
  });

  await t.step("400 naming the field for schema violations", async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ["/v1/completions", { ...COMPLETION, temperature: -1 }, "temperature"],
      ["/v1/completions", { ...COMPLETION, temperature: "hot" }, "temperature"],
      ["/v1/completions", { ...COMPLETION, n: 17 }, "n"],
      ["/v1/completions", { ...COMPLETION, max_tokens: 0 }, "max_tokens"],
      ["/v1/completions", { ...COMPLETION, max_tokens: 2.5 }, "max_tokens"],
      ["/v1/completions", { ...COMPLETION, top_p: 0 }, "top_p"],
      ["/v1/completions", { ...COMPLETION, logprobs: 21 }, "logprobs"],
      ["/v1/completions", { ...COMPLETION, stop: [""] }, "stop"],
      ["/v1/completions", { ...COMPLETION, logit_bias: { abc: 1 } }, "logit_bias.abc"],
      ["/v1/completions", { ...COMPLETION, logit_bias: { "1": 101 } }, "logit_bias.1"],
      ["/v1/completions", { ...COMPLETION, logit_bias: { "100000": 1 } }, "logit_bias"],
      ["/v1/completions", { ...COMPLETION, seed: 1e300 }, "seed"],
      ["/v1/completions", { ...COMPLETION, stop_token_ids: [99999] }, "stop_token_ids"],
      ["/v1/completions", { ...COMPLETION, prompt: [] }, "prompt"],
      ["/v1/completions", { ...COMPLETION, prompt: [1, 99999] }, "prompt"],
      ["/v1/completions", { ...COMPLETION, prompt: { text: "hi" } }, "prompt"],
      ["/v1/completions", { ...COMPLETION, n: 3, best_of: 2 }, "best_of"],
      [
        "/v1/completions",
        { ...COMPLETION, stream_options: { include_usage: true } },
        "stream_options",
      ],
      ["/v1/completions", { max_tokens: 3 }, "prompt"],
      ["/v1/chat/completions", { messages: [] }, "messages"],
      [
        "/v1/chat/completions",
        { messages: [{ role: "function", content: "x" }] },
        "messages[0].role",
      ],
      ["/v1/chat/completions", { messages: [{ role: "user" }] }, "messages[0].content"],
      [
        "/v1/chat/completions",
        { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
        "messages[0].content[0]",
      ],
      [
        "/v1/chat/completions",
        { messages: [{ role: "user", content: "x" }], top_logprobs: 2 },
        "top_logprobs",
      ],
      [
        "/v1/chat/completions",
        {
          messages: [{ role: "user", content: "x" }],
          tools: [{ type: "function", function: { name: "f", parameters: [] } }],
        },
        "tools",
      ],
    ];
    for (const [path, body, param] of cases) {
      const error = await expectError(post(app, path, body), 400);
      assert.ok(error.param?.startsWith(param), `${JSON.stringify(body)}: param ${error.param}`);
      assert.ok(error.message.includes(param.split(/[.[]/)[0]), error.message);
    }
  });

  await t.step("400 when prompt + max_tokens exceed the context, with both numbers", async () => {
    const prompt = Array.from({ length: 500 }, (_, i) => 10 + (i % 100));
    let error = await expectError(
      post(app, "/v1/completions", { prompt, max_tokens: 20 }),
      400,
    );
    assert.equal(error.code, "context_length_exceeded");
    assert.match(error.message, /512/);
    assert.match(error.message, /500 in the prompt/);
    assert.match(error.message, /20 in the completion/);
    // Without max_tokens the completion fills the context, unless the prompt already does.
    error = await expectError(
      post(app, "/v1/completions", { prompt: [...prompt, ...prompt.slice(0, 12)] }),
      400,
    );
    assert.match(error.message, /512 tokens in the prompt|has 512 tokens/);
    error = await expectError(
      post(app, "/v1/chat/completions", {
        messages: [{ role: "user", content: "hello ".repeat(300) }],
        max_completion_tokens: 400,
      }),
      400,
    );
    assert.equal(error.code, "context_length_exceeded");
    assert.equal(error.param, "max_tokens");
  });

  await t.step("far too long text is refused before it is tokenized", async () => {
    const started = performance.now();
    const huge = "Once upon a time there was a girl. ".repeat(30_000); // ~1 MB, ~10 s to encode
    let error = await expectError(post(app, "/v1/completions", { prompt: huge }), 400);
    assert.equal(error.code, "context_length_exceeded");
    assert.match(error.message, /1050000 characters/);
    error = await expectError(
      post(app, "/v1/chat/completions", { messages: [{ role: "user", content: huge }] }),
      400,
    );
    assert.equal(error.param, "messages");
    assert.ok(performance.now() - started < 2000);
  });

  await t.step("404 for another model", async () => {
    const error = await expectError(
      post(app, "/v1/completions", { ...COMPLETION, model: "gpt-4o" }),
      404,
    );
    assert.equal(error.param, "model");
    assert.equal(error.code, "model_not_found");
    await expectError(
      post(app, "/v1/chat/completions", {
        model: "gpt-4o",
        messages: [{ role: "user", content: "x" }],
      }),
      404,
    );
  });

  await t.step("429 while the queue is full", async () => {
    const full = await makeApi(engine, { maxQueuedRequests: 0 });
    const error = await expectError(post(full.app, "/v1/completions", COMPLETION), 429);
    assert.equal(error.code, "queue_full");
    const res = await post(full.app, "/v1/chat/completions", {
      messages: [{ role: "user", content: "x" }],
    });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "1");
    await res.body?.cancel();
    // A fake engine with a long queue, for the ordinary limit.
    const busy: EngineClient = {
      generate: () => {
        throw new Error("not reached");
      },
      abort: () => {},
      stats: { ...engine.stats, numWaiting: 3 },
      maxModelLen: 512,
    };
    const limited = await makeApi(busy, { maxQueuedRequests: 3 });
    await expectError(post(limited.app, "/v1/completions", COMPLETION), 429);
  });

  await t.step("400 for chat without a template", async () => {
    const bare = await makeApi(engine, { chatTemplate: null });
    const error = await expectError(
      post(bare.app, "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }] }),
      400,
    );
    assert.match(error.message, /no chat template/);
    assert.equal(error.code, "chat_template_missing");
  });

  await t.step("unexpected errors are a generic 500 and a log line", async () => {
    const broken: EngineClient = {
      generate: () => ({
        next: () => Promise.reject(new Error("kernel exploded\n    at secret (/src/x.ts:1:1)")),
        [Symbol.asyncIterator]() {
          return this;
        },
      }),
      abort: () => {},
      stats: engine.stats,
      maxModelLen: 512,
    };
    const faulty = await makeApi(broken);
    const error = await expectError(post(faulty.app, "/v1/completions", COMPLETION), 500);
    assert.equal(error.type, "server_error");
    assert.doesNotMatch(error.message, /kernel|secret/);
    assert.equal(faulty.logs.length, 1);
    assert.equal(faulty.logs[0].level, "error");
    assert.equal(faulty.logs[0].fields?.message, "kernel exploded\n    at secret (/src/x.ts:1:1)");
    assert.equal(faulty.inflight.count, 0);
    // The same fault mid-stream: the status is sent already, so an error event ends the stream.
    let calls = 0;
    const flaky: EngineClient = {
      ...broken,
      generate: (id) => ({
        next: () =>
          calls++ === 0
            ? Promise.resolve({
              done: false,
              value: {
                requestId: id,
                index: 0,
                newTokenIds: [5],
                textDelta: "a",
                finished: false,
                numPromptTokens: 3,
                numOutputTokens: 1,
              },
            })
            : Promise.reject(new Error("worker died")),
        [Symbol.asyncIterator]() {
          return this;
        },
      }),
    };
    const midway = await makeApi(flaky);
    const res = await post(midway.app, "/v1/completions", { ...COMPLETION, stream: true });
    assert.equal(res.status, 200);
    const text = await res.text();
    const events = text.trim().split("\n\n").map((e) => JSON.parse(e.slice("data: ".length)));
    assert.equal(events[0].choices[0].text, "a");
    assert.equal(events.at(-1).error.type, "server_error");
    assert.doesNotMatch(text, /worker died/);
    assert.equal(midway.logs.length, 1);
    assert.equal(midway.inflight.count, 0);
  });

  await t.step("HTTP responses are counted by status", () => {
    const m = deps.metrics as Metrics;
    assert.ok(m.httpResponses.get({ status: "200" }) > 0);
    assert.ok(m.httpResponses.get({ status: "400" }) > 10);
    assert.ok(m.httpResponses.get({ status: "405" }) > 0);
  });

  await t.step("nothing left running", async () => {
    await waitFor(() => engine.stats.numRunning === 0 && inflight.count === 0);
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
    assert.equal(logs.length, 0, JSON.stringify(logs));
  });
}
