// The peaked random model (make-model --peaked): through the serving engine its greedy tokens walk
// the planted successor permutation, which is what makes greedy equality with llama.cpp meaningful
// on quantized files (tests/quant_llamacpp_test.ts); a shape too small for it is refused clearly.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { getPreset } from "../tools/random_model/presets.ts";
import { generateRandomModel, peakedStructure } from "../tools/random_model/random_model.ts";

Deno.test("peaked random models: greedy tokens follow the planted successor", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "denollm-peaked-" });
  const backend = NativeBackend.open({ numThreads: 1 });
  try {
    for (const name of ["tiny-qwen2", "tiny-llama-untied", "smollm-135m"]) {
      await t.step(name, async () => {
        const preset = getPreset(name, { numLayers: 2, vocabSize: 1024 });
        const seed = 5;
        const made = await generateRandomModel(preset, {
          outDir: `${dir}/${name}`,
          seed,
          formats: ["gguf"],
          peaked: true,
        });
        const plain = await generateRandomModel(preset, {
          outDir: `${dir}/${name}-plain`,
          seed,
          formats: ["gguf"],
        });
        const structure = peakedStructure(made.config, seed);
        for (
          const [path, isPeaked] of [[made.ggufPath!, true], [plain.ggufPath!, false]] as const
        ) {
          const loaded = await loadModel(backend, path, { showProgress: false });
          const llm = LLM.over(backend, loaded, { blockSize: 16, numKvBlocks: 8 });
          try {
            const promptIds = loaded.tokenizer.encode("Once upon a time, 42 cats");
            const ids = llm.generate({
              promptIds,
              maxTokens: 48,
              sampling: GREEDY,
              ignoreEos: true,
            }).tokenIds;
            const expected: number[] = [];
            for (let prev = promptIds.at(-1)!; expected.length < 48;) {
              prev = structure.successorOf(prev);
              expected.push(prev);
            }
            if (isPeaked) {
              assert.deepEqual(ids, expected);
            } else {
              // The plain model has no such structure: the check above is not vacuous.
              assert.notDeepEqual(ids, expected);
            }
          } finally {
            llm.release();
            loaded.release();
          }
        }
      });
    }
    await t.step("a shape without room for the codes is refused", async () => {
      const preset = getPreset("tiny-qwen2");
      preset.config.intermediate_size = 16;
      await assert.rejects(
        generateRandomModel(preset, { outDir: `${dir}/small`, formats: ["gguf"], peaked: true }),
        /Expected hidden_size >= 33 and intermediate_size >= \(hidden_size - 1\) \/ 2.*found 64 and 16/,
      );
    });
  } finally {
    backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});
