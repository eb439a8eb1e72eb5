// About 2000 malformed and hostile request bodies, each invalid by construction: every one must get
// a 4xx with OpenAI's error JSON, and the app must be healthy afterwards. Then the classes only a
// real server sees (stalled bodies, wrong content types, huge /tokenize, deep nesting) against
// `denollm serve` itself: still no 5xx.
import assert from "node:assert/strict";
import { chatRequest, completionRequest } from "../src/api/schemas.ts";
import { assertErrorBody, makeApi, post, postJson, startEngine, waitFor } from "./api_helpers.ts";
import { MODEL_DIR, rawRequest, ServerProcess, waitHealthy } from "./server_process.ts";

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
  best_of: () => pick([0, 17, 2.5, "2", hostile()]),
  min_tokens: () => pick([-1, 1.5, "3", hostile()]),
  truncate_prompt_tokens: () => pick([0, -1, 2.5, "3", hostile()]),
  include_stop_str_in_output: () => pick(["true", 1, [], hostile()]),
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
          // Every spelling of JSON: other types are refused whole (415), in the server test below.
          "Content-Type": pick([
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
          ]),
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

const NUM_SERVER_CASES = 120;
const SERVER_CASE_KINDS = [
  "stalled",
  "unterminated",
  "content-type",
  "huge-tokenize",
  "deep",
  "slow-head",
  "garbage-head",
] as const;
type ServerCaseKind = typeof SERVER_CASE_KINDS[number];

/** One hostile exchange with the real server; the status it got (0: no answer in time). */
async function serverCase(
  port: number,
  kind: ServerCaseKind,
): Promise<number> {
  const path = pick(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]);
  const head = (headers: Record<string, string>) =>
    `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n` +
    Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n";
  const json = { "content-type": "application/json" };
  const valid = JSON.stringify({ prompt: "Once", max_tokens: 2 });
  let parts: string[];
  switch (kind) {
    case "stalled": {
      // Stops short of its Content-Length, after a few slow bytes.
      const sent = valid.slice(0, Math.floor(random() * valid.length));
      parts = [head({ ...json, "content-length": String(valid.length + 10) }), ...sent.split("")];
      break;
    }
    case "unterminated":
      parts = [
        head({ ...json, "transfer-encoding": "chunked" }),
        `${valid.length.toString(16)}\r\n${valid}\r\n`,
      ];
      break;
    case "content-type": {
      const type = pick([
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "json",
        "",
      ]);
      const headers: Record<string, string> = { "content-length": String(valid.length) };
      if (type !== "") headers["content-type"] = type;
      parts = [head(headers) + valid];
      break;
    }
    case "huge-tokenize": {
      const text = "Once upon a time there was a girl. ".repeat(
        20_000 + Math.floor(random() * 80_000),
      );
      const body = JSON.stringify(
        random() < 0.5 ? { prompt: text } : { messages: [{ role: "user", content: text }] },
      );
      parts = [
        `POST /tokenize HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
        `content-length: ${new TextEncoder().encode(body).length}\r\n\r\n${body}`,
      ];
      break;
    }
    case "slow-head":
      // A slowloris: the head one byte per gap, never finished within --header-timeout.
      parts = [...head({ ...json, "content-length": String(valid.length) }).slice(0, -2)];
      break;
    case "garbage-head": {
      const bytes = Array.from(
        { length: 1 + Math.floor(random() * 200) },
        () => pick([" ", "\r\n", ":", "/", "HTTP/1.1", "\x00", "\x7f", "é", "a", "GET", "0"]),
      );
      parts = [bytes.join("") + "\r\n\r\n"];
      break;
    }
    case "deep": {
      const depth = 1000 + Math.floor(random() * 50_000);
      const body = `{"prompt": ${"[".repeat(depth)}${"]".repeat(depth)}}`;
      parts = [head({ ...json, "content-length": String(body.length) }) + body];
      break;
    }
  }
  const response = await rawRequest(port, parts, { gapMs: 20, timeoutMs: 10_000 });
  return response?.status ?? 0;
}

Deno.test("fuzz: the real server gets stalled, mistyped, huge and deep requests, and no 5xx", async () => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--body-timeout",
    "0.5",
    "--header-timeout",
    "0.5",
  ]);
  try {
    const port = await server.port;
    const url = `http://127.0.0.1:${port}`;
    await waitHealthy(url);
    const kinds = SERVER_CASE_KINDS;
    const seen = new Map<string, number[]>();
    // Eight at a time, so stalled ones overlap the others.
    for (let i = 0; i < NUM_SERVER_CASES; i += 8) {
      const batch = Array.from({ length: 8 }, () => pick(kinds));
      const statuses = await Promise.all(batch.map((kind) => serverCase(port, kind)));
      batch.forEach((kind, j) => seen.set(kind, [...(seen.get(kind) ?? []), statuses[j]]));
    }
    for (const [kind, statuses] of seen) {
      assert.ok(statuses.every((s) => s >= 400 && s < 500), `${kind}: ${statuses.join()}`);
    }
    assert.ok(seen.get("stalled")?.every((s) => s === 408 || s === 400), "stalled: 408");
    assert.ok(seen.get("unterminated")?.every((s) => s === 408), "unterminated: 408");
    assert.ok(seen.get("content-type")?.every((s) => s === 415), "content-type: 415");
    assert.ok(seen.get("slow-head")?.every((s) => s === 408), "slow-head: 408");
    assert.ok(seen.get("huge-tokenize")?.every((s) => s === 400 || s === 413), "huge: 400/413");
    // CORS is off without --allowed-origins: a preflight gets no Access-Control-* headers.
    const preflight = await fetch(`${url}/v1/completions`, {
      method: "OPTIONS",
      headers: { origin: "https://any.example", "access-control-request-method": "POST" },
    });
    await preflight.body?.cancel();
    assert.equal(preflight.status, 405);
    assert.equal(preflight.headers.get("access-control-allow-origin"), null);
    // Healthy afterwards: a completion is served and nothing is left running.
    const ok = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Once", max_tokens: 3 }),
    });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).choices.length, 1);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.match(metrics, /^denollm_num_requests_running\{model_name="[^"]*"\} 0$/m);
    // (A 503 is /health answering while the model loaded.)
    assert.doesNotMatch(metrics, /status="50[0-24-9]"/);
    assert.ok(!server.logs.some((l) => l.level === "error"), server.rawStderr.join("\n"));
  } finally {
    await server.close();
  }
});
