// The bugs the API audit of issue 15 found, each through the HTTP API on a real engine worker:
// cache_salt isolation, prompt logprobs for echo (lm-eval's loglikelihood shape) and vLLM's
// prompt_logprobs, text_offset with echo, harmless and unknown fields, usage counting the stop
// token, special tokens in the text, and per-sample seeds that do not collide.
import assert from "node:assert/strict";
import type { AsyncEngine } from "../src/engine/async_engine.ts";
import { LLM } from "../src/engine/llm.ts";
import { GREEDY } from "../src/sampling.ts";
import {
  expectError,
  makeApi,
  MODEL,
  post,
  postJson,
  startEngine,
  waitFor,
} from "./api_helpers.ts";

const PROMPT = "Once upon a time";

Deno.test("API audit (issue 15)", async (t) => {
  const engine = await startEngine();
  // The reference forward pass: each prefix on its own, prefix caching off, all logprobs.
  const reference = await LLM.load({
    modelPath: MODEL,
    numThreads: 2,
    numKvBlocks: 64,
    maxModelLen: 512,
    enablePrefixCaching: false,
  });
  try {
    await audit(t, engine, reference);
  } finally {
    reference.release();
    await engine.shutdown();
  }
});

/** log p(ids[k] | ids[..k]) for k = 1 … from separate forward passes over each prefix. */
function referenceLogprobs(llm: LLM, ids: readonly number[]): number[] {
  const vocab = llm.engine.tokenizer.vocabSize;
  const out: number[] = [];
  for (let k = 1; k < ids.length; k++) {
    const [first] = llm.stream(ids.slice(0, k), {
      maxTokens: 1,
      sampling: GREEDY,
      ignoreEos: true,
      logprobs: vocab,
    });
    const entry = first.logprobs![0].top.find((t) => t.tokenId === ids[k])!;
    out.push(entry.logprob);
  }
  return out;
}

function assertClose(actual: number[], expected: number[], what: string): void {
  assert.equal(actual.length, expected.length, what);
  actual.forEach((a, i) => {
    assert.ok(Math.abs(a - expected[i]) < 1e-4, `${what}[${i}]: ${a} vs ${expected[i]}`);
  });
}

