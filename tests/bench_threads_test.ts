// The kernel-thread defaults: one CPU left free, and libgomp's wait policy set only when the user
// set neither of its variables.
import assert from "node:assert/strict";
import {
  applyOmpEnvDefaults,
  defaultNumThreads,
  type Env,
  OMP_ENV_DEFAULTS,
  ompEnvDefaults,
} from "../src/engine/threads.ts";

function fakeEnv(values: Record<string, string> = {}): Env & { values: Map<string, string> } {
  const map = new Map(Object.entries(values));
  return { values: map, get: (key) => map.get(key), set: (key, value) => void map.set(key, value) };
}

Deno.test("defaultNumThreads leaves one CPU free, and never goes below one thread", () => {
  assert.equal(defaultNumThreads(1), 1);
  assert.equal(defaultNumThreads(2), 1);
  assert.equal(defaultNumThreads(16), 15);
  assert.ok(defaultNumThreads() >= 1);
  assert.throws(() => defaultNumThreads(0), RangeError);
  assert.throws(() => defaultNumThreads(1.5), RangeError);
});

Deno.test("applyOmpEnvDefaults sets the wait policy when the user set nothing", () => {
  const env = fakeEnv({ PATH: "/bin" });
  assert.deepEqual(applyOmpEnvDefaults(env), OMP_ENV_DEFAULTS);
  assert.equal(env.values.get("OMP_WAIT_POLICY"), OMP_ENV_DEFAULTS.OMP_WAIT_POLICY);
  assert.equal(env.values.get("PATH"), "/bin");
});

Deno.test("applyOmpEnvDefaults keeps the user's OMP_WAIT_POLICY or GOMP_SPINCOUNT", () => {
  const choices: Record<string, string>[] = [{ OMP_WAIT_POLICY: "active" }, {
    GOMP_SPINCOUNT: "1",
  }];
  for (const set of choices) {
    const env = fakeEnv(set);
    assert.deepEqual(ompEnvDefaults(env), {});
    assert.deepEqual(applyOmpEnvDefaults(env), {});
    assert.deepEqual(Object.fromEntries(env.values), set);
  }
});
