// Speculative decoding, sampling: the next tokens sampled with speculation follow the same
// distribution as without it, through the whole logits pipeline (temperature, top-k, top-p,
// min-p, penalties, logit bias), for n-gram proposals (q a point mass), for proposals drawn from a
// full q, and for the model drafting for itself (p = q, so every draft must be accepted). A
// chi-square test of homogeneity compares each with plain sampling on stories260K (vocabulary
// 512); the last test shows it rejects a deliberately wrong acceptance rule.
//
// False alarms: each comparison tests NUM_POSITIONS positions at alpha = 0.001 (Bonferroni: at
// most 0.6% per comparison, 2.4% for the four that must pass). The seeds are fixed, so a given
// build passes or fails every time: a pass is not luck that can run out.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import type { SpeculativeOptions } from "../src/engine/local_engine.ts";
import type { EngineRequest } from "../src/engine/request.ts";
import type { DraftProposal, Proposer } from "../src/engine/spec/proposer.ts";
import { type AcceptanceRule, probabilityOf } from "../src/engine/spec/verify.ts";
import { type LoadedModel, loadModel } from "../src/model/load.ts";
import { GREEDY, Rng, type SamplingParams, type TokenDistribution } from "../src/sampling.ts";
import { proposeNgram } from "../src/engine/spec/ngram.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const backend = NativeBackend.open({ numThreads: 2 });
const stories: LoadedModel = await loadModel(backend, MODEL, { showProgress: false });

const NUM_SAMPLES = 1000;
const NUM_POSITIONS = 5;
const ALPHA = 0.001;
// A prompt that repeats the model's own greedy text and stops partway into the repeat, so n-gram
// lookup proposes the rest of it: likely tokens, but far from certain at temperature 1.
const PROMPT = (() => {
  const base = stories.tokenizer.encode("Once upon a time");
  const llm = LLM.over(backend, stories, { numKvBlocks: 16, maxNumSeqs: 1 });
  try {
    const greedy = llm.generate({ promptIds: base, maxTokens: 40, sampling: GREEDY }).tokenIds;
    return [...base, ...greedy, ...base.slice(1), ...greedy.slice(0, 8)];
  } finally {
    llm.release();
  }
})();
const NGRAM: SpeculativeOptions = {
  model: "ngram",
  numSpeculativeTokens: 3,
  ngramPromptLookupMin: 1,
  ngramPromptLookupMax: 3,
  disableBySize: 64,
};
const DRAFT: SpeculativeOptions = { model: "draft", numSpeculativeTokens: 3, disableBySize: 64 };
const PLAIN: SamplingParams = { temperature: 1, topK: 0, topP: 1, minP: 0 };
const PIPELINE: SamplingParams = {
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.02,
  repetitionPenalty: 1.1,
  presencePenalty: 0.2,
  frequencyPenalty: 0.1,
  logitBias: { [PROMPT[3]]: 1, [PROMPT[5]]: -1 },
};

/**
 * Proposes tokens drawn from a full q: 0.6 on the n-gram continuation's token, 0.4 spread evenly
 * over the prompt's distinct tokens. Each draft is fed back, so later positions see earlier draws.
 */