async function audit(t: Deno.TestContext, engine: AsyncEngine, reference: LLM): Promise<void> {
  const { app, deps, logs, inflight } = await makeApi(engine);
  const tokenizer = deps.tokenizer;

  const prefixHits = async () => {
    const text = await (await app.request("/metrics")).text();
    return Number(/^denollm_prefix_cache_hits_total\{model_name="[^"]*"\} (\d+)/m.exec(text)![1]);
  };

  await t.step(
    "cache_salt: another salt gets no prefix-cache hit, the same salt does",
    async () => {
      // 40 tokens: two full blocks of 16 can be served from the cache.
      const prompt = [1, ...Array.from({ length: 39 }, (_, i) => 40 + i)];
      const send = async (salt?: string) => {
        const before = await prefixHits();
        await postJson(app, "/v1/completions", {
          prompt,
          max_tokens: 1,
          ...(salt === undefined ? {} : { cache_salt: salt }),
        });
        return (await prefixHits()) - before;
      };
      assert.equal(await send("tenant-a"), 0);
      assert.equal(await send("tenant-b"), 0, "a different salt must not hit tenant-a's blocks");
      assert.equal(await send(), 0, "no salt must not hit salted blocks");
      assert.equal(await send("tenant-a"), 32, "the same salt hits its own blocks");
      assert.equal(await send(), 32);
    },
  );

  await t.step("echo + logprobs 1 + max_tokens 0: lm-eval's loglikelihood shape", async () => {
    const ids = tokenizer.encode(PROMPT);
    const body = await postJson(app, "/v1/completions", {
      prompt: PROMPT,
      echo: true,
      logprobs: 1,
      max_tokens: 0,
      temperature: 0,
    });
    const [choice] = body.choices;
    assert.equal(choice.text, PROMPT);
    assert.equal(choice.finish_reason, "length");
    assert.deepEqual(body.usage, {
      prompt_tokens: ids.length,
      completion_tokens: 0,
      total_tokens: ids.length,
    });
    const lp = choice.logprobs;
    assert.equal(lp.tokens.length, ids.length);
    assert.equal(lp.token_logprobs[0], null);
    assert.equal(lp.top_logprobs[0], null);
    assertClose(lp.token_logprobs.slice(1), referenceLogprobs(reference, ids), "token_logprobs");
    for (let i = 1; i < ids.length; i++) {
      const top = Object.entries(lp.top_logprobs[i]) as [string, number][];
      assert.ok(top.length >= 1 && top.length <= 2);
      assert.equal(lp.top_logprobs[i][lp.tokens[i]], lp.token_logprobs[i]);
    }
  });

  await t.step("text_offset with echo indexes the echoed text", async () => {
    const body = await postJson(app, "/v1/completions", {
      prompt: PROMPT,
      echo: true,
      logprobs: 0,
      max_tokens: 3,
      temperature: 0,
      ignore_eos: true,
    });
    const { text, logprobs: lp } = body.choices[0];
    const numPrompt = tokenizer.encode(PROMPT).length;
    // "<s>" and "▁Once": BOS has no text and the leading space is dropped, so both start at 0.
    assert.deepEqual(lp.text_offset.slice(0, 2), [0, 0]);
    for (let i = 2; i < lp.tokens.length; i++) {
      const start = lp.text_offset[i];
      assert.equal(text.slice(start, start + lp.tokens[i].length), lp.tokens[i], `token ${i}`);
    }
    assert.equal(lp.text_offset[numPrompt], PROMPT.length);
  });

  await t.step(
    "prompt logprobs over several chunks, with the prompt cached, and vLLM's field",
    async () => {
      // 80 tokens, more than the 32 logit rows a step has here (--max-num-seqs 32): the prefill is
      // chunked to fit, and the second request's prompt is in the prefix cache, which it skips.
      const ids = [1, ...Array.from({ length: 79 }, (_, i) => 3 + ((i * 37) % 400))];
      const expected = referenceLogprobs(reference, ids);
      for (let round = 0; round < 2; round++) {
        const body = await postJson(app, "/v1/completions", {
          prompt: ids,
          echo: true,
          logprobs: 2,
          max_tokens: 2,
          prompt_logprobs: 1,
          temperature: 0,
        });
        const lp = body.choices[0].logprobs;
        assert.equal(lp.tokens.length, ids.length + 2);
        assert.equal(lp.token_logprobs[0], null);
        assertClose(lp.token_logprobs.slice(1, ids.length), expected, `round ${round}`);
        const vllm = body.choices[0].prompt_logprobs;
        assert.equal(vllm.length, ids.length);
        assert.equal(vllm[0], null);
        for (let k = 1; k < ids.length; k++) {
          const own = vllm[k][ids[k]];
          assert.ok(Math.abs(own.logprob - expected[k - 1]) < 1e-4);
          assert.ok(Number.isInteger(own.rank) && own.rank >= 1);
          assert.equal(own.decoded_token, lp.tokens[k]);
        }
      }
      // Chat takes prompt_logprobs too.
      const chat = await postJson(app, "/v1/chat/completions", {
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 1,
        prompt_logprobs: 0,
      });
      assert.equal(chat.prompt_logprobs[0], null);
      assert.equal(chat.prompt_logprobs.length, chat.usage.prompt_tokens);
    },
  );

  await t.step("streamed echo with logprobs has the prompt logprobs", async () => {
    const res = await post(app, "/v1/completions", {
      prompt: PROMPT,
      echo: true,
      logprobs: 1,
      max_tokens: 0,
      stream: true,
    });
    const text = await res.text();
    const events = text.split("\n\n").filter((b) => b.startsWith("data: {")).map((b) =>
      JSON.parse(b.slice(6))
    );
    assert.equal(events[0].choices[0].text, PROMPT);
    const lp = events[0].choices[0].logprobs;
    assert.equal(lp.token_logprobs[0], null);
    assert.ok(lp.token_logprobs.slice(1).every((x: unknown) => typeof x === "number"));
  });

  await t.step("max_tokens 0 needs echo", async () => {
    const error = await expectError(
      post(app, "/v1/completions", { prompt: PROMPT, max_tokens: 0 }),
      400,
    );
    assert.equal(error.param, "max_tokens");
  });

  await t.step(
    "fields that change nothing are accepted; unknown ones ignored with a log",
    async () => {
      const chat = { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 };
      await postJson(app, "/v1/chat/completions", {
        ...chat,
        response_format: { type: "text" },
        tools: [],
        tool_choice: "none",
        parallel_tool_calls: false,
        store: false,
        metadata: { job: "eval" },
        user: "someone",
      });
      await postJson(app, "/v1/completions", {
        prompt: PROMPT,
        max_tokens: 2,
        response_format: { type: "text" },
        store: true,
        metadata: {},
        user: "someone",
        suffix: null,
      });
      assert.equal(logs.length, 0, JSON.stringify(logs));
      await postJson(app, "/v1/completions", { prompt: PROMPT, max_tokens: 2, frobnicate: 3 });
      assert.equal(logs.length, 1);
      assert.equal(logs[0].level, "warn");
      assert.deepEqual(logs[0].fields?.fields, ["frobnicate"]);
      logs.length = 0;
      // Values that would change the output, and are not implemented, are still refused.
      const refused: [string, Record<string, unknown>, string][] = [
        // json_object and tools are implemented now; tool_choice "required" without tools is
        // still a request that cannot be served.
        ["/v1/chat/completions", { ...chat, tool_choice: "required" }, "tool_choice"],
        ["/v1/completions", { prompt: PROMPT, suffix: "end" }, "suffix"],
        ["/v1/completions", { prompt: PROMPT, best_of: 3, stream: true }, "best_of"],
        ["/v1/completions", { prompt: PROMPT, frobnicate: 3, temperature: -1 }, "temperature"],
      ];
      for (const [path, body, param] of refused) {
        const error = await expectError(post(app, path, body), 400);
        assert.ok(error.param?.startsWith(param), `${JSON.stringify(body)}: ${error.param}`);
      }
      assert.equal(logs.length, 0, "a refused body logs nothing");
    },
  );

  // A bias that makes </s> the greedy choice at once.
  const eos = tokenizer.eosIds[0];
  const toEos = { logit_bias: { [eos]: 100 }, temperature: 0 };

  await t.step("completion_tokens counts the token that ended generation", async () => {
    const body = await postJson(app, "/v1/completions", {
      prompt: PROMPT,
      max_tokens: 5,
      ...toEos,
    });
    assert.equal(body.choices[0].finish_reason, "stop");
    assert.equal(body.choices[0].text, "");
    assert.equal(body.usage.completion_tokens, 1);
    const chat = await postJson(app, "/v1/chat/completions", {
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 5,
      ...toEos,
    });
    assert.equal(chat.usage.completion_tokens, 1);
  });

  await t.step(
    "ignore_eos: </s> stays out of the text unless skip_special_tokens is false",
    async () => {
      const base = { prompt: PROMPT, max_tokens: 3, ignore_eos: true, ...toEos };
      const skipped = await postJson(app, "/v1/completions", base);
      assert.equal(skipped.choices[0].finish_reason, "length");
      assert.equal(skipped.choices[0].text, "");
      assert.equal(skipped.usage.completion_tokens, 3);
      const kept = await postJson(app, "/v1/completions", { ...base, skip_special_tokens: false });
      assert.equal(kept.choices[0].text, tokenizer.tokenText(eos)!.repeat(3));
    },
  );

  await t.step("seeded n > 1 samples do not repeat other seeds' samples", async () => {
    // Temperature 2 flattens the distribution, so only equal streams give equal texts.
    const body = { prompt: PROMPT, max_tokens: 24, temperature: 2, ignore_eos: true };
    const seven = await postJson(app, "/v1/completions", { ...body, seed: 7, n: 3 });
    const singles: string[] = [];
    for (let seed = 7; seed < 11; seed++) {
      const single = await postJson(app, "/v1/completions", { ...body, seed });
      singles.push(single.choices[0].text);
    }
    assert.equal(seven.choices[0].text, singles[0], "sample 0 keeps the seed");
    for (const choice of seven.choices.slice(1)) {
      assert.ok(!singles.includes(choice.text), `choice ${choice.index}: ${choice.text}`);
    }
  });

  await t.step("nothing left running", async () => {
    await waitFor(() => engine.stats.numRunning === 0 && inflight.count === 0);
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
  });
}
