// End to end on the real stories260K model: our greedy tokens from the HF directory and from the
// GGUF equal llama.cpp's (tests/fixtures/llamacpp/stories260K.json, made by tools/llamacpp/).
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
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
    // The serving engine; a block size that does not divide the sequence exercises partial blocks.
    const llm = LLM.over(backend, loaded, { blockSize: 5, numKvBlocks: 40 });
    try {
      const promptIds = loaded.tokenizer.encode(fixture.generate.prompt);
      assert.deepEqual(promptIds, fixture.generate.promptIds);
      const request = {
        promptIds,
        maxTokens: fixture.generate.n,
        sampling: GREEDY,
        ignoreEos: true,
      };
      // Streamed, as the server sees it, then run to the end: the same tokens and text.
      let text = "";
      const streamed: number[] = [];
      for (const out of llm.stream(request.promptIds, request)) {
        text += out.textDelta;
        streamed.push(...out.newTokenIds);
      }
      const result = llm.generate(request);
      assert.deepEqual(streamed, fixture.generate.generatedIds);
      assert.deepEqual(result.tokenIds, fixture.generate.generatedIds);
      assert.equal(result.finishReason, "length");
      assert.equal(result.text, text);
      assert.equal(text, fixture.generate.text);
    } finally {
      llm.release();
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
