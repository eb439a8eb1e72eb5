// /v1/embeddings on stories260K: last-token and mean pooling equal a direct forward pass, batch
// inputs come back in order, base64 decodes to the same floats, and usage counts prompt tokens.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { NativeBackend } from "../ffi/native.ts";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import { LocalExecutor } from "../src/engine/executor.ts";
import { buildForwardBatch } from "../src/engine/forward_batch.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";
import { expectError, makeApi, MODEL, post, postJson, startEngine } from "./api_helpers.ts";

const SHORT = "Once upon a time";
// Longer than the engine's 32 reserved logit rows, so mean pooling spans several steps.
const LONG = "Once upon a time there was a little girl named Lily. She loved to play outside in " +
  "the park with her friends. One day she saw a big red ball under a tree and ran to get it.";

/** The pooled, L2-normalized final hidden state of `ids`, from one forward pass of all rows. */
async function reference(ids: number[], pooling: "last" | "mean"): Promise<Float64Array> {
  const backend = NativeBackend.open({ numThreads: 1 });
  const loaded = await loadModel(backend, MODEL, { showProgress: false });
  const blockSize = 16;
  const numBlocks = Math.ceil(ids.length / blockSize);
  const kvCache = new KvCache(backend, loaded.config, { blockSize, numBlocks: numBlocks + 1 });
  const n = ids.length;
  const executor = new LocalExecutor(backend, { model: loaded.model, kvCache }, {
    maxNumTokens: n,
    maxNumSeqs: 1,
    maxNumLogitRows: n,
    maxBlocksPerSeq: numBlocks,
    blockSize,
  });
  try {
    executor.execute({
      tokenIds: Int32Array.from(ids),
      positions: Int32Array.from({ length: n }, (_, i) => i),
      slotMapping: Int32Array.from({ length: n }, (_, i) => blockSize + i),
      seqLens: Int32Array.of(n),
      queryStart: Int32Array.of(0, n),
      blockTables: Int32Array.from({ length: numBlocks }, (_, i) => 1 + i),
      maxBlocksPerSeq: numBlocks,
      logitRows: Int32Array.from({ length: n }, (_, i) => i),
      blockCopies: new Int32Array(0),
    });
    const dim = executor.hiddenSize;
    const rows = executor.hiddenRows(n);
    const out = new Float64Array(dim);
    for (let r = pooling === "last" ? n - 1 : 0; r < n; r++) {
      for (let i = 0; i < dim; i++) out[i] += rows[r * dim + i] / (pooling === "mean" ? n : 1);
    }
    const norm = Math.hypot(...out);
    return out.map((x) => x / norm);
  } finally {
    executor.release();
    kvCache.release();
    loaded.release();
    backend.close();
  }
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-5): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol,
      `element ${i}: ${actual[i]} vs ${expected[i]}`,
    );
  }
}

Deno.test("/v1/embeddings", async (t) => {
  const engine = await startEngine();
  try {
    await embeddings(t, engine);
  } finally {
    await engine.shutdown();
  }
});

