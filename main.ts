// denollm command line: a thin dispatcher over the subcommands in src/cli/.
import { LibraryLoadError, NativeError } from "./ffi/native.ts";
import { BatchAbortedError } from "./src/batch/batch_runner.ts";
import { BATCH_USAGE, runBatch } from "./src/cli/batch.ts";
import { DISTILL_USAGE, runDistillExport } from "./src/cli/distill_export.ts";
import { GENERATE_USAGE, runGenerate } from "./src/cli/generate.ts";
import { UsageError } from "./src/errors.ts";
import { ModelFormatError } from "./src/formats/errors.ts";
import { RequestTooLongError } from "./src/engine/scheduler.ts";
import { runServe, VERSION } from "./src/server/serve.ts";
import { runRankProcess } from "./src/parallel/launch.ts";
import { HubError } from "./src/hub/download.ts";
import { TokenizerError } from "./src/tokenizer/tokenizer.ts";

const USAGE = `Usage: denollm <command> [options]

Options:
  --version  print the version

Commands:
  generate   generate text from a prompt (denollm generate --help)
  serve      serve an OpenAI-compatible API (denollm serve --help)
  batch      run an OpenAI Batch API file, resumably (denollm batch --help)
  distill-export  export a teacher's top-K logprobs as safetensors (denollm distill-export --help)
  rank       one non-zero rank of a parallel group; serve starts these (docs/parallelism.md)
`;

/** Errors the user can act on get one clear line; anything else is a bug and keeps its stack. */
function isUserFacing(error: unknown): boolean {
  return error instanceof UsageError || error instanceof ModelFormatError ||
    error instanceof TokenizerError || error instanceof RequestTooLongError ||
    error instanceof LibraryLoadError || error instanceof NativeError ||
    error instanceof BatchAbortedError || error instanceof RangeError ||
    error instanceof HubError;
}

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case "generate":
        await runGenerate(rest);
        return 0;
      case "serve":
        return await runServe(rest);
      case "batch":
        return await runBatch(rest);
      case "distill-export":
        return await runDistillExport(rest);
      case "rank":
        return await runRankProcess(rest);
      case "--version":
      case "-V":
        console.log(`denollm ${VERSION}`);
        return 0;
      case undefined:
      case "-h":
      case "--help":
        console.log(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`Unknown command "${command}"`);
    }
  } catch (error) {
    if (!isUserFacing(error)) throw error;
    console.error(`error: ${(error as Error).message}`);
    if (error instanceof UsageError && command === "serve") {
      // Kept to two lines: under systemd this lands in the journal.
      console.error("Run `denollm serve --help` for the options.");
    } else if (error instanceof UsageError) {
      const usages = new Map([
        ["generate", GENERATE_USAGE],
        ["batch", BATCH_USAGE],
        ["distill-export", DISTILL_USAGE],
      ]);
      console.error(usages.get(command ?? "") ?? USAGE);
    }
    return error instanceof UsageError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
