// The quantized self-draft: the target's own checkpoint loaded a second time through the
// quantization transform (--speculative-model self --speculative-model-quantization q4_0), and an
// already-quantized GGUF (what `deno task quantize` writes) as a draft. Greedy output equals plain
// decoding token for token; the flags are parsed and bad combinations refused.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { speculativeOptions } from "../src/cli/engine_flags.ts";
import { UsageError } from "../src/errors.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadDraft, type SpeculativeOptions } from "../src/engine/local_engine.ts";
import { DraftModelProposer } from "../src/engine/spec/draft_model.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { parseServeConfig, SERVE_USAGE } from "../src/server/config.ts";
import { quantizeGguf } from "../tools/quantize/quantize_gguf.ts";
import { quantPreset } from "../tools/quantize/recipe.ts";

const DIR = new URL("../../shared/models/stories260K/", import.meta.url).pathname;
const HF = `${DIR}hf`;
const GGUF = `${DIR}stories260K-f32.gguf`;
const backend = NativeBackend.open({ numThreads: 2 });
const stories = await loadModel(backend, HF, { showProgress: false });

const PROMPTS = [
  "Once upon a time, there was a little girl. Once upon a time, there was a little",
  "The cat sat on the mat.",
  "Lily and Tom went to the park.",
  "One day, a little bird",
];

/** Greedy outputs of `count` requests run together, and the draft's acceptance. */
function run(
  target: LoadedModel,
  count: number,
  spec?: SpeculativeOptions,
  draft?: LoadedModel,
) {
  const llm = LLM.over(backend, target, {
    blockSize: 16,
    // 16 requests of up to ~90 tokens need ~96 blocks: 40 forces preemption.
    numKvBlocks: count > 1 ? 40 : 128,
    maxNumSeqs: 16,
    maxNumBatchedTokens: 256,
    ...(spec === undefined ? {} : { speculative: { disableBySize: 64, ...spec } }),
  }, draft === undefined ? {} : { draft });
  try {
    const results = llm.generateBatch(Array.from({ length: count }, (_, i) => ({
      promptIds: target.tokenizer.encode(PROMPTS[i % PROMPTS.length]),
      maxTokens: 24 + 5 * i,
      sampling: GREEDY,
    })));
    const stats = llm.engine.stats();
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks, "every target block is free");
    const proposer = llm.local.proposer;
    if (spec !== undefined) {
      assert.ok(proposer instanceof DraftModelProposer, "a draft model proposes");
      assert.equal(proposer.numFreeKvBlocks, proposer.numKvBlocks, "every draft block is free");
    }
    return {
      tokens: results.map((r) => r.tokenIds),
      spec: stats.specDecode,
      numPreemptions: stats.numPreemptions,
    };
  } finally {
    llm.release();
  }
}

const plain1 = run(stories, 1).tokens;
const plain16 = run(stories, 16).tokens;

/** Greedy with `draft` equals plain decoding, for one request and 16 with preemption. */
function assertExact(draft: LoadedModel) {
  const spec = { model: "draft", numSpeculativeTokens: 3 };
  const one = run(stories, 1, spec, draft);
  assert.deepEqual(one.tokens, plain1);
  const many = run(stories, 16, spec, draft);
  assert.deepEqual(many.tokens, plain16);
  assert.ok(many.numPreemptions > 0, "the small cache preempted");
  const s = many.spec!;
  assert.ok(s.numDraftTokens > 0, "the draft proposed tokens");
  return s.numAcceptedTokens / s.numDraftTokens;
}

Deno.test("the Q4_0 self-draft (the target loaded again, quantized) is exact", async () => {
  const draft = await loadDraft(backend, {
    modelPath: HF,
    speculative: { model: "self", quantization: "q4_0", numSpeculativeTokens: 3 },
  }, stories);
  assert.ok(draft !== undefined && draft !== stories, "a second copy was loaded");
  try {
    assert.equal(draft.quantization?.target, "q4_0");
    // stories260K ties its head to the embeddings: --quantization keeps that matrix, a draft
    // quantizes it too, so exactly one more tensor.
    const asTarget = await loadModel(backend, HF, { quantization: "q4_0" });
    try {
      assert.equal(draft.quantization.numQuantized, asTarget.quantization!.numQuantized + 1);
    } finally {
      asTarget.release();
    }
    const acceptance = assertExact(draft);
    console.log(`stories260K, Q4_0 self-draft for F32: acceptance ${acceptance.toFixed(2)}`);
  } finally {
    draft.release();
  }
});

