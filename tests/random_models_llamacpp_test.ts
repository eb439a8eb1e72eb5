// Random-weight models of two shapes (Qwen2 with GQA and QKV bias; Llama with MQA and an untied
// LM head), regenerated from their seed: our greedy tokens and tokenization equal llama.cpp's
// (tests/fixtures/llamacpp/random_*.json, made by tools/llamacpp/make_random_fixtures.sh).
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { generateRandomModel } from "../src/random_model/random_model.ts";
import { GREEDY } from "../src/sampling.ts";

for (const preset of ["tiny-qwen2", "tiny-llama-untied"]) {
  const fixture = JSON.parse(
    Deno.readTextFileSync(new URL(`./fixtures/llamacpp/random_${preset}.json`, import.meta.url)),
  );

  Deno.test(`${preset}: greedy tokens and tokenization equal llama.cpp's, HF and GGUF`, async (t) => {
    const dir = await Deno.makeTempDir({ prefix: `denollm-${preset}-` });
    const backend = NativeBackend.open({ numThreads: 2 });
    try {
      const made = await generateRandomModel(preset, {
        outDir: dir,
        seed: fixture.model.seed,
        dtype: fixture.model.dtype,
      });
      for (const [format, path] of [["hf", made.hfDir], ["gguf", made.ggufPath]] as const) {
        await t.step(format, async () => {
          const loaded = await loadModel(backend, path!, { showProgress: false });
          const llm = LLM.over(backend, loaded, { blockSize: 16, numKvBlocks: 8 });
          try {
            const promptIds = loaded.tokenizer.encode(fixture.generate.prompt);
            assert.deepEqual(promptIds, fixture.generate.promptIds);
            const result = llm.generate({
              promptIds,
              maxTokens: fixture.generate.n,
              sampling: GREEDY,
              ignoreEos: true,
            });
            assert.deepEqual(result.tokenIds, fixture.generate.generatedIds);
            for (const { text, ids } of fixture.tokenize.cases) {
              assert.deepEqual(
                loaded.tokenizer.encode(text, { addSpecial: false }),
                ids,
                `tokens of ${JSON.stringify(text)}`,
              );
            }
          } finally {
            llm.release();
            loaded.release();
          }
        });
      }
    } finally {
      backend.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}
