// About 2000 malformed and hostile request bodies, each invalid by construction: every one must get
// a 4xx with OpenAI's error JSON, and the app must be healthy afterwards.
import assert from "node:assert/strict";
import { chatRequest, completionRequest } from "../src/api/schemas.ts";
import { assertErrorBody, makeApi, post, postJson, startEngine, waitFor } from "./api_helpers.ts";

const NUM_CASES = 2000;
const MAX_BODY_BYTES = 64 << 10;

/** mulberry32: a small seeded generator, so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const DEEP = "__deep__";
const random = rng(0x5eed);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];

/** Values that no field accepts, except that string fields take the strings. */
const hostile = (): unknown =>
  pick([hostileNonString, () => "NaN", () => "Infinity", () => "1e999", () => "\u0000\ud800"])();

/** Values that no field accepts. */
const hostileNonString = (): unknown =>
  pick([
    () => ({ nested: { deeper: [1, 2, 3] } }),
    () => DEEP,
    () => Array(5000).fill({}),
  ])();

/** For each field, a generator of values that field rejects (and that no other field repairs). */
const INVALID: Record<string, () => unknown> = {
  model: () => pick([5, [], {}, "m".repeat(300), "gpt-4o", true, hostile()]),
  prompt: () =>
    pick([
      null,
      5,
      {},
      [],
      [[]],
      [1.5],
      [-1],
      [99999],
      Array(33).fill("a"),
      ["a", 1],
      [[1], "a"],
      true,
      Array.from({ length: 600 }, (_, i) => 3 + (i % 400)),
      hostileNonString(),
    ]),
  messages: () =>
    pick([
      null,
      [],
      "hi",
      [{}],
      [{ role: "user" }],
      [{ role: "function", content: "x" }],
      [{ role: "user", content: 5 }],
      [{ role: "user", content: [{ type: "image_url", image_url: { url: "http://x" } }] }],
      [{ role: "user", content: [{ type: "text" }] }],
      [{ role: "user", content: "x", extra: 1 }],
      [{ role: "user", content: "x".repeat(2000) }].concat(
        Array(1024).fill({ role: "user", content: "x" }),
      ),
      [{ role: ["user"], content: "x" }],
      hostile(),
    ]),
  tokens: () => pick([[-1], [99999], "1", [1.5], null, [[1]], {}, hostile()]),
  max_tokens: () => pick([0, -5, 1.5, "10", 2 ** 53 + 2, 1e308, -1e308, true, [], hostile()]),
  max_completion_tokens: () => pick([0, -1, 2.5, "5", false, hostile()]),
  temperature: () => pick([-0.01, 2.01, 1e308, -1e308, "0.5", true, [], hostile()]),
  top_p: () => pick([0, -1, 1.01, "1", false, hostile()]),
  top_k: () => pick([-2, 1.5, 2 ** 40, "5", {}, hostile()]),
  min_p: () => pick([-0.1, 1.1, "0", [0.1], hostile()]),
  presence_penalty: () => pick([-2.5, 2.5, "0", true, hostile()]),
  frequency_penalty: () => pick([-3, 3, 1e308, "x", hostile()]),
  repetition_penalty: () => pick([0, -1, 11, "1", hostile()]),
  seed: () => pick([1.5, 2 ** 53 + 2, -(2 ** 53) - 2, 1e308, "42", [], hostile()]),
  stop: () =>
    pick([5, [""], ["a", 5], Array(17).fill("a"), "x".repeat(300), {}, hostileNonString()]),
  stop_token_ids: () => pick([[-1], [1.5], [99999], "1", Array(65).fill(1), [[1]], hostile()]),
  n: () => pick([0, -1, 17, 1.5, "2", 1e308, hostile()]),
  logprobs: () => pick([21, -1, 1.5, "true", {}, [], hostile()]),
  top_logprobs: () => pick([2, 21, -1, 0, hostile()]),
  logit_bias: () =>
    pick([
      { abc: 1 },
      { "1": 200 },
      { "1": "x" },
      { "99999": 1 },
      [],
      "x",
      5,
      Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [String(i), 1])),
      JSON.parse('{"__proto__": 5}'),
      hostile(),
    ]),
  ignore_eos: () => pick(["true", 1, [], {}, hostile()]),
  echo: () => pick(["yes", 0, {}, hostile()]),
  stream: () => pick(["true", 1, [], hostile()]),
  stream_options: () => pick([{ include_usage: true }, { include_usage: "yes" }, { x: 1 }, 5]),
  user: () => pick([5, "u".repeat(300), {}, hostileNonString()]),
  priority: () => pick([1.5, 2 ** 40, "1", hostile()]),
  cache_salt: () => pick(["", 5, "s".repeat(300), hostileNonString()]),
  // Keys a prototype-pollution probe sends, with any value at all (other unknown fields are
  // ignored, so they are not invalid).
  ["__proto__"]: () => pick([{ admin: true }, 5, null]),
  constructor: () => pick([{ prototype: {} }, "x"]),
  tools: () => pick([[{ type: "function", function: { name: 5 } }], [{ type: "f" }], "f"]),
  response_format: () => pick([{ type: "xml" }, { type: "json_schema" }, "json"]),
  suffix: () => "end",
  best_of: () => 2,
};

