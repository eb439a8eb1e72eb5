// End to end on the real stories260K model: our greedy tokens from the HF directory and from the
// GGUF equal llama.cpp's (tests/fixtures/llamacpp/stories260K.json, made by tools/llamacpp/).
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { generate } from "../src/generate.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const fixture = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/llamacpp/stories260K.json", import.meta.url)),
);

for (
  const [format, path] of [["hf", `${MODEL_DIR}/hf`], [
    "gguf",
    `${MODEL_DIR}/stories260K-f32.gguf`,
  ]]
) {
  Deno.test(`stories260K ${format}: greedy 64 tokens equal llama.cpp's`, async () => {
    const backend = NativeBackend.open({ numThreads: 2 });
    const loaded = await loadModel(backend, path, { showProgress: false });
    // A block size that does not divide the sequence exercises partial blocks.
    const kv = new KvCache(backend, loaded.config, { blockSize: 5, numBlocks: 40 });
    try {
      const promptIds = loaded.tokenizer.encode(fixture.generate.prompt);
      assert.deepEqual(promptIds, fixture.generate.promptIds);
      const stream = generate({ model: loaded.model, tokenizer: loaded.tokenizer, kv }, {
        promptIds,
        maxTokens: fixture.generate.n,
        sampling: GREEDY,
        ignoreEos: true,
      });
      let step = stream.next();
      let text = "";
      while (!step.done) {
        text += step.value.text;
        step = stream.next();
      }
      assert.deepEqual(step.value.tokenIds, fixture.generate.generatedIds);
      assert.equal(step.value.finishReason, "length");
      assert.equal(step.value.text, text);
      assert.equal(text, fixture.generate.text);
    } finally {
      kv.release();
      loaded.release();
      backend.close();
    }
  });

  Deno.test(`stories260K ${format}: tokenization equals llama.cpp's`, async () => {
    const { openModelSource } = await import("../src/model/load.ts");
    const source = await openModelSource(path);
    for (const { text, ids } of fixture.tokenize.cases) {
      assert.deepEqual(
        source.tokenizer.encode(text, { addSpecial: false }),
        ids,
        `tokens of ${JSON.stringify(text)}`,
      );
    }
  });
}
