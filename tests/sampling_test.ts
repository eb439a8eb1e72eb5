// Sampling: greedy picks the argmax, filters keep the right candidates, seeds reproduce output.
import assert from "node:assert/strict";
import {
  adjustLogits,
  argmax,
  GREEDY,
  Rng,
  Sampler,
  validateSamplingParams,
} from "../src/sampling.ts";

const logits = Float32Array.from([1, 5, 3, 5, -2, 0.5]);

Deno.test("greedy takes the first maximum", () => {
  assert.equal(argmax(logits), 1);
  assert.equal(new Sampler(GREEDY).sample(logits), 1);
  assert.equal(new Sampler({ ...GREEDY, temperature: 1, topK: 1, seed: 3 }).sample(logits), 1);
});

Deno.test("the same seed gives the same tokens, another seed other tokens", () => {
  const params = { temperature: 1.5, topK: 0, topP: 1, minP: 0 };
  const row = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i) * 2);
  const draw = (seed: number) => {
    const s = new Sampler({ ...params, seed });
    return Array.from({ length: 40 }, () => s.sample(row));
  };
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
});

Deno.test("top-k, top-p and min-p only ever return allowed tokens", () => {
  const row = Float32Array.from([4, 3, 2, 1, 0, -1]);
  const sampleMany = (p: Partial<ConstructorParameters<typeof Sampler>[0]>) => {
    const s = new Sampler({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1, ...p });
    return new Set(Array.from({ length: 2000 }, () => s.sample(row)));
  };
  assert.deepEqual(sampleMany({ topK: 2 }), new Set([0, 1]));
  // Softmax of [4,3,2,...]: p0 ≈ 0.64, p0 + p1 ≈ 0.87, so top-p 0.8 keeps two tokens.
  assert.deepEqual(sampleMany({ topP: 0.8 }), new Set([0, 1]));
  // min-p 0.3 keeps tokens with p >= 0.3 * p0: e^-1 ≈ 0.37 passes, e^-2 ≈ 0.14 does not.
  assert.deepEqual(sampleMany({ minP: 0.3 }), new Set([0, 1]));
  // Without filters, a high temperature reaches every token.
  assert.equal(sampleMany({ temperature: 5 }).size, 6);
});

Deno.test("sampling frequencies follow the softmax", () => {
  const row = Float32Array.from([Math.log(1), Math.log(3)]);
  const s = new Sampler({ temperature: 1, topK: 0, topP: 1, minP: 0, seed: 42 });
  let ones = 0;
  const n = 20000;
  for (let i = 0; i < n; i++) ones += s.sample(row);
  // Expected 0.75; the bound is ~10 standard deviations, so this cannot flake.
  assert.ok(Math.abs(ones / n - 0.75) < 0.03, `frequency ${ones / n}`);
});

Deno.test("Rng is uniform in [0, 1)", () => {
  const rng = new Rng(1);
  let sum = 0;
  for (let i = 0; i < 10000; i++) {
    const x = rng.next();
    assert.ok(x >= 0 && x < 1);
    sum += x;
  }
  assert.ok(Math.abs(sum / 10000 - 0.5) < 0.02);
});

Deno.test("bad sampling parameters are rejected with the value", () => {
  assert.throws(() => validateSamplingParams({ ...GREEDY, temperature: -1 }), /temperature.*-1/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, topP: 0 }), /top_p.*0/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, minP: 2 }), /min_p.*2/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, topK: 1.5 }), /top_k.*1.5/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, seed: 0.5 }), /seed.*0.5/);
});

Deno.test("logit bias and penalties change only the tokens they name, on a copy", () => {
  const row = Float32Array.from([2, 1, -1, 0.5]);
  const history = { tokenIds: [1, 2, 3, 3, 3], numPromptTokens: 2 };
  assert.deepEqual(
    Array.from(adjustLogits(row, { ...GREEDY, logitBias: { 3: 10, 0: -2 } })),
    [0, 1, -1, 10.5],
  );
  // Repetition: prompt and output tokens (1, 2, 3); positive logits divided, negative multiplied.
  assert.deepEqual(
    Array.from(adjustLogits(row, { ...GREEDY, repetitionPenalty: 2 }, history)),
    [2, 0.5, -2, 0.25],
  );
  // Presence and frequency: output tokens only (3 three times).
  assert.deepEqual(
    Array.from(
      adjustLogits(row, { ...GREEDY, presencePenalty: 0.5, frequencyPenalty: 0.25 }, history),
    ),
    [2, 1, -1, 0.5 - 0.5 - 0.75],
  );
  assert.deepEqual(Array.from(row), [2, 1, -1, 0.5], "the shared row is untouched");
  // Greedy follows the adjusted logits.
  assert.equal(new Sampler({ ...GREEDY, logitBias: { 2: 5 } }).sample(row), 2);
  assert.throws(() => validateSamplingParams({ ...GREEDY, presencePenalty: 3 }), /presencePenalty/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, repetitionPenalty: 0 }), /repetition/);
  assert.throws(() => validateSamplingParams({ ...GREEDY, logitBias: { 1: 200 } }), /logitBias/);
});
