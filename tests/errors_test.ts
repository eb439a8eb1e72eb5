// Error codes: every error class keeps its code, name and message through errorInfo and
// errorFromInfo (and a real worker), and the API answers each code with its status.
import assert from "node:assert/strict";
import type { EngineClient } from "../src/api/mod.ts";
import { TokenizerWorkerError } from "../src/api/async_tokenizer.ts";
import { EngineError } from "../src/engine/async_engine.ts";
import type { EngineStats } from "../src/engine/engine.ts";
import { GREEDY } from "../src/sampling.ts";
import {
  DenollmError,
  ERROR_CODES,
  type ErrorCode,
  errorCode,
  errorFromInfo,
  errorInfo,
  isErrorCode,
  OutOfKvBlocksError,
  RemoteError,
  RequestIdError,
  RequestTooLongError,
  UsageError,
} from "../src/errors.ts";
import { ModelFormatError } from "../src/formats/errors.ts";
import { HubError } from "../src/hub/download.ts";
import { DeviceError } from "../src/server/device.ts";
import { ChatTemplateError } from "../src/tokenizer/chat_template.ts";
import { TokenizerError } from "../src/tokenizer/tokenizer.ts";
import { expectError, makeApi, post, SERVED_NAME, startEngine } from "./api_helpers.ts";

const COMPLETION = { model: SERVED_NAME, prompt: "Once upon a time", max_tokens: 4 };
const GENERIC_500 = "The server had an error while processing your request";

/** Each class (and thrown value) with the code and name it must keep. */
const CASES: { error: unknown; code: ErrorCode; name: string }[] = [
  {
    error: new RequestTooLongError("603 tokens > 512"),
    code: "request_too_long",
    name: "RequestTooLongError",
  },
  { error: new RequestIdError("id in use"), code: "request_id_in_use", name: "RequestIdError" },
  { error: new OutOfKvBlocksError(3, 1), code: "out_of_kv_blocks", name: "OutOfKvBlocksError" },
  { error: new UsageError("--port: bad"), code: "usage", name: "UsageError" },
  {
    error: new ModelFormatError("a.gguf", "truncated"),
    code: "model_format",
    name: "ModelFormatError",
  },
  {
    error: new TokenizerError("tokenizer.json", "no model"),
    code: "model_format",
    name: "TokenizerError",
  },
  {
    error: new ChatTemplateError("roles must alternate"),
    code: "chat_template",
    name: "ChatTemplateError",
  },
  { error: new HubError("no such repo"), code: "hub", name: "HubError" },
  { error: new DeviceError("no GPU"), code: "device", name: "DeviceError" },
  { error: new DenollmError("worker_failed", "gone"), code: "worker_failed", name: "DenollmError" },
  { error: new RangeError("Expected a token id"), code: "invalid_argument", name: "RangeError" },
  { error: new TypeError("Expected a number"), code: "invalid_argument", name: "TypeError" },
  { error: new Error("kernel exploded"), code: "internal", name: "Error" },
  { error: "a thrown string", code: "internal", name: "Error" },
];

Deno.test("errorInfo and errorFromInfo keep the code, name and message", () => {
  for (const { error, code, name } of CASES) {
    const info = errorInfo(error);
    const message = error instanceof Error ? error.message : String(error);
    assert.deepEqual(info, { code, name, message }, name);
    assert.equal(errorCode(error), code, name);
    // What postMessage does to it on the way.
    const rebuilt = errorFromInfo(structuredClone(info));
    assert.ok(rebuilt instanceof RemoteError && rebuilt instanceof DenollmError, name);
    assert.equal(rebuilt.code, code, name);
    assert.equal(rebuilt.name, name);
    assert.equal(rebuilt.message, message, name);
    assert.deepEqual(errorInfo(rebuilt), info, `${name}: a second trip changes nothing`);
  }
});

Deno.test("the domain classes keep their names, instanceof and codes", () => {
  assert.ok(new TokenizerError("f", "d") instanceof ModelFormatError);
  for (const { error, code } of CASES) {
    if (error instanceof DenollmError) assert.equal(error.code, code);
  }
  assert.equal(new OutOfKvBlocksError(3, 1).message, "Out of KV cache blocks: needed 3, 1 free");
  assert.equal(new ModelFormatError("a.gguf", "truncated").message, "a.gguf: truncated");
  assert.ok(ERROR_CODES.every(isErrorCode));
  assert.ok(!isErrorCode("ENOENT"));
});

