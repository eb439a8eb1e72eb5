// `denollm batch`'s core: OpenAI Batch API request lines in, one result line per input line out.
// Each line goes through the API's own routes (the same validation, parameters and response
// shapes as over HTTP), many at once so the engine batches them, and results are appended as
// they finish, so an interrupted run resumes from what its output file already holds.
import { ApiError } from "../api/errors.ts";
import { UsageError } from "../errors.ts";

/** The routes a batch line may name, as `vllm run-batch` takes them. */
export const BATCH_URLS: readonly string[] = ["/v1/completions", "/v1/chat/completions"];

/** What the runner needs of the API: Hono's `app.request`. */
export interface BatchApp {
  request(path: string, init: RequestInit): Response | Promise<Response>;
}

/** One input line, parsed: a request to run, or the error that is its answer. */
export interface BatchLine {
  /** 1-based line number in the input file. */
  lineNo: number;
  /** Null when the line has no readable custom_id (malformed JSON, a missing id). */
  customId: string | null;
  request?: { url: string; body: Record<string, unknown> };
  error?: ApiError;
}

/** One output line, in the OpenAI Batch API's output format. */
export interface BatchResult {
  id: string;
  custom_id: string | null;
  response: { status_code: number; request_id: string; body: unknown };
  error: { code: string | null; message: string } | null;
}

export interface BatchRunOptions {
  /** Requests submitted to the engine and not yet answered, at most. */
  maxInFlight: number;
  /** Drop each body's `model` field, so any name is accepted (the batch has one model). */
  ignoreModel?: boolean;
  onProgress?: (counts: BatchCounts) => void;
}

export interface BatchCounts {
  /** Lines answered in this run (errors included). */
  numDone: number;
  /** Of those, lines answered with an error status. */
  numErrors: number;
  /** usage.completion_tokens summed over this run's answers. */
  numOutputTokens: number;
}

