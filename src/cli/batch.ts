// `denollm batch`: runs an OpenAI Batch API file (as `vllm run-batch` reads it) through the
// API's routes on an engine worker, many lines at once, resumable from its output file.
import { parseArgs } from "node:util";
import { createApp, Metrics } from "../api/mod.ts";
import {
  parseBatchInput,
  pendingLines,
  readDoneResults,
  runBatchLines,
} from "../batch/batch_runner.ts";
import { AsyncEngine } from "../engine/async_engine.ts";
import { applyOmpEnvDefaults } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { openModelSource } from "../model/load.ts";
import {
  ENGINE_FLAG_OPTIONS,
  ENGINE_FLAGS_USAGE,
  engineOptions,
  integerFlag,
} from "./engine_flags.ts";
import { Progress } from "./progress.ts";

export const BATCH_USAGE = `Usage: denollm batch --model PATH --input FILE --output FILE [options]

Runs every line of an OpenAI Batch API file: {"custom_id", "method": "POST", "url":
"/v1/completions" | "/v1/chat/completions", "body": {...}}. Each result line is
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}, written as its
request finishes (not in input order). A line that is not valid gets its error in its result line.
Run it again with the same --output to resume: lines with a result are not redone.

  --input FILE                 request lines (JSONL)
  --output FILE                result lines (JSONL), appended to
  --served-model-name NAME     the name bodies must give as "model" (default: any name)
  --max-in-flight N            requests in the engine at once (default 2 x --max-num-seqs)
${ENGINE_FLAGS_USAGE}
`;

export async function runBatch(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        ...ENGINE_FLAG_OPTIONS,
        input: { type: "string" },
        output: { type: "string" },
        "served-model-name": { type: "string" },
        "max-in-flight": { type: "string" },
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
    console.log(BATCH_USAGE);
    return 0;
  }
  const options = engineOptions(v);
  if (!v.input) throw new UsageError("--input is required");
  if (!v.output) throw new UsageError("--output is required");
  // Twice the engine's sequences keeps its waiting queue full: a finished slot is refilled in the
  // next step instead of after a round trip to this thread.
  const maxInFlight = integerFlag("max-in-flight", v["max-in-flight"], 2 * options.maxNumSeqs!);

  const lines = parseBatchInput(await Deno.readTextFile(v.input));
  const done = await readDoneResults(v.output);
  const pending = pendingLines(lines, done);
  const numSkipped = lines.length - pending.length;
  console.error(
    `${lines.length} lines in ${v.input}` +
      (numSkipped > 0 ? `, ${numSkipped} already in ${v.output}: resuming` : ""),
  );
  if (pending.length === 0) return 0;

  applyOmpEnvDefaults(Deno.env);
  const source = await openModelSource(options.modelPath);
  const engine = await AsyncEngine.start(options);
  try {
    console.error(
      `loaded ${options.modelPath} in ${engine.loadMs.toFixed(0)} ms; ` +
        `${engine.numKvBlocks * engine.blockSize} KV tokens, up to ${maxInFlight} lines in flight`,
    );
    const warned = new Set<string>();
    const servedModelName = v["served-model-name"] ?? options.modelPath;
    const { app } = createApp({
      getEngine: () => engine,
      tokenizer: source.tokenizer,
      chatTemplate: source.chatTemplate,
      servedModelName,
      version: "batch",
      maxQueuedRequests: maxInFlight + 1,
      metrics: new Metrics({ modelName: servedModelName }),
      // Each warning once, not once per line.
      log: (level, msg) => {
        if (level === "info" || warned.has(msg)) return;
        warned.add(msg);
        console.error(`${level}: ${msg}`);
      },
    });
    const progress = new Progress(pending.length, { unit: "lines" });
    const started = performance.now();
    using file = await Deno.open(v.output, { append: true, create: true });
    const counts = await runBatchLines(app, pending, file, {
      maxInFlight,
      ignoreModel: v["served-model-name"] === undefined,
      onProgress: (c) => progress.update(c.numDone, `${c.numErrors} errors`),
    });
    progress.finish();
    const seconds = (performance.now() - started) / 1000;
    console.error(
      `${counts.numDone} lines in ${seconds.toFixed(1)} s (${
        (counts.numDone / seconds).toFixed(1)
      } lines/s, ${(counts.numOutputTokens / seconds).toFixed(0)} output tok/s), ` +
        `${counts.numErrors} errors; results in ${v.output}`,
    );
    return 0;
  } finally {
    await engine.shutdown();
  }
}
