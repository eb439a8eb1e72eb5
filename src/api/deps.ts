// What the API needs from the process around it, and the checks every generation route shares.
import type { EncodeOptions, TextTokenizer } from "../tokenizer/tokenizer.ts";
import type { ChatPromptOptions } from "./chat_prompt.ts";
import { ApiError } from "./errors.ts";
import type { EngineClient } from "./generation.ts";
import type { Metrics } from "./metrics.ts";
import type { ChatMessageInput } from "./schemas.ts";
import type { RequestLogFields } from "./request_log.ts";
import type { ToolCallParser } from "./tools.ts";

export type LogLevel = "debug" | "info" | "warn" | "error";

/** Tokenization off the main thread (AsyncTokenizer), on the same tokenizer and chat template. */
export interface AsyncTokenizerClient {
  encode(text: string, opts?: EncodeOptions): Promise<number[]>;
  chatPromptIds(messages: readonly ChatMessageInput[], opts?: ChatPromptOptions): Promise<number[]>;
}

export interface ApiDeps {
  /** The engine, or undefined while the model loads. */
  getEngine(): EngineClient | undefined;
  tokenizer: TextTokenizer;
  chatTemplate: string | null;
  /** When set, long prompt texts are tokenized here instead of blocking the event loop. */
  asyncTokenizer?: AsyncTokenizerClient;
  servedModelName: string;
  /** Other names requests may give for the model (checked, never listed). */
  modelAliases?: readonly string[];
  /** Said in /v1/models beside the model (the demo model's "its output is noise"). */
  modelNotice?: string;
  version: string;
  /** When set, every route but /health and /metrics needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** New generation requests get a 429 while the engine has this many waiting. */
  maxQueuedRequests: number;
  /** Larger request bodies get a 413. Default 4 MiB. */
  maxBodyBytes?: number;
  /** A POST body not complete this long after its headers gets a 408. Default: no limit. */
  bodyTimeoutMs?: number;
  /** A generation request with no output this long after it was queued gets a 503. */
  maxQueueDelayMs?: number;
  /** A request is refused (429) when more prompt tokens than this are queued. */
  maxQueuedPromptTokens?: number;
  /**
   * Origins whose browser pages may call the API (CORS), `*` for any. Unset or empty: no CORS
   * headers at all, so browsers keep other sites' pages out.
   */
  allowedOrigins?: readonly string[];
  metrics: Metrics;
  /** The seed of requests that give none (--seed); unset: each request samples afresh. */
  defaultSeed?: number;
  /** The tool-call format to parse; default: the one the chat template shows (tools.ts). */
  toolCallParser?: ToolCallParser;
  log?: (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;
  /** When set, one line per request (request_log.ts); debug for /health and /metrics. */
  requestLog?: (level: LogLevel, fields: RequestLogFields) => void;
}

export const DEFAULT_MAX_BODY_BYTES = 4 << 20;

/** The engine, or a 503 while the model loads. */
export function requireEngine(deps: ApiDeps): EngineClient {
  const engine = deps.getEngine();
  if (engine === undefined) {
    throw new ApiError(503, "The model is still loading; try again shortly", {
      code: "model_loading",
      headers: { "Retry-After": "5" },
    });
  }
  return engine;
}

/** A 404 unless `model` is absent or names the served model. */
export function checkModel(deps: ApiDeps, model: string | null | undefined): void {
  if (
    model != null && model !== deps.servedModelName && !(deps.modelAliases ?? []).includes(model)
  ) {
    throw new ApiError(404, `The model \`${model}\` does not exist`, {
      param: "model",
      code: "model_not_found",
    });
  }
}

/** A 429 while the engine's queue is full. */
export function checkQueue(deps: ApiDeps, engine: EngineClient): void {
  const numWaiting = engine.stats.numWaiting;
  if (numWaiting >= deps.maxQueuedRequests) {
    throw new ApiError(
      429,
      `The server is busy (${numWaiting} requests waiting, the limit is ` +
        `${deps.maxQueuedRequests}); try again shortly`,
      { code: "queue_full", headers: { "Retry-After": "1" } },
    );
  }
}

/** Seconds since the epoch, OpenAI's `created`. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** A fresh id with OpenAI's prefix, e.g. `chatcmpl-…`. */
export function newId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
}

/** A 400 for stream_options without stream, as OpenAI answers it. */
export function checkStreamOptions(
  req: { stream?: boolean | null; stream_options?: unknown },
): void {
  if (req.stream_options != null && !req.stream) {
    throw new ApiError(400, "stream_options can only be set when stream is true", {
      param: "stream_options",
    });
  }
}
