// The serving load generator's workloads across a sweep: every load level and repeat gets prompts
// of its own (so a prefix cache cannot serve a later level from an earlier one), while shared
// prefixes stay shared.
import assert from "node:assert/strict";
import {
  drawSeed,
  levelDrawIndex,
  parseLengthDist,
  type SyntheticOptions,
  syntheticWorkload,
} from "../bench/serve/workload.ts";

const numLevels = 3;
const numRepeats = 2;

/** The workload of every draw a sweep of 3 levels x 2 repeats makes, the warm-up's (0) first. */
function sweepDraws(options: Omit<SyntheticOptions, "drawIndex">) {
  const indices = [0];
  for (let repeat = 0; repeat < numRepeats; repeat++) {
    for (let level = 0; level < numLevels; level++) {
      indices.push(levelDrawIndex(level, repeat, numLevels));
    }
  }
  assert.equal(new Set(indices).size, indices.length, "every level and repeat has its own draw");
  return indices.map((drawIndex) => syntheticWorkload({ ...options, drawIndex }));
}

const key = (prompt: string | number[]) => JSON.stringify(prompt);

Deno.test("bench workload: no two levels or repeats of a sweep share a prompt", () => {
  for (const format of ["ids", "text"] as const) {
    const draws = sweepDraws({
      numRequests: 8,
      inputLen: parseLengthDist("uniform:8:16"),
      outputLen: parseLengthDist("4"),
      prompt: { format, idRange: [100, 5000] },
      seed: 1,
    });
    const seen = new Map<string, number>();
    draws.forEach((items, d) => {
      for (const item of items) {
        const other = seen.get(key(item.prompt));
        assert.ok(other === undefined || other === d, `draws ${other} and ${d} share a prompt`);
        seen.set(key(item.prompt), d);
      }
    });
  }
});

Deno.test("bench workload: shared prefixes stay shared across draws, suffixes do not", () => {
  const prefixLen = 24;
  const draws = sweepDraws({
    numRequests: 4,
    inputLen: parseLengthDist("8"),
    outputLen: parseLengthDist("4"),
    prompt: { format: "ids", idRange: [100, 5000] },
    prefixTokens: prefixLen,
    numPrefixes: 2,
    seed: 7,
  });
  const prefixes = new Set<string>();
  const suffixes = new Set<string>();
  for (const items of draws) {
    for (const item of items) {
      const ids = item.prompt as number[];
      prefixes.add(key(ids.slice(0, prefixLen)));
      suffixes.add(key(ids.slice(prefixLen)));
    }
  }
  assert.equal(prefixes.size, 2, "the same 2 prefixes in every draw");
  assert.equal(suffixes.size, draws.length * 4, "every request of every draw has its own suffix");
});

Deno.test("bench workload: a draw is reproducible from its seed and index", () => {
  const options: SyntheticOptions = {
    numRequests: 4,
    inputLen: parseLengthDist("uniform:4:32"),
    outputLen: parseLengthDist("lognormal:16:1"),
    prompt: { format: "ids" },
    seed: 3,
    drawIndex: 2,
  };
  assert.deepEqual(syntheticWorkload(options), syntheticWorkload(options));
  assert.notEqual(drawSeed(3, 0), drawSeed(3, 1));
  assert.notEqual(drawSeed(3, 1), drawSeed(4, 1));
  assert.throws(() => drawSeed(3, -1), RangeError);
});