Deno.test("an error without a code of its own gets one from its class name", () => {
  const cases: [string, ErrorCode][] = [
    ["NativeError", "native"],
    ["LibraryLoadError", "native"],
    ["RangeError", "invalid_argument"],
    ["TypeError", "invalid_argument"],
    ["Error", "internal"],
    ["SomethingElse", "internal"],
  ];
  for (const [name, code] of cases) {
    const error = new Error("m");
    error.name = name;
    assert.equal(errorCode(error), code, name);
    assert.equal(errorInfo(error).code, code, name);
  }
  // An ffi/ class (no code of its own) thrown on this thread is classified by name, too.
  class NativeError extends Error {
    override name = "NativeError";
  }
  assert.equal(errorCode(new NativeError("f failed")), "native");
  const fromWorker = new TokenizerWorkerError({
    code: "chat_template",
    name: "ChatTemplateError",
    message: "roles must alternate",
  });
  assert.ok(fromWorker instanceof RemoteError);
  assert.equal(fromWorker.code, "chat_template");
});

Deno.test("codes cross the engine worker", async () => {
  const engine = await startEngine();
  try {
    const drain = async (stream: AsyncIterable<unknown>) => {
      for await (const _ of stream);
    };
    const params = { maxTokens: 1000, sampling: GREEDY };
    await assert.rejects(
      () => drain(engine.generate("too-long", [1, 2, 3], params)),
      (e) =>
        e instanceof EngineError && e.code === "request_too_long" &&
        e.name === "RequestTooLongError",
    );
    await assert.rejects(
      () => drain(engine.generate("bad-token", [1, 99999], { ...params, maxTokens: 1 })),
      (e) => e instanceof EngineError && e.code === "invalid_argument" && e.name === "RangeError",
    );
  } finally {
    await engine.shutdown();
  }
});

/** What the API answers for each code (the client-fixable ones with the error's message). */
const EXPECTED: Record<
  ErrorCode,
  { status: number; type: string; param?: string; code?: string } | null
> = {
  invalid_argument: { status: 400, type: "invalid_request_error" },
  request_too_long: { status: 400, type: "invalid_request_error", code: "context_length_exceeded" },
  chat_template: { status: 400, type: "invalid_request_error", param: "messages" },
  usage: null,
  request_id_in_use: null,
  out_of_kv_blocks: null,
  model_format: null,
  hub: null,
  device: null,
  native: null,
  worker_failed: null,
  internal: null,
};

const STATS: EngineStats = {
  numRunning: 0,
  numWaiting: 0,
  numKvBlocks: 1,
  numFreeKvBlocks: 1,
  prefixCacheQueries: 0,
  prefixCacheHits: 0,
  numPreemptions: 0,
  numKvTokensInUse: 0,
  numSteps: 0,
  lastStepPrefillTokens: 0,
  lastStepDecodeTokens: 0,
};

/** An engine whose every request fails with `error` on its first output. */
function failingEngine(error: unknown): EngineClient {
  return {
    generate: () => ({
      next: () => Promise.reject(error),
      [Symbol.asyncIterator]() {
        return this;
      },
    }),
    abort: () => {},
    stats: STATS,
    maxModelLen: 512,
  };
}

Deno.test("the API answers each error code with its status", async (t) => {
  for (const code of ERROR_CODES) {
    await t.step(code, async () => {
      const message = `a ${code} error`;
      const { app, logs } = await makeApi(
        failingEngine(errorFromInfo({ code, name: "SomeError", message })),
      );
      const expected = EXPECTED[code];
      const error = await expectError(
        post(app, "/v1/completions", COMPLETION),
        expected?.status ?? 500,
      );
      if (expected === null) {
        assert.deepEqual(error, {
          message: GENERIC_500,
          type: "server_error",
          param: null,
          code: null,
        });
        if (code === "worker_failed") {
          // The daemon logs a dead worker once, as one line, and exits: requests add nothing.
          assert.equal(logs.length, 0);
        } else {
          assert.equal(logs.length, 1);
          assert.equal(logs[0].fields?.message, message);
        }
      } else {
        assert.deepEqual(error, {
          message,
          type: expected.type,
          param: expected.param ?? null,
          code: expected.code ?? null,
        });
        assert.equal(logs.length, 0);
      }
    });
  }

  await t.step("unknown errors are a generic 500", async () => {
    // A RangeError thrown on the API's own thread is a bug there, not the client's fault.
    for (const thrown of [new Error("secret detail"), new RangeError("secret detail")]) {
      const { app, logs } = await makeApi(failingEngine(thrown));
      const error = await expectError(post(app, "/v1/completions", COMPLETION), 500);
      assert.deepEqual(error, {
        message: GENERIC_500,
        type: "server_error",
        param: null,
        code: null,
      });
      assert.equal(logs.length, 1);
    }
  });
});
