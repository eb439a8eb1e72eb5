// The tokenizer worker answers exactly what the synchronous tokenizer does, keeps error names
// across the boundary, and leaves the main event loop free while it works.
import assert from "node:assert/strict";
import { AsyncTokenizer } from "../src/api/async_tokenizer.ts";
import { chatPromptIds } from "../src/api/chat_prompt.ts";
import { MAX_INLINE_CHARS } from "../src/api/prompt_ids.ts";
import { openModelSource } from "../src/model/load.ts";
import { makeApi, modelDirWithTemplate, postJson } from "./api_helpers.ts";

const TEXTS = [
  "",
  "Once upon a time, there was a little girl named Lily.",
  "  leading spaces, tabs\tand\nnewlines\n\n",
  "Unicode: héllo wörld — 你好 🙂",
  "<|im_start|>user\nnot a control token unless parseSpecial<|im_end|>",
  "The cat sat on the mat. ".repeat(400),
];

const MESSAGES = [
  { role: "system" as const, content: "You are a storyteller." },
  { role: "user" as const, content: "Tell me about a dog." },
  { role: "assistant" as const, content: "Once there was a dog named Max." },
  { role: "user" as const, content: [{ type: "text" as const, text: "More, please." }] },
];

async function withTokenizers(
  fn: (
    sync: Awaited<ReturnType<typeof openModelSource>>,
    tokenizer: AsyncTokenizer,
  ) => Promise<void>,
): Promise<void> {
  const dir = await modelDirWithTemplate();
  try {
    const source = await openModelSource(dir);
    const tokenizer = await AsyncTokenizer.start(dir);
    try {
      await fn(source, tokenizer);
    } finally {
      await tokenizer.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("AsyncTokenizer encodes like the synchronous tokenizer", async () => {
  await withTokenizers(async (source, tokenizer) => {
    for (const text of TEXTS) {
      for (const opts of [{}, { addSpecial: false }, { parseSpecial: true }]) {
        assert.deepEqual(
          await tokenizer.encode(text, opts),
          source.tokenizer.encode(text, opts),
          `${JSON.stringify(text.slice(0, 40))} ${JSON.stringify(opts)}`,
        );
      }
    }
    // Concurrent requests come back to the right callers.
    const all = await Promise.all(TEXTS.map((text) => tokenizer.encode(text)));
    assert.deepEqual(all, TEXTS.map((text) => source.tokenizer.encode(text)));
  });
});

Deno.test("AsyncTokenizer renders chat prompts like chatPromptIds", async () => {
  await withTokenizers(async (source, tokenizer) => {
    for (const opts of [{}, { addGenerationPrompt: false }, { addSpecial: true }]) {
      assert.deepEqual(
        await tokenizer.chatPromptIds(MESSAGES, opts),
        chatPromptIds(source.tokenizer, source.chatTemplate, MESSAGES, opts),
      );
    }
  });
});

Deno.test("AsyncTokenizer re-raises a chat template error with its name", async () => {
  const dir = await modelDirWithTemplate();
  try {
    const configPath = `${dir}/tokenizer_config.json`;
    const config = JSON.parse(await Deno.readTextFile(configPath));
    config.chat_template = "{{ raise_exception('roles must alternate') }}";
    await Deno.writeTextFile(configPath, JSON.stringify(config));
    const tokenizer = await AsyncTokenizer.start(dir);
    try {
      await assert.rejects(
        tokenizer.chatPromptIds(MESSAGES),
        (e: Error) => e.name === "ChatTemplateError" && /roles must alternate/.test(e.message),
      );
      // The worker survives a request's error.
      assert.ok((await tokenizer.encode("still here")).length > 0);
    } finally {
      await tokenizer.close();
    }
    await assert.rejects(tokenizer.encode("closed"), /closed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AsyncTokenizer keeps the event loop free while it tokenizes a long prompt", async () => {
  await withTokenizers(async (_source, tokenizer) => {
    const text = "Once upon a time, a little dog ran in the park. ".repeat(21_000); // ~1 MB
    let numTicks = 0;
    let numTicksAtResolve = -1;
    const timer = setInterval(() => numTicks++, 1);
    try {
      const ids = await tokenizer.encode(text).finally(() => (numTicksAtResolve = numTicks));
      assert.ok(numTicksAtResolve >= 1, "the timer fired while the worker tokenized");
      // Equality with the synchronous tokenizer is tested above; encoding 1 MB here again costs 2 s.
      assert.ok(ids.length > text.length / 10);
    } finally {
      clearInterval(timer);
    }
  });
});

Deno.test("the routes tokenize long prompts on deps.asyncTokenizer", async () => {
  const dir = await modelDirWithTemplate();
  const tokenizer = await AsyncTokenizer.start(dir);
  await Deno.remove(dir, { recursive: true });
  const calls: string[] = [];
  // /tokenize reads only these two fields of the engine.
  const engine = { maxModelLen: 1 << 20, stats: { numWaiting: 0 } };
  try {
    const { app, deps } = await makeApi(engine as never, {
      asyncTokenizer: {
        encode: (text, opts) => {
          calls.push("encode");
          return tokenizer.encode(text, opts);
        },
        chatPromptIds: (messages, opts) => {
          calls.push("chat");
          return tokenizer.chatPromptIds(messages, opts);
        },
      },
    });
    const long = "a tale of two cats ".repeat(MAX_INLINE_CHARS / 10);
    const prompt = await postJson(app, "/tokenize", { prompt: long });
    assert.deepEqual(prompt.tokens, deps.tokenizer.encode(long));
    const messages = [{ role: "user" as const, content: long }];
    const chat = await postJson(app, "/tokenize", { messages });
    assert.deepEqual(chat.tokens, chatPromptIds(deps.tokenizer, deps.chatTemplate, messages));
    assert.deepEqual(calls, ["encode", "chat"]);
    // Short texts stay on the main thread.
    await postJson(app, "/tokenize", { prompt: "short" });
    assert.deepEqual(calls, ["encode", "chat"]);
  } finally {
    await tokenizer.close();
  }
});
