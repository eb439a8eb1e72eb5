// Speculative decoding, greedy: outputs with and without speculation are the same token for token
// (n-gram and draft-model proposers, stories260K and random-weight models, one request and 16
// at once, chunked prefill, prefix caching, preemption forced by a small KV cache, stops and
// max_tokens), and every KV block is free afterwards.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import type { LocalEngineOptions, SpeculativeOptions } from "../src/engine/local_engine.ts";
import type { RequestParams } from "../src/engine/request.ts";
import { DraftModelProposer } from "../src/engine/spec/draft_model.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY, Rng } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const GGUF = new URL("../../shared/models/stories260K/stories260K-f32.gguf", import.meta.url)
  .pathname;
const backend = NativeBackend.open({ numThreads: 2 });
const stories: LoadedModel = await loadModel(backend, MODEL, { showProgress: false });
// Random weights of stories260K's shape: same vocabulary, near-random text.
const random1 = await loadModel(backend, MODEL, { loadFormat: "dummy", seed: 1 });
const random2 = await loadModel(backend, MODEL, { loadFormat: "dummy", seed: 2 });

// Every request speculates: the tests run up to 16 at once, above the default turn-down.
const NGRAM: SpeculativeOptions = { model: "ngram", numSpeculativeTokens: 4, disableBySize: 16 };
const DRAFT: SpeculativeOptions = { model: "draft", numSpeculativeTokens: 3, disableBySize: 16 };

interface Job {
  promptIds: number[];
  params: RequestParams;
}

/** Prompts that repeat themselves (so n-gram finds matches) and ones that do not. */
function makeJobs(target: LoadedModel, count: number, seed: number): Job[] {
  const rng = new Rng(seed);
  const texts = [
    "Once upon a time, there was a little girl. Once upon a time, there was a little",
    "The cat sat on the mat. The cat sat on the mat. The cat",
    "Lily and Tom went to the park.",
    "One day, a little bird",
  ];
  return Array.from({ length: count }, (_, i) => {
    const base = target.tokenizer.encode(texts[i % texts.length]);
    const extra = Array.from(
      { length: Math.floor(rng.next() * 20) },
      () => 3 + Math.floor(rng.next() * (target.config.vocabSize - 3)),
    );
    return {
      promptIds: i % 3 === 2 ? [...base, ...extra] : base,
      params: { maxTokens: 8 + Math.floor(rng.next() * 60), sampling: GREEDY },
    };
  });
}

/** Runs jobs together through `LLM`; returns their tokens, texts and the engine's last stats. */
function run(
  target: LoadedModel,
  jobs: Job[],
  options: LocalEngineOptions,
  draft?: LoadedModel,
) {
  const llm = LLM.over(backend, target, {
    blockSize: 16,
    numKvBlocks: 128,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 256,
    ...options,
  }, draft === undefined ? {} : { draft });
  try {
    const results = llm.generateBatch(jobs.map((j) => ({ promptIds: j.promptIds, ...j.params })));
    const stats = llm.engine.stats();
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks, "every target block is free");
    const proposer = llm.local.proposer;
    if (proposer instanceof DraftModelProposer) {
      assert.equal(proposer.numFreeKvBlocks, proposer.numKvBlocks, "every draft block is free");
    }
    return { results, stats };
  } finally {
    llm.release();
  }
}

function assertSame(
  a: ReturnType<typeof run>,
  b: ReturnType<typeof run>,
  label: string,
): void {
  a.results.forEach((r, i) => {
    assert.deepEqual(b.results[i].tokenIds, r.tokenIds, `${label}: request ${i} tokens`);
    assert.equal(b.results[i].text, r.text, `${label}: request ${i} text`);
    assert.equal(b.results[i].finishReason, r.finishReason, `${label}: request ${i} finish`);
  });
}

Deno.test("greedy speculation equals plain decoding", async (t) => {
  for (const [name, target] of [["stories260K", stories], ["random", random1]] as const) {
    const single = makeJobs(target, 1, 3);
    const many = makeJobs(target, 16, 4);
    const plainSingle = run(target, single, {});
    const plainMany = run(target, many, {});
    for (
      const [method, spec, draft] of [
        ["ngram", NGRAM, undefined],
        ["self-draft", DRAFT, target],
        ["other draft", DRAFT, target === stories ? random1 : random2],
      ] as const
    ) {
      await t.step(`${name}, ${method}, 1 request`, () => {
        const out = run(target, single, { speculative: spec }, draft);
        assertSame(plainSingle, out, `${name} ${method}`);
        assert.ok(out.stats.specDecode!.numDraftTokens > 0, "something was proposed");
        if (method === "self-draft") {
          const s = out.stats.specDecode!;
          assert.equal(s.numAcceptedTokens, s.numDraftTokens, "a model drafting for itself");
        }
      });
      await t.step(`${name}, ${method}, 16 requests, preemption forced`, () => {
        // 16 requests of up to ~100 tokens in 16 blocks of 16: they cannot all fit.
        const out = run(target, many, {
          speculative: { ...spec, disableBySize: 16 },
          numKvBlocks: 17,
        }, draft);
        assertSame(plainMany, out, `${name} ${method} x16`);
        assert.ok(out.stats.numPreemptions > 0, "the small cache preempted");
        assert.ok(out.stats.specDecode!.numDrafts > 0, "speculation ran in the batch");
      });
    }
  }
});