class FixedQProposer implements Proposer {
  readonly method = "draft";
  #rng = new Rng(77);
  #distinct: number[];
  constructor(ids: number[]) {
    this.#distinct = [...new Set(ids)];
  }
  #q(likely: number): TokenDistribution {
    const ids = [...this.#distinct];
    const probs = ids.map(() => 0.4 / ids.length);
    const at = ids.indexOf(likely);
    if (at === -1) {
      ids.push(likely);
      probs.push(0.6);
    } else {
      probs[at] += 0.6;
    }
    return { ids, probs, total: 1 };
  }
  propose(
    requests: readonly EngineRequest[],
    numTokens: (r: EngineRequest) => number,
  ): Map<string, DraftProposal> {
    const out = new Map<string, DraftProposal>();
    for (const r of requests) {
      const tokens = [...r.tokenIds];
      const tokenIds: number[] = [];
      const dists: TokenDistribution[] = [];
      for (let j = 0; j < numTokens(r); j++) {
        const likely = proposeNgram(tokens, 1, { maxN: 3, minN: 1 })[0];
        if (likely === undefined) break;
        const q = this.#q(likely);
        let u = this.#rng.next();
        let token = q.ids[q.ids.length - 1];
        for (let i = 0; i < q.ids.length; i++) {
          u -= q.probs[i];
          if (u < 0) {
            token = q.ids[i];
            break;
          }
        }
        tokens.push(token);
        tokenIds.push(token);
        dists.push(q);
      }
      if (tokenIds.length > 0) out.set(r.id, { tokenIds, dists });
    }
    return out;
  }
  free(): void {}
  release(): void {}
}
const FIXED_Q: SpeculativeOptions = {
  model: "fixed-q",
  numSpeculativeTokens: 3,
  disableBySize: 64,
};

/** The next NUM_POSITIONS tokens of NUM_SAMPLES seeded samples, one seed range per arm. */
function sampleTokens(
  sampling: SamplingParams,
  firstSeed: number,
  spec?: SpeculativeOptions,
  rule?: AcceptanceRule,
): { tokens: number[][]; acceptance?: number } {
  const llm = LLM.over(backend, stories, {
    blockSize: 16,
    numKvBlocks: 300,
    maxNumSeqs: 64,
    maxNumBatchedTokens: 2048,
    ...(spec === undefined ? {} : { speculative: spec }),
  }, parts(spec));
  if (rule !== undefined) llm.engine.setAcceptanceRule(rule);
  try {
    const results = llm.generateBatch(Array.from({ length: NUM_SAMPLES }, (_, i) => ({
      promptIds: PROMPT,
      maxTokens: NUM_POSITIONS,
      minTokens: NUM_POSITIONS,
      sampling: { ...sampling, seed: firstSeed + i },
    })));
    const s = llm.engine.stats().specDecode;
    return {
      tokens: results.map((r) => r.tokenIds),
      ...(s === undefined ? {} : { acceptance: s.numAcceptedTokens / s.numDraftTokens }),
    };
  } finally {
    llm.release();
  }
}

function parts(spec: SpeculativeOptions | undefined) {
  if (spec?.model === "draft") return { draft: stories };
  if (spec?.model === "fixed-q") return { proposer: new FixedQProposer(PROMPT) };
  return {};
}

