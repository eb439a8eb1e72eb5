// The engine behind its worker thread: concurrent submissions stream the same tokens as the
// single-sequence path, cancellation frees KV at once, bad requests are rejected, not crashed on.
import assert from "node:assert/strict";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import type { RequestOutput } from "../src/engine/request.ts";
import { planKvBlocks } from "../src/engine/local_engine.ts";
import { GREEDY } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const fixture = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/llamacpp/stories260K.json", import.meta.url)),
);

async function collect(stream: AsyncIterable<RequestOutput>) {
  const ids: number[] = [];
  let text = "";
  let last: RequestOutput | undefined;
  for await (const out of stream) {
    ids.push(...out.newTokenIds);
    text += out.textDelta;
    last = out;
  }
  return { ids, text, last: last! };
}

Deno.test("the engine worker serves concurrent requests, cancels, and rejects", async () => {
  const engine = await AsyncEngine.start({
    modelPath: MODEL,
    numThreads: 2,
    kvCacheMemoryBytes: 4 << 20,
    maxModelLen: 512,
    maxNumBatchedTokens: 128,
    maxNumSeqs: 16,
  });
  try {
    assert.ok(engine.numKvBlocks * engine.blockSize >= 512);
    // Eight copies of the reference prompt at once: each must equal llama.cpp's tokens.
    const { promptIds, generatedIds, text } = fixture.generate;
    const params = { maxTokens: 64, sampling: GREEDY, ignoreEos: true };
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => collect(engine.generate(`same${i}`, promptIds, params))),
    );
    for (const r of results) {
      assert.deepEqual(r.ids, generatedIds);
      assert.equal(r.text, text);
      assert.equal(r.last.finishReason, "length");
      assert.equal(r.last.numOutputTokens, 64);
    }

    // Cancel mid-stream: the iterator ends with finish reason "abort", blocks return at once.
    const stream = engine.generate("cancel-me", promptIds, { ...params, maxTokens: 400 });
    let seen = 0;
    let last: RequestOutput | undefined;
    for await (const out of stream) {
      last = out;
      if (++seen === 3) engine.abort("cancel-me");
    }
    assert.equal(last?.finishReason, "abort");
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
    assert.equal(engine.stats.numRunning, 0);

    // The worker loop yields between steps, so messages get in while a request runs: a request
    // submitted during a long one finishes first, and the long one's abort lands within a few
    // steps (of the ~470 it would otherwise run), not at its end.
    const long = engine.generate("long", promptIds, { ...params, maxTokens: 440 });
    const first = await long.next();
    assert.equal(first.done, false);
    const short = await collect(engine.generate("short", promptIds, { ...params, maxTokens: 4 }));
    assert.equal(short.last.finishReason, "length");
    engine.abort("long");
    let lastOfLong = first.value as RequestOutput;
    for await (const out of { [Symbol.asyncIterator]: () => long }) lastOfLong = out;
    assert.equal(lastOfLong.finishReason, "abort");
    assert.ok(
      lastOfLong.numOutputTokens < 220,
      `the abort came after ${lastOfLong.numOutputTokens} of 440 tokens`,
    );

    // Admission errors surface through the iterator with their name and message.
    await assert.rejects(
      () => collect(engine.generate("too-long", promptIds, { ...params, maxTokens: 1000 })),
      (e) => (e as Error).name === "RequestTooLongError" && /512/.test((e as Error).message),
    );
    await assert.rejects(
      () => collect(engine.generate("bad-token", [1, 99999], params)),
      /outside the vocabulary/,
    );
    // The engine still serves after the errors.
    const after = await collect(engine.generate("after", promptIds, { ...params, maxTokens: 8 }));
    assert.deepEqual(after.ids, generatedIds.slice(0, 8));
  } finally {
    await engine.shutdown();
  }
});

Deno.test("start-up refuses a KV budget that cannot hold one full-length sequence", async () => {
  assert.throws(
    () => planKvBlocks({ kvCacheMemoryBytes: 10_000, blockSize: 16, maxModelLen: 512 }, 1000),
    /holds 144 tokens .* fewer than one sequence of the maximum length 512/,
  );
  assert.equal(
    planKvBlocks({ kvCacheMemoryBytes: 40_000, blockSize: 16, maxModelLen: 512 }, 1000),
    40,
  );
  await assert.rejects(
    () =>
      AsyncEngine.start({
        modelPath: MODEL,
        numThreads: 1,
        kvCacheMemoryBytes: 1000,
        maxModelLen: 512,
        maxNumBatchedTokens: 64,
        maxNumSeqs: 4,
      }),
    /raise --kv-cache-memory/,
  );
  await assert.rejects(
    () =>
      AsyncEngine.start({
        modelPath: "/nonexistent",
        kvCacheMemoryBytes: 1 << 20,
        maxModelLen: 512,
        maxNumBatchedTokens: 64,
        maxNumSeqs: 4,
      }),
    /no such file or directory/,
  );
});
