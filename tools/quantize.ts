// `deno task quantize IN OUT --type q4_k_m`: writes a quantized GGUF (llama.cpp loads it) of an
// F32/F16/BF16 GGUF model, with denollm's own quantizers (the native library's dl_quantize).
import { parseArgs } from "node:util";
import { NativeBackend } from "../ffi/native.ts";
import { presetNames, quantPreset } from "./quantize/recipe.ts";
import { quantizeGguf } from "./quantize/quantize_gguf.ts";

const USAGE = `usage: deno task quantize IN.gguf OUT.gguf --type TYPE [--pure] [--threads N]

Quantizes an F32, F16 or BF16 GGUF model into a GGUF llama.cpp and denollm load.
  --type TYPE     ${presetNames()}
                  (the _m mixtures give Q6_K to attn_v and the outer ffn_down layers; every type
                  but q8_0 gives the output head Q6_K; docs/quantization.md has the recipe)
  --pure          every 2-D weight in TYPE's format, the head included; a tensor whose rows do not
                  split into TYPE's blocks is an error instead of falling back
  --threads N     CPU threads (default 0 = all cores)
  --library PATH  native library (default build/libdenollm_cpu.so)`;

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        type: { type: "string" },
        pure: { type: "boolean" },
        threads: { type: "string" },
        library: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 2 || values.type === undefined) {
    console.error(
      `Expected IN, OUT and --type, found ${positionals.length} paths` +
        `${values.type === undefined ? " and no --type" : ""}\n${USAGE}`,
    );
    return 2;
  }
  const [inPath, outPath] = positionals;
  let preset;
  try {
    preset = quantPreset(values.type);
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  if (!inPath.endsWith(".gguf")) {
    console.error(
      `Expected IN to be a .gguf file, found ${inPath}: Hugging Face directories are not read yet ` +
        "(convert one with llama.cpp's convert_hf_to_gguf.py, or make random ones with " +
        "deno task make-model --formats gguf)",
    );
    return 2;
  }
  const threads = Number(values.threads ?? 0);
  if (!Number.isSafeInteger(threads) || threads < 0) {
    console.error(`--threads expects an integer of at least 0, found "${values.threads}"`);
    return 2;
  }
  const backend = NativeBackend.open({ numThreads: threads, libraryPath: values.library });
  try {
    const started = performance.now();
    const result = await quantizeGguf(backend, { inPath, outPath }, preset, {
      isPure: values.pure,
      onTensor: (name, format, done, total) =>
        console.error(`[${done}/${total}] ${name} ${format}`),
    });
    const counts = new Map<string, number>();
    for (const t of result.tensors) counts.set(t.format, (counts.get(t.format) ?? 0) + 1);
    console.error(
      `wrote ${outPath}: ${(result.sizeBytes / 1e6).toFixed(2)} MB of tensors, ` +
        `${result.bitsPerWeight.toFixed(2)} bits per weight (${
          [...counts].map(([f, n]) => `${n} ${f}`).join(", ")
        }) in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
    return 0;
  } finally {
    backend.close();
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`quantize: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
