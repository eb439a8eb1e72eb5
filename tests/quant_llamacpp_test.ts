// Quantized GGUFs made by llama.cpp's own quantizer, remade here (tools/llamacpp/quantize.sh) and
// checked to be the very bytes llama.cpp ran on: through the serving engine our greedy tokens
// equal llama.cpp's (tests/fixtures/llamacpp/quant_*.json, tools/llamacpp/make_quant_fixtures.ts).
// The random-weight sources are peaked (tools/random_model/successor.ts), so their greedy tokens
// win by several logits and a mismatch means a kernel bug, not a near-tie.
// Needs node-llama-cpp (bash tools/llamacpp/install.sh); without it the tests are ignored, unless
// DENOLLM_REQUIRE_LLAMACPP=1 (CI sets it) makes them run and fail.
import assert from "node:assert/strict";
import { NativeBackend } from "../ffi/native.ts";
import { LLM } from "../src/engine/llm.ts";
import { readGguf } from "../src/formats/gguf.ts";
import { loadModel } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";
import { peakedStructure } from "../tools/random_model/random_model.ts";
import {
  GREEDY_SKIPPED,
  hasLlamaCpp,
  QUANT_SOURCES,
  quantizeWithLlamaCpp,
  randomSourcePreset,
  sha256File,
  sourceGguf,
} from "../tools/llamacpp/quant_fixtures.ts";
import type { QuantPreset } from "../tools/llamacpp/quant_fixtures.ts";

interface QuantFixture {
  source: { sha256: string; seed?: number; peaked?: boolean };
  generate: { prompt: string; n: number };
  files: {
    /** "F32": the unquantized source, as a baseline. */
    preset: QuantPreset | "F32";
    sha256: string;
    tensorTypes: Record<string, number>;
    promptIds: number[];
    generatedIds: number[];
  }[];
}

const isIgnored = !hasLlamaCpp() && Deno.env.get("DENOLLM_REQUIRE_LLAMACPP") !== "1";

for (const source of QUANT_SOURCES) {
  const fixture: QuantFixture = JSON.parse(
    Deno.readTextFileSync(
      new URL(`./fixtures/llamacpp/quant_${source.name}.json`, import.meta.url),
    ),
  );

  Deno.test({
    name: `${source.name}: llama.cpp's quantized files give llama.cpp's greedy tokens`,
    ignore: isIgnored,
    async fn(t) {
      const dir = await Deno.makeTempDir({ prefix: `denollm-quant-${source.name}-` });
      const backend = NativeBackend.open({ numThreads: 1 });
      try {
        const input = await sourceGguf(source, dir);
        assert.equal(await sha256File(input), fixture.source.sha256, "the F32 source changed");
        for (const file of fixture.files) {
          const skipped = GREEDY_SKIPPED[source.name]?.[file.preset];
          if (skipped !== undefined) {
            // A near-tie, not a check (tools/llamacpp/quant_fixtures.ts GREEDY_SKIPPED).
            await t.step({ name: `${file.preset}: ${skipped}`, ignore: true, fn() {} });
            continue;
          }
          await t.step(file.preset, async () => {
            const isSource = file.preset === "F32";
            const path = isSource ? input : `${dir}/${source.name}-${file.preset}.gguf`;
            if (file.preset !== "F32") await quantizeWithLlamaCpp(input, path, file.preset);
            assert.equal(await sha256File(path), file.sha256, "llama.cpp's quantizer changed");
            const types: Record<string, number> = {};
            for (const info of (await readGguf(path)).tensors.values()) {
              types[info.dtype] = (types[info.dtype] ?? 0) + 1;
            }
            assert.deepEqual(types, file.tensorTypes);

            const loaded = await loadModel(backend, path, { showProgress: false });
            const llm = LLM.over(backend, loaded, {
              blockSize: 16,
              numKvBlocks: 8,
              // llama.cpp's KV cache (reference.mjs: node-llama-cpp's default) holds f16.
              kvCacheDtype: "f16",
            });
            try {
              const promptIds = loaded.tokenizer.encode(fixture.generate.prompt);
              assert.deepEqual(promptIds, file.promptIds);
              const result = llm.generate({
                promptIds,
                maxTokens: fixture.generate.n,
                sampling: GREEDY,
                ignoreEos: true,
              });
              assert.deepEqual(result.tokenIds, file.generatedIds);
              if (fixture.source.peaked === true) {
                // How much of llama.cpp's output the planted structure decides (tokens that are
                // its successor walk): a measure of the margins, printed, not asserted.
                const config = randomSourcePreset(source).config;
                const structure = peakedStructure(config, fixture.source.seed!);
                let prev = promptIds.at(-1)!;
                let walked = 0;
                for (const id of file.generatedIds) {
                  if (id === structure.successorOf(prev)) walked++;
                  prev = id;
                }
                console.log(
                  `${source.name} ${file.preset}: ${walked}/${file.generatedIds.length} of ` +
                    "llama.cpp's tokens are the planted successor of the one before",
                );
              }
            } finally {
              llm.release();
              loaded.release();
              if (!isSource) await Deno.remove(path);
            }
          });
        }
      } finally {
        backend.close();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
