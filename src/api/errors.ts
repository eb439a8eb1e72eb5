// The API's one error class and the OpenAI error JSON it becomes.
import { EngineError } from "../engine/async_engine.ts";
import { ChatTemplateError } from "../tokenizer/chat_template.ts";

/** The body of every error response, as OpenAI sends it. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** The HTTP statuses the API answers errors with. */
export type ErrorStatus = 400 | 401 | 404 | 405 | 413 | 429 | 500 | 503;

const TYPES: Record<ErrorStatus, string> = {
  400: "invalid_request_error",
  401: "invalid_request_error",
  404: "invalid_request_error",
  405: "invalid_request_error",
  413: "invalid_request_error",
  429: "rate_limit_error",
  500: "server_error",
  503: "service_unavailable_error",
};

/**
 * A request the API refuses: the status, a message for the client, and where OpenAI has them
 * the offending parameter and a machine-readable code. `onError` turns it into the error JSON.
 */
export class ApiError extends Error {
  readonly status: ErrorStatus;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(
    status: ErrorStatus,
    message: string,
    opts: { param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  get body(): ErrorBody {
    return {
      error: {
        message: this.message,
        type: TYPES[this.status],
        param: this.param,
        code: this.code,
      },
    };
  }
}

/** The JSON response for `error`. */
export function errorResponse(error: ApiError): Response {
  return Response.json(error.body, { status: error.status, headers: error.headers });
}

/**
 * Maps the errors that the engine and the chat template raise for a bad request to a 400 (engine
 * and tokenizer worker errors keep their `name` across the worker boundary); anything else stays
 * unmapped, a 500.
 */
export function fromDomainError(error: unknown): ApiError | undefined {
  if (error instanceof ApiError) return error;
  if (!(error instanceof Error)) return undefined;
  if (error.name === "RequestTooLongError") {
    return new ApiError(400, error.message, { code: "context_length_exceeded" });
  }
  if (error instanceof ChatTemplateError || error.name === "ChatTemplateError") {
    return new ApiError(400, error.message, { param: "messages" });
  }
  // The engine's admission checks (token ids, parameters) throw these; the API validates first,
  // so reaching here means the two disagree, still the client's request at fault.
  if (error instanceof EngineError && (error.name === "RangeError" || error.name === "TypeError")) {
    return new ApiError(400, error.message);
  }
  return undefined;
}

/**
 * The ApiError for any error: the mapped one for a request at fault, else a generic 500 whose
 * details go to the log only, never to the client.
 */
export function toApiError(
  error: unknown,
  log?: (level: "error", msg: string, fields?: Record<string, unknown>) => void,
): ApiError {
  const mapped = fromDomainError(error);
  if (mapped !== undefined) return mapped;
  const e = error instanceof Error ? error : new Error(String(error));
  log?.("error", "Unexpected error while serving a request", {
    name: e.name,
    message: e.message,
    stack: e.stack,
  });
  return new ApiError(500, "The server had an error while processing your request");
}