/** Regularized upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above). */
function gammaQ(a: number, x: number): number {
  const lnGammaA = lnGamma(a);
  if (x < a + 1) {
    let sum = 1 / a;
    let term = sum;
    for (let n = 1; n < 1000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return 1 - sum * Math.exp(-x + a * Math.log(x) - lnGammaA);
  }
  let b = x + 1 - a;
  let c = 1 / 1e-300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return Math.exp(-x + a * Math.log(x) - lnGammaA) * h;
}

/** Lanczos approximation of ln Γ(x). */
function lnGamma(x: number): number {
  const g = [
    76.18009172947146,
    -86.50532032941677,
    24.01409824083091,
    -1.231739572450155,
    0.1208650973866179e-2,
    -0.5395239384953e-5,
  ];
  let y = x;
  const tmp = x + 5.5 - (x + 0.5) * Math.log(x + 5.5);
  let ser = 1.000000000190015;
  for (const c of g) ser += c / ++y;
  return -tmp + Math.log(2.5066282746310005 * ser / x);
}

/**
 * Chi-square test of homogeneity of two samples of tokens: categories with fewer than 10
 * observations in both together are pooled into one. Returns the p-value.
 */
function homogeneityPValue(a: number[], b: number[]): number {
  const counts = new Map<number, [number, number]>();
  for (const t of a) (counts.get(t) ?? counts.set(t, [0, 0]).get(t)!)[0]++;
  for (const t of b) (counts.get(t) ?? counts.set(t, [0, 0]).get(t)!)[1]++;
  const cells: [number, number][] = [];
  const rest: [number, number] = [0, 0];
  for (const c of counts.values()) {
    if (c[0] + c[1] >= 10) cells.push(c);
    else {
      rest[0] += c[0];
      rest[1] += c[1];
    }
  }
  if (rest[0] + rest[1] > 0) cells.push(rest);
  if (cells.length < 2) return 1;
  const na = a.length;
  const nb = b.length;
  let stat = 0;
  for (const [ca, cb] of cells) {
    const total = ca + cb;
    const ea = total * na / (na + nb);
    const eb = total * nb / (na + nb);
    stat += (ca - ea) ** 2 / ea + (cb - eb) ** 2 / eb;
  }
  return gammaQ((cells.length - 1) / 2, stat / 2);
}

/** The smallest p-value over the positions, and each position's. */
function compare(plain: number[][], spec: number[][]): number[] {
  return Array.from(
    { length: NUM_POSITIONS },
    (_, j) => homogeneityPValue(plain.map((t) => t[j]), spec.map((t) => t[j])),
  );
}

/** A classic mistake: accept with min(1, p/q), but on rejection draw again from p itself. */
const resampleFromP: AcceptanceRule = (p, draftId, q, uniform) => {
  const pd = probabilityOf(p, draftId);
  const qd = q === undefined ? 1 : probabilityOf(q, draftId);
  if (qd > 0 && uniform() < Math.min(1, pd / qd)) return { tokenId: draftId, isAccepted: true };
  let r = uniform() * p.total;
  for (let i = 0; i < p.ids.length; i++) {
    r -= p.probs[i];
    if (r < 0) return { tokenId: p.ids[i], isAccepted: false };
  }
  return { tokenId: p.ids[p.ids.length - 1], isAccepted: false };
};

const plainRuns = new Map<SamplingParams, number[][]>();
function plain(sampling: SamplingParams): number[][] {
  if (!plainRuns.has(sampling)) plainRuns.set(sampling, sampleTokens(sampling, 1).tokens);
  return plainRuns.get(sampling)!;
}

for (
  const [name, sampling, spec] of [
    ["n-gram, temperature 1", PLAIN, NGRAM],
    ["n-gram, the whole logits pipeline", PIPELINE, NGRAM],
    ["a full q, the whole logits pipeline", PIPELINE, FIXED_Q],
    ["the model drafting for itself, the whole logits pipeline", PIPELINE, DRAFT],
  ] as const
) {
  Deno.test(`sampled speculation keeps the target's distribution: ${name}`, () => {
    const out = sampleTokens(sampling, 1_000_000, spec);
    const pValues = compare(plain(sampling), out.tokens);
    if (spec === DRAFT) {
      // p = q exactly (same weights, same pipeline, same history): nothing may be rejected.
      assert.equal(out.acceptance, 1, "a model drafting for itself");
    } else {
      assert.ok(out.acceptance! > 0.02 && out.acceptance! < 0.95, `acceptance ${out.acceptance}`);
    }
    for (const [j, pv] of pValues.entries()) {
      assert.ok(pv > ALPHA, `position ${j}: p = ${pv} (acceptance ${out.acceptance})`);
    }
  });
}

Deno.test("the chi-square test rejects a wrong acceptance rule (resampling from p)", () => {
  for (const [sampling, spec] of [[PLAIN, NGRAM], [PIPELINE, FIXED_Q]] as const) {
    const wrong = sampleTokens(sampling, 1_000_000, spec, resampleFromP);
    const pValues = compare(plain(sampling), wrong.tokens);
    assert.ok(
      Math.min(...pValues) < ALPHA,
      `the wrong rule must be caught: p-values ${pValues.join(", ")}`,
    );
  }
});

globalThis.addEventListener("unload", () => {
  stories.release();
  backend.close();
});
