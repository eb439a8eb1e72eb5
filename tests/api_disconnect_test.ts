// A client that goes away mid-request gets its engine work aborted at once (KV blocks back in the
// pool), and the in-flight tracker drains and aborts requests for graceful shutdown.
import assert from "node:assert/strict";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import { makeApi, post, startEngine, waitFor } from "./api_helpers.ts";

const LONG = { prompt: "Once upon a time", max_tokens: 400, ignore_eos: true, temperature: 0 };

Deno.test("client disconnects and shutdown", async (t) => {
  const engine = await startEngine();
  try {
    await disconnects(t, engine);
  } finally {
    await engine.shutdown();
  }
});

function isEngineIdle(engine: AsyncEngine): boolean {
  const s = engine.stats;
  return s.numRunning === 0 && s.numWaiting === 0 && s.numFreeKvBlocks === s.numKvBlocks;
}

/** Reads SSE events until `count` have arrived. */
async function readEvents(reader: ReadableStreamDefaultReader<Uint8Array>, count: number) {
  const decoder = new TextDecoder();
  let text = "";
  while (text.split("\n\n").length - 1 < count) {
    const { done, value } = await reader.read();
    assert.ok(!done, "the stream ended early");
    text += decoder.decode(value, { stream: true });
  }
  return text;
}

async function disconnects(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, inflight, deps } = await makeApi(engine);

  await t.step("cancelling the response body aborts the stream's engine request", async () => {
    const res = await post(app, "/v1/completions", { ...LONG, n: 2, stream: true });
    const reader = res.body!.getReader();
    await readEvents(reader, 4);
    assert.ok(engine.stats.numRunning > 0);
    assert.equal(inflight.count, 1);
    await reader.cancel();
    await waitFor(() => isEngineIdle(engine) && inflight.count === 0, 2000);
    assert.ok(deps.metrics.requestsFinished.get({ finish_reason: "abort" }) >= 2);
  });

  await t.step("aborting the fetch signal aborts a stream", async () => {
    const controller = new AbortController();
    const res = await post(app, "/v1/chat/completions", {
      messages: [{ role: "user", content: "Hi" }],
      ...LONG,
      prompt: undefined,
      stream: true,
    }, { signal: controller.signal });
    const reader = res.body!.getReader();
    await readEvents(reader, 3);
    controller.abort();
    await waitFor(() => isEngineIdle(engine) && inflight.count === 0, 2000);
    // Whatever was buffered is still readable, and the stream then ends.
    while (!(await reader.read()).done) { /* drain */ }
  });

  await t.step("aborting the signal of a non-streaming request aborts it", async () => {
    const controller = new AbortController();
    const pending = post(app, "/v1/completions", { ...LONG, prompt: ["a", "b", "c"] }, {
      signal: controller.signal,
    });
    await waitFor(() => engine.stats.numRunning === 3, 2000);
    controller.abort();
    const res = await pending;
    const body = await res.json();
    assert.deepEqual(body.choices.map((c: { finish_reason: string }) => c.finish_reason), [
      "abort",
      "abort",
      "abort",
    ]);
    await waitFor(() => isEngineIdle(engine) && inflight.count === 0, 2000);
  });

  await t.step("a signal aborted before the request starts", async () => {
    const controller = new AbortController();
    controller.abort();
    const res = await post(app, "/v1/completions", { ...LONG, stream: true }, {
      signal: controller.signal,
    });
    await res.body?.cancel();
    await waitFor(() => isEngineIdle(engine) && inflight.count === 0, 2000);
  });

  await t.step("inflight: whenIdle waits for streams; abortAll ends them", async () => {
    assert.equal(inflight.count, 0);
    await inflight.whenIdle(); // resolves at once
    const streamed = await post(app, "/v1/completions", { ...LONG, stream: true });
    const whole = post(app, "/v1/completions", { ...LONG, max_tokens: 300 });
    await waitFor(() => inflight.count === 2 && engine.stats.numRunning === 2, 2000);
    let isIdle = false;
    const idle = inflight.whenIdle().then(() => (isIdle = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(isIdle, false);
    inflight.abortAll();
    const body = await (await whole).json();
    assert.equal(body.choices[0].finish_reason, "abort");
    const text = await streamed.text();
    assert.match(text, /"finish_reason":"abort"/);
    assert.ok(text.endsWith("data: [DONE]\n\n"));
    await idle;
    assert.equal(inflight.count, 0);
    await waitFor(() => isEngineIdle(engine), 2000);
  });
}
