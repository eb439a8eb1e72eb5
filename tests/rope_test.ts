// RoPE frequencies: rope_theta, linear and Llama-3 scaling, and GGUF's rope_freqs divisors.
import assert from "node:assert/strict";
import { ropeInvFreq } from "../src/model/rope.ts";

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b));

Deno.test("plain RoPE frequencies follow rope_theta", () => {
  const f = ropeInvFreq({ ropeTheta: 10000, ropeScaling: null }, 8);
  assert.equal(f.length, 4);
  [1, 0.1, 0.01, 0.001].forEach((want, i) => assert.ok(close(f[i], want), `${i}: ${f[i]}`));
});

Deno.test("linear scaling divides every frequency", () => {
  const plain = ropeInvFreq({ ropeTheta: 500000, ropeScaling: null }, 64);
  const scaled = ropeInvFreq({ ropeTheta: 500000, ropeScaling: { type: "linear", factor: 4 } }, 64);
  plain.forEach((p, i) => assert.ok(close(scaled[i], p / 4)));
});

Deno.test("Llama-3 scaling keeps high, divides low and blends middle frequencies", () => {
  const scaling = {
    type: "llama3" as const,
    factor: 32,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const plain = ropeInvFreq({ ropeTheta: 500000, ropeScaling: null }, 64);
  const scaled = ropeInvFreq({ ropeTheta: 500000, ropeScaling: scaling }, 64);
  let kept = 0, divided = 0, blended = 0;
  plain.forEach((p, i) => {
    const wavelen = (2 * Math.PI) / p;
    if (wavelen < 8192 / 4) {
      assert.ok(close(scaled[i], p));
      kept++;
    } else if (wavelen > 8192 / 1) {
      assert.ok(close(scaled[i], p / 32));
      divided++;
    } else {
      assert.ok(scaled[i] < p && scaled[i] > p / 32, `blend at ${i}`);
      blended++;
    }
  });
  assert.ok(kept > 0 && divided > 0 && blended > 0, `${kept} ${divided} ${blended}`);

  // GGUF stores the same scaling as per-frequency divisors (rope_freqs.weight).
  const factors = Float32Array.from(plain, (p, i) => p / scaled[i]);
  const fromGguf = ropeInvFreq({ ropeTheta: 500000, ropeScaling: null }, 64, factors);
  fromGguf.forEach((g, i) => assert.ok(close(g, scaled[i])));
});

Deno.test("bad rotary sizes are rejected", () => {
  assert.throws(() => ropeInvFreq({ ropeTheta: 1e4, ropeScaling: null }, 7), /positive even/);
  assert.throws(
    () => ropeInvFreq({ ropeTheta: 1e4, ropeScaling: null }, 8, new Float32Array(3)),
    /rope_freqs must have 4 values, found 3/,
  );
});
