// `denollm distill-export`: a teacher's top-K next-token logprobs at every position of every text,
// computed in the prefill pass of each text (texts batched together), optionally chosen layers'
// hidden states from the same pass, written as safetensors.
import { parseArgs } from "node:util";
import { NativeBackend } from "../../ffi/native.ts";
import { distillTensors, teacherTopK } from "../distill/distill_export.ts";
import { LLM } from "../engine/llm.ts";
import { applyOmpEnvDefaults } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { writeSafetensors } from "../formats/safetensors.ts";
import { loadModel } from "../model/load.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import {
  ENGINE_FLAG_OPTIONS,
  ENGINE_FLAGS_USAGE,
  engineOptions,
  integerFlag,
} from "./engine_flags.ts";
import { Progress } from "./progress.ts";

export const DISTILL_USAGE =
  `Usage: denollm distill-export --model PATH --input FILE --top-k K --out FILE [options]

For every position of every text, the model's K most likely next tokens and their logprobs, from
one prefill pass per text (texts batched), written as safetensors (layout in docs/distill.md):
t{i}.token_ids [n] I32, t{i}.topk_ids [n, K] I32, t{i}.topk_logprobs [n, K] F32, where row p is
the distribution of token p+1 given tokens 0..p. With --hidden-layers, also t{i}.hidden.{l}
[n, hidden] F32 per layer l: decoder layer l's output (before the final norm) at token p.

  --input FILE                 JSONL: {"text": "..."} or {"token_ids": [...]}, optional "id"
  --top-k K                    alternatives per position (required)
  --out FILE                   the .safetensors file to write
  --hidden-layers LIST         also export these decoder layers' outputs, comma-separated
                               0-based indices; negative ones count from the end (-1 = last;
                               write --hidden-layers=-1,0 when the list starts with one)
  --max-num-logit-rows N       prompt rows with logits per step (default: up to
                               --max-num-batched-tokens, within 256 MiB of logits)
${ENGINE_FLAGS_USAGE}
`;

/** `--hidden-layers 0,5,-1` as 0-based layer indices, in the order given. */
export function parseHiddenLayers(text: string, numLayers: number): number[] {
  const layers = text.split(",").map((part) => {
    const t = part.trim();
    const l = /^-?\d+$/.test(t) ? Number(t) : NaN;
    if (!(l >= -numLayers && l < numLayers)) {
      throw new UsageError(
        `--hidden-layers "${text}": expected comma-separated layer indices from ` +
          `${-numLayers} to ${numLayers - 1} (the model has ${numLayers} layers), got "${t}"`,
      );
    }
    return l < 0 ? numLayers + l : l;
  });
  if (new Set(layers).size !== layers.length) {
    throw new UsageError(`--hidden-layers "${text}" names a layer twice (as ${layers.join(",")})`);
  }
  return layers;
}

/** One input line's tokens and id. */
function readText(line: string, lineNo: number, tokenizer: TextTokenizer) {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new UsageError(
      `Line ${lineNo} of --input is not valid JSON: ${(error as Error).message}`,
    );
  }
  const entry = (typeof value === "object" && value !== null ? value : {}) as Record<
    string,
    unknown
  >;
  const id = typeof entry.id === "string" || typeof entry.id === "number"
    ? String(entry.id)
    : String(lineNo);
  if (typeof entry.text === "string") return { id, tokenIds: tokenizer.encode(entry.text) };
  const ids = entry.token_ids;
  if (Array.isArray(ids) && ids.every((t) => Number.isInteger(t) && t >= 0)) {
    return { id, tokenIds: ids as number[] };
  }
  throw new UsageError(
    `Line ${lineNo} of --input needs a "text" string or a "token_ids" array of integers`,
  );
}