const ENDPOINTS: { path: string; base: () => Record<string, unknown>; weight: number }[] = [
  {
    path: "/v1/completions",
    base: () => ({ model: "stories260K", prompt: "Once", max_tokens: 2, temperature: 0 }),
    weight: 4,
  },
  {
    path: "/v1/chat/completions",
    base: () => ({ messages: [{ role: "user", content: "Hi" }], max_tokens: 2 }),
    weight: 4,
  },
  { path: "/tokenize", base: () => ({ prompt: "Once" }), weight: 1 },
  { path: "/tokenize", base: () => ({ messages: [{ role: "user", content: "Hi" }] }), weight: 1 },
  { path: "/detokenize", base: () => ({ tokens: [1, 2] }), weight: 1 },
];

const RESERVED = new Set(["__proto__", "constructor"]);
const KNOWN_FIELDS: Record<string, Set<string> | undefined> = {
  "/v1/completions": new Set(Object.keys(completionRequest.shape)),
  "/v1/chat/completions": new Set(Object.keys(chatRequest.shape)),
};

/** A body that is invalid as a whole, bytes and all. */
function invalidWholeBody(): string | Uint8Array {
  const valid = JSON.stringify({ prompt: "Once upon a time", max_tokens: 2 });
  return pick<() => string | Uint8Array>([
    () => "",
    () => " ",
    () => valid.slice(0, Math.floor(random() * (valid.length - 1))),
    () => "[" + valid + "]",
    () => pick(["42", "null", "true", '"text"', "[]"]),
    () => "[".repeat(100_000) + "]".repeat(100_000),
    () => '{"a":'.repeat(20_000) + "1" + "}".repeat(20_000),
    () => '{"prompt": "x", "temperature": NaN}',
    () => '{"prompt": "x", "max_tokens": 1e999}',
    () => '{"prompt": "x", "prompt": 5}',
    () => "{'prompt': 'x'}",
    () => JSON.stringify({ prompt: "x".repeat(MAX_BODY_BYTES + 10), max_tokens: 1 }),
    () => {
      const bytes = new TextEncoder().encode(valid);
      const at = 2 + Math.floor(random() * (bytes.length - 4));
      bytes[at] = pick([0xff, 0xfe, 0xc0, 0x80, 0xed]);
      return bytes;
    },
    () => Uint8Array.from({ length: 64 }, () => Math.floor(random() * 256)),
  ])();
}

/** The JSON text of `body`, with DEEP markers replaced by deeply nested arrays. */
function serialize(body: Record<string, unknown>): string {
  const depth = 1000 + Math.floor(random() * 20_000);
  return JSON.stringify(body).replaceAll(`"${DEEP}"`, () => "[".repeat(depth) + "]".repeat(depth));
}

function makeCase(): { path: string; body: string | Uint8Array } {
  const endpoints = ENDPOINTS.flatMap((e) => Array(e.weight).fill(e));
  const endpoint = pick(endpoints);
  if (random() < 0.12) return { path: endpoint.path, body: invalidWholeBody() };
  const body = endpoint.base();
  const numMutations = 1 + Math.floor(random() * 3);
  for (let i = 0; i < numMutations; i++) {
    // The generation routes ignore fields they do not know, so only their own fields can be
    // invalid there (and the prototype-pollution keys, which are always refused).
    const known = KNOWN_FIELDS[endpoint.path];
    const field = pick(
      Object.keys(INVALID).filter((f) => !known || known.has(f) || RESERVED.has(f)),
    );
    // defineProperty, so that "__proto__" becomes an own key as JSON.parse would make it.
    Object.defineProperty(body, field, {
      value: INVALID[field](),
      enumerable: true,
      configurable: true,
      writable: true,
    });
  }
  return { path: endpoint.path, body: serialize(body) };
}

Deno.test("fuzz: hostile bodies get 4xx error JSON, and the app stays healthy", async () => {
  const engine = await startEngine();
  try {
    const { app, inflight, logs, deps } = await makeApi(engine, { maxBodyBytes: MAX_BODY_BYTES });
    const statuses = new Map<number, number>();
    for (let i = 0; i < NUM_CASES; i++) {
      const { path, body } = makeCase();
      const res = await post(app, path, body, {
        headers: {
          "Content-Type": pick(["application/json", "text/plain", "x/y; charset=latin1"]),
        },
      });
      const text = await res.text();
      const shown = typeof body === "string" ? body.slice(0, 300) : `${body.length} bytes`;
      assert.ok(
        res.status >= 400 && res.status < 500,
        `case ${i} ${path} ${shown}: ${res.status} ${text}`,
      );
      assertErrorBody(JSON.parse(text));
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    }
    // Every kind of refusal showed up.
    assert.ok((statuses.get(400) ?? 0) > NUM_CASES / 2, JSON.stringify([...statuses]));
    assert.ok((statuses.get(404) ?? 0) > 0);
    assert.ok((statuses.get(413) ?? 0) > 0);
    assert.deepEqual([...statuses.keys()].sort(), [400, 404, 413]);

    assert.equal((await app.request("/health")).status, 200);
    const ok = await postJson(app, "/v1/completions", { prompt: "Once", max_tokens: 3 });
    assert.equal(ok.choices.length, 1);
    await waitFor(() => engine.stats.numRunning === 0 && inflight.count === 0);
    assert.equal(engine.stats.numFreeKvBlocks, engine.stats.numKvBlocks);
    assert.deepEqual(logs, []);
    assert.equal(deps.metrics.httpResponses.get({ status: "400" }), statuses.get(400));
  } finally {
    await engine.shutdown();
  }
});
