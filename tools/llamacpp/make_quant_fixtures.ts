// Regenerates tests/fixtures/llamacpp/quant_<source>.json: for each F32 source and preset, the
// quantized file's sha256 and tensor types and llama.cpp's greedy ids on it (reference.mjs); the
// F32 source itself comes first, as preset "F32".
// Usage: bash tools/llamacpp/install.sh && deno run -A tools/llamacpp/make_quant_fixtures.ts [source...]
import { readGguf } from "../../src/formats/gguf.ts";
import {
  NUM_TOKENS,
  QUANT_PRESETS,
  QUANT_SOURCES,
  quantizeWithLlamaCpp,
  sha256File,
  sourceGguf,
} from "./quant_fixtures.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const THREADS = 1;

async function reference(args: string[]): Promise<Record<string, unknown>> {
  const result = await new Deno.Command("node", {
    args: [`${ROOT}tools/llamacpp/reference.mjs`, ...args],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!result.success) throw new Error(`reference.mjs ${args.join(" ")} failed`);
  return JSON.parse(new TextDecoder().decode(result.stdout));
}

/** How many tensors of each type the file holds: the mix llama.cpp's preset chose. */
async function tensorTypes(path: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const info of (await readGguf(path)).tensors.values()) {
    counts[info.dtype] = (counts[info.dtype] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort());
}

const wanted = Deno.args.length > 0 ? Deno.args : QUANT_SOURCES.map((s) => s.name);
const work = await Deno.makeTempDir({ prefix: "denollm-quant-fx-" });
try {
  for (const source of QUANT_SOURCES.filter((s) => wanted.includes(s.name))) {
    const input = await sourceGguf(source, work);
    const files = [];
    let version = "";
    for (const preset of ["F32", ...QUANT_PRESETS] as const) {
      const output = preset === "F32" ? input : `${work}/${source.name}-${preset}.gguf`;
      if (preset !== "F32") await quantizeWithLlamaCpp(input, output, preset);
      const args = ["--model", output, "--prompt", source.prompt, "--n", `${NUM_TOKENS}`];
      const gen = await reference(["generate", ...args, "--threads", `${THREADS}`]);
      version = String(gen.nodeLlamaCppVersion);
      files.push({
        preset,
        sha256: await sha256File(output),
        sizeBytes: (await Deno.stat(output)).size,
        tensorTypes: await tensorTypes(output),
        promptIds: gen.promptIds,
        generatedIds: gen.generatedIds,
        text: gen.text,
      });
      if (preset !== "F32") await Deno.remove(output);
      console.error(`${source.name} ${preset}: done`);
    }
    const fixture = {
      description: `llama.cpp (node-llama-cpp, CPU) quantized ${source.name}: each file made by ` +
        "llama_model_quantize (tools/llamacpp/quantize.sh) and llama.cpp's greedy ids on it " +
        "(preset F32: the unquantized source); " +
        "regenerate, never hand-edit",
      regenerate: "bash tools/llamacpp/install.sh && " +
        `deno run -A tools/llamacpp/make_quant_fixtures.ts ${source.name}`,
      nodeLlamaCppVersion: version,
      source: {
        ...(source.random ?? { path: source.sharedPath }),
        dtype: "F32",
        sha256: await sha256File(input),
      },
      generate: {
        prompt: source.prompt,
        n: NUM_TOKENS,
        threads: THREADS,
        sampling: "greedy argmax, no penalties",
        eos: "continue",
        command: "node tools/llamacpp/reference.mjs generate --model FILE --prompt PROMPT " +
          `--n ${NUM_TOKENS} --threads ${THREADS}`,
      },
      files,
    };
    const out = `${ROOT}tests/fixtures/llamacpp/quant_${source.name}.json`;
    await Deno.writeTextFile(out, JSON.stringify(fixture, null, 2) + "\n");
    await new Deno.Command("deno", { args: ["fmt", "--quiet", out] }).output();
    console.error(`wrote ${out}`);
  }
} finally {
  await Deno.remove(work, { recursive: true });
}
