// Shared setup for the API tests: a real engine on stories260K, an app around it, and helpers to
// post JSON, read SSE streams and check OpenAI's error shape.
import assert from "node:assert/strict";
import { type ApiDeps, createApp, type InflightTracker, Metrics } from "../src/api/mod.ts";
import { AsyncEngine } from "../src/engine/async_engine.ts";
import { openModelSource } from "../src/model/load.ts";
import type { Hono } from "hono";

export const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
export const SERVED_NAME = "stories260K";

/** A ChatML-ish template; `{{ bos_token }}` first so the BOS-doubling rule is exercised. */
export const CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** A copy of the model's HF directory with {@link CHAT_TEMPLATE} in tokenizer_config.json. */
export async function modelDirWithTemplate(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "denollm_api_" });
  for await (const entry of Deno.readDir(MODEL)) {
    if (entry.isFile) await Deno.copyFile(`${MODEL}/${entry.name}`, `${dir}/${entry.name}`);
  }
  const configPath = `${dir}/tokenizer_config.json`;
  const config = JSON.parse(await Deno.readTextFile(configPath));
  config.chat_template = CHAT_TEMPLATE;
  await Deno.writeTextFile(configPath, JSON.stringify(config));
  return dir;
}

export function startEngine(): Promise<AsyncEngine> {
  return AsyncEngine.start({
    modelPath: MODEL,
    numThreads: 2,
    kvCacheMemoryBytes: 8 << 20,
    maxModelLen: 512,
    maxNumBatchedTokens: 256,
    maxNumSeqs: 32,
  });
}

export interface TestApi {
  app: Hono;
  inflight: InflightTracker;
  deps: ApiDeps;
  logs: { level: string; msg: string; fields?: Record<string, unknown> }[];
}

/** An app on `engine` (undefined: still loading) with the template-bearing tokenizer source. */
export async function makeApi(
  engine: ApiDeps["getEngine"] extends () => infer E ? E : never,
  overrides: Partial<ApiDeps> = {},
): Promise<TestApi> {
  const dir = await modelDirWithTemplate();
  const source = await openModelSource(dir);
  await Deno.remove(dir, { recursive: true });
  const logs: TestApi["logs"] = [];
  const deps: ApiDeps = {
    getEngine: () => engine,
    tokenizer: source.tokenizer,
    chatTemplate: source.chatTemplate,
    servedModelName: SERVED_NAME,
    version: "0.0.0-test",
    maxQueuedRequests: 64,
    metrics: new Metrics({ modelName: SERVED_NAME }),
    log: (level, msg, fields) => logs.push({ level, msg, fields }),
    ...overrides,
  };
  const { app, inflight } = createApp(deps);
  return { app, inflight, deps, logs };
}

export function post(
  app: Hono,
  path: string,
  body: unknown,
  init: RequestInit = {},
): Promise<Response> {
  return Promise.resolve(app.request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...init.headers },
    body: typeof body === "string" || body instanceof Uint8Array
      ? body as BodyInit
      : JSON.stringify(body),
    ...(init.signal ? { signal: init.signal } : {}),
  }));
}

/** Posts and returns the JSON body, asserting the status. */
export async function postJson(
  app: Hono,
  path: string,
  body: unknown,
  status = 200,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  const res = await post(app, path, body);
  const json = await res.json();
  assert.equal(res.status, status, JSON.stringify(json));
  return json;
}

/** Reads a whole SSE response: the parsed `data:` events and whether `[DONE]` ended it. */
// deno-lint-ignore no-explicit-any
export async function readSse(res: Response): Promise<{ events: any[]; isDone: boolean }> {
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  const text = await res.text();
  assert.ok(text.endsWith("\n\n"), "every event ends with a blank line");
  const blocks = text.slice(0, -2).split("\n\n");
  // deno-lint-ignore no-explicit-any
  const events: any[] = [];
  let isDone = false;
  for (const block of blocks) {
    assert.ok(block.startsWith("data: "), `an SSE data line, got ${JSON.stringify(block)}`);
    assert.ok(!isDone, "nothing after [DONE]");
    const data = block.slice("data: ".length);
    if (data === "[DONE]") isDone = true;
    else events.push(JSON.parse(data));
  }
  return { events, isDone };
}

/** Asserts OpenAI's error JSON (and no stack trace) and returns its `error` object. */
export function assertErrorBody(
  // deno-lint-ignore no-explicit-any
  body: any,
): { message: string; type: string; param: string | null; code: string | null } {
  assert.equal(typeof body, "object");
  assert.deepEqual(Object.keys(body), ["error"]);
  const error = body.error;
  assert.deepEqual(Object.keys(error).sort(), ["code", "message", "param", "type"]);
  assert.equal(typeof error.message, "string");
  assert.ok(error.message.length > 0);
  assert.equal(typeof error.type, "string");
  assert.ok(error.param === null || typeof error.param === "string");
  assert.ok(error.code === null || typeof error.code === "string");
  assert.doesNotMatch(error.message, /\n\s+at /, "no stack trace");
  return error;
}

/** Sends a request expecting an error status; returns the error object. */
export async function expectError(
  res: Response | Promise<Response>,
  status: number,
): Promise<{ message: string; type: string; param: string | null; code: string | null }> {
  const r = await res;
  const text = await r.text();
  assert.equal(r.status, status, text);
  assert.match(r.headers.get("content-type") ?? "", /^application\/json/);
  return assertErrorBody(JSON.parse(text));
}

/** Polls until `predicate` holds, failing after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error("Timed out waiting for a condition");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
