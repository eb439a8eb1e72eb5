// Stop strings: never emit any part of a stop string, cut exactly before it, lose no other text.
import assert from "node:assert/strict";
import { StopStringMatcher } from "../src/stop.ts";

function feed(stops: string[], pieces: string[]) {
  const m = new StopStringMatcher(stops);
  const emitted: string[] = [];
  for (const piece of pieces) {
    const r = m.push(piece);
    emitted.push(r.text);
    if (r.stopped) return { emitted, stopped: true, stop: r.stop };
  }
  emitted.push(m.flush());
  return { emitted, stopped: false, stop: undefined };
}

Deno.test("a stop string split across pieces is cut and never emitted", () => {
  const r = feed(["END"], ["hello E", "N", "D and more"]);
  assert.equal(r.emitted.join(""), "hello ");
  assert.equal(r.stopped, true);
  assert.equal(r.stop, "END");
  for (const piece of r.emitted) assert.ok(!/[END]/.test(piece), `leaked ${piece}`);
});

Deno.test("a held-back prefix that turns out not to stop is emitted in order", () => {
  const r = feed(["\n\n"], ["a\n", "b\n", "c"]);
  assert.equal(r.emitted.join(""), "a\nb\nc");
  assert.equal(r.stopped, false);
});

Deno.test("the earliest of several stop strings wins", () => {
  const r = feed(["world", "lo w"], ["hello world"]);
  assert.equal(r.emitted.join(""), "hel");
  assert.equal(r.stop, "lo w");
});

Deno.test("every split point of a random text gives the same result as one piece", () => {
  const text = "the cat sat. the dog sat! END of story";
  for (let cut = 0; cut <= text.length; cut++) {
    const whole = feed([". the d", "END"], [text]);
    const split = feed([". the d", "END"], [text.slice(0, cut), text.slice(cut)]);
    assert.equal(split.emitted.join(""), whole.emitted.join(""), `cut at ${cut}`);
  }
});

Deno.test("no stop strings passes text straight through", () => {
  assert.deepEqual(feed([], ["a", "b"]).emitted, ["a", "b", ""]);
  assert.throws(() => new StopStringMatcher([""]), /non-empty/);
});