async function embeddings(t: Deno.TestContext, engine: AsyncEngine): Promise<void> {
  const { app, deps } = await makeApi(engine);
  const tokenizer = deps.tokenizer;
  const shortIds = tokenizer.encode(SHORT);
  const longIds = tokenizer.encode(LONG);
  assert.ok(longIds.length > 40, `${longIds.length} tokens`);

  await t.step("last-token pooling (the default) equals a forward pass", async () => {
    const body = await postJson(app, "/v1/embeddings", { input: SHORT });
    assert.equal(body.object, "list");
    assert.equal(body.data.length, 1);
    assert.deepEqual(Object.keys(body.data[0]), ["object", "index", "embedding"]);
    assert.equal(body.data[0].object, "embedding");
    assertClose(body.data[0].embedding, await reference(shortIds, "last"));
    assert.deepEqual(body.usage, {
      prompt_tokens: shortIds.length,
      total_tokens: shortIds.length,
    });
    assert.ok(Math.abs(Math.hypot(...body.data[0].embedding) - 1) < 1e-5);
    // Again, now with its prefix cached: the same vector.
    const again = await postJson(app, "/v1/embeddings", { input: SHORT });
    assertClose(again.data[0].embedding, body.data[0].embedding, 1e-6);
  });

  await t.step("mean pooling over a prompt that spans several steps", async () => {
    const body = await postJson(app, "/v1/embeddings", { input: LONG, pooling: "mean" });
    assertClose(body.data[0].embedding, await reference(longIds, "mean"));
    assert.equal(body.usage.prompt_tokens, longIds.length);
    const last = await postJson(app, "/v1/embeddings", { input: longIds });
    assertClose(last.data[0].embedding, await reference(longIds, "last"));
  });

  await t.step("a batch returns one embedding per input, in order", async () => {
    const texts = [LONG, SHORT, "The cat sat"];
    const single = await Promise.all(
      texts.map((input) => postJson(app, "/v1/embeddings", { input })),
    );
    const batch = await postJson(app, "/v1/embeddings", { input: texts });
    assert.deepEqual(batch.data.map((d: { index: number }) => d.index), [0, 1, 2]);
    batch.data.forEach((d: { embedding: number[] }, i: number) =>
      assertClose(d.embedding, single[i].data[0].embedding, 1e-6)
    );
    const numTokens = texts.reduce((n, text) => n + tokenizer.encode(text).length, 0);
    assert.equal(batch.usage.prompt_tokens, numTokens);
    const ids = await postJson(app, "/v1/embeddings", { input: [shortIds, longIds] });
    assertClose(ids.data[0].embedding, single[1].data[0].embedding, 1e-6);
    assertClose(ids.data[1].embedding, single[0].data[0].embedding, 1e-6);
  });

  await t.step("base64 decodes to the same floats", async () => {
    const floats = await postJson(app, "/v1/embeddings", { input: SHORT });
    const encoded = await postJson(app, "/v1/embeddings", {
      input: SHORT,
      encoding_format: "base64",
    });
    const bytes = Uint8Array.from(atob(encoded.data[0].embedding), (ch) => ch.charCodeAt(0));
    const decoded = new Float32Array(bytes.buffer);
    assert.deepEqual(Array.from(decoded), floats.data[0].embedding);
  });

  await t.step("truncate_prompt_tokens keeps the last N tokens; too long is a 400", async () => {
    const tail = longIds.slice(-5);
    const truncated = await postJson(app, "/v1/embeddings", {
      input: LONG,
      truncate_prompt_tokens: 5,
    });
    assert.equal(truncated.usage.prompt_tokens, 5);
    const direct = await postJson(app, "/v1/embeddings", { input: tail });
    assertClose(truncated.data[0].embedding, direct.data[0].embedding, 1e-6);
    const error = await expectError(
      post(app, "/v1/embeddings", { input: Array(513).fill(shortIds[1]) }),
      400,
    );
    assert.equal(error.code, "context_length_exceeded");
  });

  await t.step("bad inputs are a 400 naming the field", async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ input: [] }, "input"],
      [{ input: [1, 99999] }, "input"],
      [{ input: SHORT, pooling: "cls" }, "pooling"],
      [{ input: SHORT, encoding_format: "int8" }, "encoding_format"],
      [{ input: SHORT, model: "other" }, "model"],
    ];
    for (const [body, param] of cases) {
      const status = param === "model" ? 404 : 400;
      const error = await expectError(post(app, "/v1/embeddings", body), status);
      assert.equal(error.param, param, JSON.stringify(body));
    }
  });

  await t.step("the openai client (base64 by default) gets the same vectors", async () => {
    const client = new OpenAI({
      baseURL: "http://api.test/v1",
      apiKey: "unused",
      maxRetries: 0,
      fetch: (url: string | URL | Request, init?: RequestInit) =>
        Promise.resolve(app.request(String(url), init)),
    });
    const floats = await postJson(app, "/v1/embeddings", { input: [SHORT, LONG] });
    const res = await client.embeddings.create({ model: "stories260K", input: [SHORT, LONG] });
    assert.equal(res.data.length, 2);
    res.data.forEach((d, i) => assertClose(d.embedding, floats.data[i].embedding, 0));
    assert.equal(res.usage.prompt_tokens, shortIds.length + longIds.length);
  });

  await t.step("embeddings and generations share steps without changing either", async () => {
    const greedy = { prompt: SHORT, max_tokens: 24, temperature: 0, ignore_eos: true };
    const alone = await postJson(app, "/v1/completions", greedy);
    const mean = await reference(longIds, "mean");
    const [generated, ...embedded] = await Promise.all([
      postJson(app, "/v1/completions", greedy),
      postJson(app, "/v1/embeddings", { input: LONG, pooling: "mean" }),
      postJson(app, "/v1/embeddings", { input: [LONG, LONG], pooling: "mean" }),
    ]);
    assert.equal(generated.choices[0].text, alone.choices[0].text);
    assertClose(embedded[0].data[0].embedding, mean);
    for (const d of embedded[1].data) assertClose(d.embedding, mean);
  });
}

Deno.test("a forward batch's embedding rows skip the LM head", () => {
  const share = (id: string, numNew: number, isPooling: boolean) => ({
    requestId: id,
    start: 0,
    numNewTokens: numNew,
    tokenIds: Array(numNew).fill(1),
    blockIds: [1],
    sample: true,
    numLogitRows: isPooling ? numNew : 1,
    ...(isPooling ? { isPooling: true as const } : {}),
  });
  const plan = (shares: ReturnType<typeof share>[]) => ({
    scheduled: shares,
    numBatchedTokens: 0,
    blockCopies: [],
    preemptedIds: [],
  });
  const batch = buildForwardBatch(plan([share("a", 3, false), share("b", 4, true)]), 16);
  assert.equal(batch.logitRows.length, 5);
  assert.equal(batch.numLmHeadRows, 1);
  assert.throws(
    () => buildForwardBatch(plan([share("b", 4, true), share("a", 3, false)]), 16),
    /must come last/,
  );
});
