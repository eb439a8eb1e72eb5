// One log line per request: id, route, status, prompt and output tokens, queue time, TTFT,
// duration and finish reason; a stream's line once it ends; /health and /metrics only at debug.
import assert from "node:assert/strict";
import { MODEL_DIR, ServerProcess } from "./server_process.ts";

Deno.test("denollm serve logs one line per request", async () => {
  const server = new ServerProcess([MODEL_DIR, "--port", "0"]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await server.waitForLog((l) => l.msg.startsWith("serving "));
    const post = (path: string, body: unknown) =>
      fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const plain = await post("/v1/completions", {
      prompt: "Once upon a time",
      max_tokens: 5,
      temperature: 0,
    });
    const plainBody = await plain.json();
    const stream = await post("/v1/completions", {
      prompt: "Once upon a time",
      max_tokens: 7,
      ignore_eos: true,
      stream: true,
    });
    await stream.text();
    const bad = await post("/v1/completions", { prompt: "x", max_tokens: -3 });
    await bad.body?.cancel();
    await (await fetch(`${url}/health`)).body?.cancel();

    const lines = await Promise.all([
      server.waitForLog((l) => l.msg === "request" && l.id === plainBody.id),
      server.waitForLog((l) => l.msg === "request" && l.output_tokens === 7),
      server.waitForLog((l) => l.msg === "request" && l.status === 400),
    ]);
    const [first, streamed, refused] = lines;
    assert.equal(first.route, "/v1/completions");
    assert.equal(first.status, 200);
    assert.equal(first.prompt_tokens, plainBody.usage.prompt_tokens);
    assert.equal(first.output_tokens, plainBody.usage.completion_tokens);
    assert.equal(first.finish_reason, plainBody.choices[0].finish_reason);
    for (const key of ["queue_ms", "ttft_ms", "duration_ms"]) {
      assert.equal(typeof first[key], "number", key);
    }
    assert.equal(streamed.finish_reason, "length");
    assert.match(String(streamed.id), /^cmpl-/);
    assert.ok((streamed.duration_ms as number) >= (streamed.ttft_ms as number));
    assert.equal(refused.route, "/v1/completions");
    assert.equal(refused.id, undefined);
    // /health is polled: not at the default level.
    assert.ok(!server.logs.some((l) => l.msg === "request" && l.route === "/health"));
    assert.equal(server.logs.filter((l) => l.msg === "request").length, 3);
  } finally {
    await server.close();
  }
});
