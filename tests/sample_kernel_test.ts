// dl_sample's CPU reference: greedy is argmax, the filters keep what ffi/denollm.h defines, the
// draw follows the weights (a statistical check), the same (seed, counter) gives the same token,
// and bad parameters fail naming the row.
import assert from "node:assert/strict";
import { NativeBackend, NativeError } from "../ffi/native.ts";
import { withDeviceBuffers } from "./device_buffers.ts";
import * as ref from "./kernel_reference.ts";
import { sampleOn, type SampleRow } from "./sample_helpers.ts";

const LIBRARY_PATH = new URL("../build/libdenollm_cpu.so", import.meta.url).pathname;
const backend = NativeBackend.open({ libraryPath: LIBRARY_PATH, numThreads: 2 });
globalThis.addEventListener("unload", () => backend.close());

const BASE: SampleRow = { temperature: 1, topK: 0, topP: 1, minP: 0, seed: 7n, counter: 0n };

/** Draws `n` tokens from one logits row with counters 0 .. n - 1. */
function draws(logits: Float32Array, row: Partial<SampleRow>, n: number): Int32Array {
  const rows = Array.from({ length: n }, (_, i) => ({ ...BASE, ...row, counter: BigInt(i) }));
  const tiled = new Float32Array(n * logits.length);
  for (let i = 0; i < n; i++) tiled.set(logits, i * logits.length);
  return withDeviceBuffers(backend, (s) => sampleOn(s, tiled, rows, logits.length));
}

function softmax(logits: Float32Array, temperature: number): number[] {
  const max = Math.max(...logits);
  const e = Array.from(logits, (l) => Math.exp((l - max) / temperature));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

Deno.test("dl_sample (CPU): greedy is the argmax, lowest id on ties; NaN never wins", () => {
  const logits = Float32Array.of(0.5, 2, -1, 2, NaN, 1.5);
  for (const row of [{ temperature: 0 }, { topK: 1 }]) {
    assert.deepEqual([...draws(logits, row, 3)], [1, 1, 1]);
  }
  assert.equal(draws(Float32Array.of(NaN, NaN, 3), { temperature: 0 }, 1)[0], 2);
  assert.equal(draws(Float32Array.of(NaN, NaN), { temperature: 0 }, 1)[0], 0);
  // No finite logit: the argmax, as src/sampling.ts's point mass.
  assert.equal(draws(Float32Array.of(-Infinity, Infinity, -Infinity), {}, 1)[0], 1);
});

Deno.test("dl_sample (CPU): draws follow softmax(logits / temperature) over odd vocab sizes", () => {
  const rand = ref.mulberry32(5);
  for (const [vocab, temperature] of [[1, 1], [37, 0.7], [37, 2], [101, 1]] as const) {
    const logits = Float32Array.from(ref.randomF32(rand, vocab), (v) => 3 * v);
    const n = 20000;
    const tokens = draws(logits, { temperature, seed: BigInt(vocab) }, n);
    const counts = new Array(vocab).fill(0);
    for (const t of tokens) counts[t]++;
    const probs = softmax(logits, temperature);
    for (let i = 0; i < vocab; i++) {
      // 5 standard deviations of a binomial count, plus one for the weights' 2^-31 rounding.
      const sigma = Math.sqrt(n * probs[i] * (1 - probs[i]));
      assert.ok(
        Math.abs(counts[i] - n * probs[i]) <= 5 * sigma + 1,
        `vocab ${vocab} T ${temperature}: token ${i} drawn ${counts[i]} times, expected ${
          (n * probs[i]).toFixed(1)
        }`,
      );
    }
  }
});

Deno.test("dl_sample (CPU): top-k, top-p and min-p keep exactly their sets", () => {
  // Probabilities at temperature 1 of logits log(p): 0.4, 0.3, 0.2, 0.1 (ids shuffled).
  const p = [0.2, 0.4, 0.1, 0.3];
  const logits = Float32Array.from(p, Math.log);
  const seen = (row: Partial<SampleRow>) => new Set(draws(logits, row, 4000));
  assert.deepEqual([...seen({ topK: 2 })].sort(), [1, 3]);
  assert.deepEqual([...seen({ topK: 3 })].sort(), [0, 1, 3]);
  // Nucleus: 0.4 + 0.3 = 0.7 reaches 0.65 and 0.7; 0.71 needs the 0.2 token too.
  assert.deepEqual([...seen({ topP: 0.65 })].sort(), [1, 3]);
  assert.deepEqual([...seen({ topP: 0.71 })].sort(), [0, 1, 3]);
  // min-p 0.45: tokens of at least 0.45 times the top probability (0.4): 0.4, 0.3 and 0.2.
  assert.deepEqual([...seen({ minP: 0.45 })].sort(), [0, 1, 3]);
  assert.deepEqual([...seen({ minP: 0.76 })].sort(), [1]);
  // Top-k, then top-p over the renormalized top 3 (0.4/0.9 = 0.44 < 0.5).
  assert.deepEqual([...seen({ topK: 3, topP: 0.5 })].sort(), [1, 3]);
});

Deno.test("dl_sample (CPU): one (seed, counter) gives one token; others vary", () => {
  const logits = new Float32Array(32001);
  const once = draws(logits, { seed: 11n }, 64);
  assert.deepEqual([...draws(logits, { seed: 11n }, 64)], [...once]);
  assert.ok(new Set(once).size > 50, "64 draws from a flat 32001-token row should rarely repeat");
  assert.notDeepEqual([...draws(logits, { seed: 12n }, 64)], [...once]);
});

Deno.test("dl_sample (CPU): bad parameters fail naming the row", () => {
  for (
    const row of [{ temperature: -1 }, { topP: 0 }, { topP: 1.5 }, { minP: -0.1 }, {
      temperature: NaN,
    }]
  ) {
    assert.throws(
      () => draws(Float32Array.of(1, 2, 3), row, 2),
      (e) => e instanceof NativeError && e.status === 1 && /dl_sample: .*row 0/.test(e.message),
    );
  }
});