Deno.test("greedy speculation with chunked prefill and prefix caching", () => {
  const shared = stories.tokenizer.encode(
    "Once upon a time, there was a little girl named Lily. She liked to play. Once upon a time",
  );
  const jobs: Job[] = Array.from({ length: 8 }, (_, i) => ({
    promptIds: [...shared, ...stories.tokenizer.encode(` and ${i}`, { addSpecial: false })],
    params: { maxTokens: 40, sampling: GREEDY },
  }));
  const options = { maxNumBatchedTokens: 24, numKvBlocks: 80 };
  const plain = run(stories, jobs, options);
  const spec = run(stories, jobs, { ...options, speculative: NGRAM });
  assertSame(plain, spec, "chunked + cached");
  assert.ok(spec.stats.prefixCacheHits > 0, "later prompts hit the cache");
  assert.ok(spec.stats.specDecode!.numAcceptedTokens > 0);
});

Deno.test("speculation never emits past a stop string, a stop token or max_tokens", () => {
  const target = stories;
  const plainRun = run(target, makeJobs(target, 1, 3), {});
  const tokens = plainRun.results[0].tokenIds;
  const text = plainRun.results[0].text;
  // A stop string from the middle of the greedy text, and a stop token from its output.
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 4);
  const stopToken = tokens[Math.floor(tokens.length / 3)];
  const prompt = makeJobs(target, 1, 3)[0].promptIds;
  const jobs: Job[] = [
    { promptIds: prompt, params: { maxTokens: 60, sampling: GREEDY, stopStrings: [stop] } },
    { promptIds: prompt, params: { maxTokens: 60, sampling: GREEDY, stopTokenIds: [stopToken] } },
    { promptIds: prompt, params: { maxTokens: 5, sampling: GREEDY } },
    { promptIds: prompt, params: { maxTokens: 1, sampling: GREEDY } },
    {
      promptIds: prompt,
      params: {
        maxTokens: 30,
        sampling: GREEDY,
        stopStrings: [stop],
        includeStopStrInOutput: true,
      },
    },
  ];
  const plain = run(target, jobs, {});
  const methods = [["ngram", NGRAM, undefined], ["draft", DRAFT, target]] as const;
  for (const [method, spec, draft] of methods) {
    const out = run(target, jobs, { speculative: spec }, draft);
    assertSame(plain, out, `stops, ${method}`);
    assert.equal(out.results[0].finishReason, "stop");
    assert.ok(!out.results[0].text.includes(stop), "the stop string is cut");
    assert.equal(out.results[2].tokenIds.length, 5);
    assert.equal(out.results[3].tokenIds.length, 1);
  }
});

Deno.test("the GGUF of stories260K drafts for its HF directory", async () => {
  const draft = await loadModel(backend, GGUF, { showProgress: false });
  try {
    const jobs = makeJobs(stories, 4, 9);
    const plain = run(stories, jobs, {});
    const out = run(stories, jobs, { speculative: DRAFT }, draft);
    assertSame(plain, out, "gguf draft");
    const s = out.stats.specDecode!;
    assert.ok(s.numAcceptedTokens / s.numDraftTokens > 0.9, "the same weights agree");
  } finally {
    draft.release();
  }
});

Deno.test("a draft model with another vocabulary is refused", () => {
  const other = { ...random1, config: { ...random1.config, vocabSize: 1000 } };
  assert.throws(
    () => LLM.over(backend, stories, { numKvBlocks: 32, speculative: DRAFT }, { draft: other }),
    /the target's vocabulary of 512 tokens, the draft has 1000/,
  );
  assert.throws(
    () => LLM.over(backend, stories, { numKvBlocks: 32, speculative: DRAFT }),
    /names a draft model, but none was loaded/,
  );
});

globalThis.addEventListener("unload", () => {
  random2.release();
  random1.release();
  stories.release();
  backend.close();
});
