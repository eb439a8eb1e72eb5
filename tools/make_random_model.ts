// CLI: writes a deterministic random-weight model of a real shape as HF files and/or a GGUF file.
//
// deno run --allow-read --allow-write tools/make_random_model.ts --preset NAME --out DIR
//   [--seed N] [--dtype f32|f16|bf16] [--layers N] [--vocab N] [--formats hf,gguf]
//   [--max-shard-mb N] [--peaked]
// --peaked plants a next-token structure with large margins (tools/random_model/successor.ts).
import type { DType } from "../src/formats/tensor.ts";
import { getPreset, presetNames } from "./random_model/presets.ts";
import { generateRandomModel, type ModelFileFormat } from "./random_model/random_model.ts";

const USAGE = `usage: make_random_model.ts --preset NAME --out DIR [--seed N] [--dtype f32|f16|bf16]
       [--layers N] [--vocab N] [--formats hf,gguf] [--max-shard-mb N] [--peaked]
  --peaked  random weights plus a planted "successor" structure: each greedy token wins by
            several logits, even after 4-bit quantization (for greedy equality checks)
presets: ${presetNames().join(", ")}`;

const FLAGS = ["preset", "out", "seed", "dtype", "layers", "vocab", "formats", "max-shard-mb"];

function parseArgs(argv: string[]): Map<string, string> {
  const args = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--help" || flag === "-h") {
      console.log(USAGE);
      Deno.exit(0);
    }
    if (flag === "--peaked") {
      args.set("peaked", "true");
      continue;
    }
    const name = flag.startsWith("--") ? flag.slice(2) : "";
    if (!FLAGS.includes(name)) throw new TypeError(`Unknown argument ${flag}\n${USAGE}`);
    if (i + 1 >= argv.length) throw new TypeError(`Missing value for ${flag}`);
    args.set(name, argv[++i]);
  }
  return args;
}

function intArg(args: Map<string, string>, name: string): number | undefined {
  const raw = args.get(name);
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Expected --${name} to be a non-negative integer, found ${raw}`);
  }
  return value;
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const name = args.get("preset");
  const outDir = args.get("out");
  if (name === undefined || outDir === undefined) throw new TypeError(USAGE);
  const dtype = (args.get("dtype") ?? "f32").toUpperCase();
  if (dtype !== "F32" && dtype !== "F16" && dtype !== "BF16") {
    throw new RangeError(`Expected --dtype f32, f16 or bf16, found ${args.get("dtype")}`);
  }
  const formats = (args.get("formats") ?? "hf,gguf").split(",").map((f) => f.trim());
  const preset = getPreset(name, {
    numLayers: intArg(args, "layers"),
    vocabSize: intArg(args, "vocab"),
  });
  const shardMb = intArg(args, "max-shard-mb");

  const encoder = new TextEncoder();
  const isTty = Deno.stderr.isTerminal();
  let lastPercent = -1;
  const result = await generateRandomModel(preset, {
    seed: intArg(args, "seed") ?? 0,
    dtype: dtype as DType,
    outDir,
    formats: formats as ModelFileFormat[],
    peaked: args.has("peaked"),
    maxShardBytes: shardMb === undefined ? undefined : shardMb * 1_000_000,
    onProgress(done, total) {
      const percent = Math.floor((100 * done) / total);
      if (percent === lastPercent || (!isTty && percent % 10 !== 0)) return;
      lastPercent = percent;
      const line = `${preset.name}: ${percent}% (${(done / 1e6).toFixed(0)}/${
        (total / 1e6).toFixed(0)
      } MB)`;
      Deno.stderr.writeSync(encoder.encode(isTty ? `\r${line}` : `${line}\n`));
    },
  });
  if (isTty) Deno.stderr.writeSync(encoder.encode("\n"));
  const c = result.config;
  console.error(
    `${preset.name} ${dtype}${args.has("peaked") ? " peaked" : ""}: ${
      (result.numParams / 1e6).toFixed(1)
    }M params, ` +
      `${c.num_hidden_layers} layers, vocab ${c.vocab_size}, ${
        (result.elapsedMs / 1000).toFixed(1)
      } s`,
  );
  if (result.hfDir !== null) console.error(`  hf:   ${result.hfDir}`);
  if (result.ggufPath !== null) console.error(`  gguf: ${result.ggufPath}`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(error instanceof Error ? error.message : error);
    Deno.exit(1);
  }
}