export async function runDistillExport(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        ...ENGINE_FLAG_OPTIONS,
        input: { type: "string" },
        "top-k": { type: "string" },
        out: { type: "string" },
        "max-num-logit-rows": { type: "string" },
        "hidden-layers": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    console.log(DISTILL_USAGE);
    return 0;
  }
  const options = engineOptions(v);
  if (!v.input) throw new UsageError("--input is required");
  if (!v.out) throw new UsageError("--out is required");
  if (v["top-k"] === undefined) throw new UsageError("--top-k is required");
  const topK = integerFlag("top-k", v["top-k"], 0);

  applyOmpEnvDefaults(Deno.env);
  const backend = NativeBackend.open({
    numThreads: options.numThreads,
    libraryPath: options.libraryPath,
  });
  try {
    const loaded = await loadModel(backend, options.modelPath);
    try {
      const vocab = loaded.config.vocabSize;
      if (topK > vocab) {
        throw new UsageError(`--top-k ${topK} is more than the vocabulary's ${vocab} tokens`);
      }
      const hiddenLayers = v["hidden-layers"] === undefined
        ? []
        : parseHiddenLayers(v["hidden-layers"], loaded.config.numLayers);
      const texts = (await Deno.readTextFile(v.input)).split("\n")
        .map((line, i) => ({ line, lineNo: i + 1 }))
        .filter(({ line }) => line.trim() !== "")
        .map(({ line, lineNo }) => ({ lineNo, ...readText(line, lineNo, loaded.tokenizer) }));
      const maxModelLen = Math.min(
        options.maxModelLen ?? loaded.config.maxPositionEmbeddings,
        loaded.config.maxPositionEmbeddings,
      );
      for (const t of texts) {
        // One more position than the text: the last row comes with one sampled token.
        if (t.tokenIds.length === 0 || t.tokenIds.length >= maxModelLen) {
          throw new UsageError(
            `Line ${t.lineNo} of --input has ${t.tokenIds.length} tokens; expected 1 to ` +
              `${maxModelLen - 1} (--max-model-len ${maxModelLen})`,
          );
        }
        const bad = t.tokenIds.find((id) => id >= vocab);
        if (bad !== undefined) {
          throw new UsageError(`Line ${t.lineNo} of --input has token id ${bad} >= ${vocab}`);
        }
      }
      const maxNumSeqs = options.maxNumSeqs!;
      const maxNumBatchedTokens = options.maxNumBatchedTokens!;
      // Prompt rows keep their logits; 256 MiB of them by default, never fewer than a step's
      // sequences (the scheduler's minimum).
      const fitRows = Math.floor((256 << 20) / (4 * vocab));
      const maxNumLogitRows = integerFlag(
        "max-num-logit-rows",
        v["max-num-logit-rows"],
        Math.max(Math.min(maxNumSeqs, maxNumBatchedTokens), Math.min(maxNumBatchedTokens, fitRows)),
      );
      const llm = LLM.over(backend, loaded, {
        ...options,
        maxModelLen,
        maxNumLogitRows,
        captureLayers: hiddenLayers,
      });
      try {
        const numTokens = texts.reduce((sum, t) => sum + t.tokenIds.length, 0);
        console.error(
          `${texts.length} texts, ${numTokens} tokens; top ${topK} at every position` +
            (hiddenLayers.length > 0 ? `, hidden states of layers ${hiddenLayers.join(",")}` : "") +
            `, ${maxNumLogitRows} logit rows per step`,
        );
        const progress = new Progress(texts.length, { unit: "texts" });
        const started = performance.now();
        const targets = teacherTopK(llm.engine, texts.map((t) => t.tokenIds), {
          topK,
          maxInFlight: 2 * maxNumSeqs,
          hiddenLayers,
          onDone: (n) => progress.update(n),
        });
        progress.finish();
        const seconds = (performance.now() - started) / 1000;
        const { tensors, metadata } = distillTensors(targets, {
          model: options.modelPath,
          topK,
          ids: texts.map((t) => t.id),
          hiddenLayers,
          hiddenSize: loaded.config.hiddenSize,
        });
        await writeSafetensors(v.out, tensors, metadata);
        console.error(
          `${numTokens} positions in ${seconds.toFixed(1)} s (${
            (numTokens / seconds).toFixed(0)
          } tok/s); wrote ${v.out}`,
        );
      } finally {
        llm.release();
      }
    } finally {
      loaded.release();
    }
  } finally {
    backend.close();
  }
  return 0;
}