function newBatchId(prefix: string): string {
  return `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parses one input line; never throws, since a bad line is answered, not fatal. */
export function parseBatchLine(text: string, lineNo: number): BatchLine {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return {
      lineNo,
      customId: null,
      error: new ApiError(400, `Line ${lineNo} is not valid JSON: ${(error as Error).message}`),
    };
  }
  if (!isObject(value)) {
    return { lineNo, customId: null, error: new ApiError(400, "A line must be a JSON object") };
  }
  const customId = typeof value.custom_id === "string" && value.custom_id !== ""
    ? value.custom_id
    : null;
  const fail = (message: string, param: string, code: string | null = null): BatchLine => ({
    lineNo,
    customId,
    error: new ApiError(code === "unknown_url" ? 404 : 400, message, { param, code }),
  });
  if (customId === null) {
    return fail(
      `Invalid 'custom_id': expected a non-empty string, got ${JSON.stringify(value.custom_id)}`,
      "custom_id",
    );
  }
  if (value.method !== "POST") {
    return fail(`Invalid 'method': expected "POST", got ${JSON.stringify(value.method)}`, "method");
  }
  if (typeof value.url !== "string" || !BATCH_URLS.includes(value.url)) {
    return fail(
      `Invalid 'url': expected one of ${BATCH_URLS.join(", ")}, got ${JSON.stringify(value.url)}`,
      "url",
      "unknown_url",
    );
  }
  if (!isObject(value.body)) return fail("Invalid 'body': expected a JSON object", "body");
  if (value.body.stream === true) {
    return fail("Invalid 'stream': a batch line cannot stream", "stream");
  }
  return { lineNo, customId, request: { url: value.url, body: value.body } };
}

/** Every non-blank line of an input file; refuses a file with a custom_id twice. */
export function parseBatchInput(text: string): BatchLine[] {
  const lines: BatchLine[] = [];
  const seen = new Map<string, number>();
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    const line = parseBatchLine(raw, i + 1);
    if (line.customId !== null) {
      const first = seen.get(line.customId);
      if (first !== undefined) {
        // Results are matched to lines by custom_id (and resumed by it), as in OpenAI's batches.
        throw new UsageError(
          `custom_id ${JSON.stringify(line.customId)} appears twice, on lines ${first} and ` +
            `${line.lineNo}; every line needs its own`,
        );
      }
      seen.set(line.customId, line.lineNo);
    }
    lines.push(line);
  });
  return lines;
}

/**
 * Reads the results an earlier run left in `path`, counted by custom_id (null for lines without
 * one). A half-written last line, from a run killed mid-write, is cut off so it is redone.
 */
export async function readDoneResults(path: string): Promise<Map<string | null, number>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return new Map();
    throw error;
  }
  const end = bytes.lastIndexOf(0x0a) + 1;
  if (end < bytes.length) await Deno.truncate(path, end);
  const done = new Map<string | null, number>();
  const text = new TextDecoder().decode(bytes.subarray(0, end));
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let result: unknown;
    try {
      result = JSON.parse(line);
    } catch {
      result = undefined;
    }
    if (!isObject(result) || !("custom_id" in result)) {
      throw new UsageError(
        `Line ${i + 1} of ${path} is not a batch result; give a new --output or remove the file`,
      );
    }
    const key = typeof result.custom_id === "string" ? result.custom_id : null;
    done.set(key, (done.get(key) ?? 0) + 1);
  });
  return done;
}

/**
 * The lines still to do. Lines with a custom_id are done when a result carries it; lines without
 * one are answered at once, in input order, so the first k of them are done when k results
 * without a custom_id are there.
 */
export function pendingLines(
  lines: readonly BatchLine[],
  done: ReadonlyMap<string | null, number>,
): BatchLine[] {
  const left = new Map(done);
  return lines.filter((line) => {
    const count = left.get(line.customId) ?? 0;
    if (count === 0) return true;
    left.set(line.customId, count - 1);
    return false;
  });
}

/** The result line of a line answered without the engine. */
export function errorResult(line: BatchLine, error: ApiError): BatchResult {
  return {
    id: newBatchId("batch_req"),
    custom_id: line.customId,
    response: { status_code: error.status, request_id: newBatchId("req"), body: error.body },
    error: { code: error.code, message: error.message },
  };
}

/** A failure of the engine or the runner rather than of one line: it stops the run. */
export class BatchAbortedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BatchAbortedError";
  }
}

/** Answers one request line through the API's route. */
async function runLine(app: BatchApp, line: BatchLine, ignoreModel: boolean) {
  const { url, body } = line.request!;
  const sent = ignoreModel ? { ...body, model: undefined } : body;
  const response = await app.request(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(sent),
  });
  const json = await response.json();
  if (response.status >= 500) {
    // Not the line's fault (the engine failed): leave it unanswered, so a resume redoes it.
    throw new BatchAbortedError(
      `Line ${line.lineNo} failed with ${response.status}: ${json?.error?.message ?? "no message"}`,
    );
  }
  const isOk = response.status === 200;
  const result: BatchResult = {
    id: newBatchId("batch_req"),
    custom_id: line.customId,
    response: {
      status_code: response.status,
      request_id: isOk && typeof json.id === "string" ? json.id : newBatchId("req"),
      body: json,
    },
    error: isOk ? null : { code: json.error?.code ?? null, message: json.error?.message ?? "" },
  };
  const numOutputTokens = isOk ? Number(json.usage?.completion_tokens ?? 0) : 0;
  return { result, numOutputTokens };
}

/** Appends whole lines to a file, one write after another, in the order they are given. */
class LineWriter {
  #file: Deno.FsFile;
  #chain: Promise<void> = Promise.resolve();
  #encoder = new TextEncoder();

  constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  write(value: unknown): Promise<void> {
    const bytes = this.#encoder.encode(JSON.stringify(value) + "\n");
    this.#chain = this.#chain.then(async () => {
      for (let offset = 0; offset < bytes.length;) {
        offset += await this.#file.write(bytes.subarray(offset));
      }
    });
    return this.#chain;
  }

  get flushed(): Promise<void> {
    return this.#chain;
  }
}

/**
 * Runs `lines`, appending one result per line to `file` as each finishes (so not in input
 * order). Up to `maxInFlight` requests are in the engine at once.
 */
export async function runBatchLines(
  app: BatchApp,
  lines: readonly BatchLine[],
  file: Deno.FsFile,
  options: BatchRunOptions,
): Promise<BatchCounts> {
  const writer = new LineWriter(file);
  const counts: BatchCounts = { numDone: 0, numErrors: 0, numOutputTokens: 0 };
  const active = new Set<Promise<void>>();
  let failure: Error | undefined;
  const answered = (result: BatchResult, numOutputTokens: number) => {
    counts.numDone++;
    if (result.error !== null) counts.numErrors++;
    counts.numOutputTokens += numOutputTokens;
    options.onProgress?.(counts);
    return writer.write(result);
  };
  for (const line of lines) {
    if (failure) break;
    if (line.error) {
      // Answered at once and in input order (resume relies on it for lines without a custom_id).
      await answered(errorResult(line, line.error), 0);
      continue;
    }
    while (active.size >= options.maxInFlight) await Promise.race(active);
    if (failure) break;
    const task: Promise<void> = runLine(app, line, options.ignoreModel ?? false)
      .then(({ result, numOutputTokens }) => answered(result, numOutputTokens))
      .catch((error) => {
        failure ??= error;
      })
      .finally(() => active.delete(task));
    active.add(task);
  }
  await Promise.all(active);
  await writer.flushed;
  if (failure) throw failure;
  return counts;
}