Deno.test("self without a quantization drafts with the target's own weights", async () => {
  const draft = await loadDraft(backend, {
    modelPath: HF,
    speculative: { model: "self", numSpeculativeTokens: 3 },
  }, stories);
  assert.equal(draft, stories);
});

Deno.test("a GGUF written by deno task quantize drafts for the F32 model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/stories260K-q8_0.gguf`;
    await quantizeGguf(backend, { inPath: GGUF, outPath: out }, quantPreset("q8_0"));
    const draft = await loadDraft(backend, {
      modelPath: HF,
      speculative: { model: out, numSpeculativeTokens: 3 },
    }, stories);
    assert.ok(draft !== undefined && draft !== stories);
    try {
      const acceptance = assertExact(draft);
      console.log(`stories260K, Q8_0 GGUF draft for F32: acceptance ${acceptance.toFixed(2)}`);
    } finally {
      draft.release();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LLM.load with --speculative-model self --speculative-model-quantization q4_0", async () => {
  const llm = await LLM.load({
    modelPath: HF,
    numThreads: 2,
    kvCacheMemoryBytes: 4 << 20,
    speculative: { model: "self", quantization: "q4_0", numSpeculativeTokens: 3 },
  });
  try {
    const [out] = llm.generateBatch([{
      promptIds: stories.tokenizer.encode(PROMPTS[0]),
      maxTokens: 24,
      sampling: GREEDY,
    }]);
    assert.deepEqual(out.tokenIds, plain1[0]);
    assert.ok(llm.local.proposer instanceof DraftModelProposer);
  } finally {
    llm.release();
  }
});

Deno.test("--speculative-model-quantization is parsed and checked", async (t) => {
  await t.step("self + q4_0", () => {
    const spec = speculativeOptions({
      "speculative-model": "self",
      "speculative-model-quantization": "Q4_0",
    });
    assert.equal(spec?.model, "self");
    assert.equal(spec?.quantization, "q4_0");
  });
  await t.step("an unknown format names the flag", () => {
    assert.throws(
      () =>
        speculativeOptions({
          "speculative-model": "self",
          "speculative-model-quantization": "q9",
        }),
      (e) =>
        e instanceof UsageError && /--speculative-model-quantization/.test(e.message) &&
        /q4_0/.test(e.message) && /"q9"/.test(e.message),
    );
  });
  await t.step("serve takes the flag and its DENOLLM_ variable, and lists it", () => {
    for (
      const [args, env] of [
        [["--speculative-model-quantization", "q4_0"], {}],
        [[], { DENOLLM_SPECULATIVE_MODEL_QUANTIZATION: "q4_0" }],
      ] as const
    ) {
      const parsed = parseServeConfig(["--model", HF, "--speculative-model", "self", ...args], {
        env: { HOME: "/home/u", ...env },
      });
      assert.ok(!parsed.help && "config" in parsed);
      assert.equal(parsed.config.speculative?.model, "self");
      assert.equal(parsed.config.speculative?.quantization, "q4_0");
    }
    assert.match(SERVE_USAGE, /--speculative-model-quantization/);
  });
  await t.step("refused with ngram and without --speculative-model", () => {
    assert.throws(
      () =>
        speculativeOptions({
          "speculative-model": "ngram",
          "speculative-model-quantization": "q4_0",
        }),
      /ngram/,
    );
    assert.throws(
      () => speculativeOptions({ "speculative-model-quantization": "q4_0" }),
      /needs --speculative-model/,
    );
  });
});

globalThis.addEventListener("unload", () => {
  stories.release();
  backend.close();
});
