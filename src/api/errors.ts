// The API's one error class, the OpenAI error JSON it becomes, and the status for each error code.
import { DenollmError, type ErrorCode, ffiErrorCode } from "../errors.ts";

/** The body of every error response, as OpenAI sends it. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** The HTTP statuses the API answers errors with. */
export type ErrorStatus = 400 | 401 | 403 | 404 | 405 | 408 | 413 | 415 | 429 | 500 | 503;

const TYPES: Record<ErrorStatus, string> = {
  400: "invalid_request_error",
  401: "invalid_request_error",
  403: "invalid_request_error",
  404: "invalid_request_error",
  405: "invalid_request_error",
  408: "invalid_request_error",
  413: "invalid_request_error",
  415: "invalid_request_error",
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

/** How an error with a code the client can act on is answered. */
interface ClientError {
  status: ErrorStatus;
  param?: string;
  /** OpenAI's machine-readable code. */
  code?: string;
}

/**
 * The answer for each code: a 400 for a request at fault, or null for a generic 500 (the server's
 * fault; the details go to the log only).
 */
const BY_CODE: Readonly<Record<ErrorCode, ClientError | null>> = {
  // The engine's admission checks (token ids, parameters) throw these; the API validates first,
  // so reaching here means the two disagree, still the client's request at fault.
  invalid_argument: { status: 400 },
  request_too_long: { status: 400, code: "context_length_exceeded" },
  chat_template: { status: 400, param: "messages" },
  usage: null,
  request_id_in_use: null,
  out_of_kv_blocks: null,
  model_format: null,
  hub: null,
  device: null,
  native: null,
  worker_failed: null,
  internal: null,
};

/**
 * The code of an error that declares one: a DenollmError (engine and tokenizer worker errors
 * keep their code across the worker boundary), or an ffi/ error, by its class name. A plain
 * RangeError or TypeError thrown on this thread is a bug here, not the client's fault, so it has
 * none.
 */
function declaredCode(error: Error): ErrorCode | undefined {
  if (error instanceof DenollmError) return error.code;
  return ffiErrorCode(error.name);
}

/** The ApiError for an error that is the client's to fix; undefined for anything else. */
export function fromDomainError(error: unknown): ApiError | undefined {
  if (error instanceof ApiError) return error;
  if (!(error instanceof Error)) return undefined;
  const code = declaredCode(error);
  const answer = code === undefined ? null : BY_CODE[code];
  if (answer === null) return undefined;
  return new ApiError(answer.status, error.message, { param: answer.param, code: answer.code });
}

/**
 * Errors already logged. When the engine worker dies, every open request fails with the same
 * error object: that is one failure, so it is logged once, not once per stream.
 */
const logged = new WeakSet<object>();

/**
 * The ApiError for any error: the mapped one for a request at fault, else a generic 500 whose
 * details go to the log only (once per error object), never to the client.
 */
export function toApiError(
  error: unknown,
  log?: (level: "error", msg: string, fields?: Record<string, unknown>) => void,
): ApiError {
  const mapped = fromDomainError(error);
  if (mapped !== undefined) return mapped;
  const e = error instanceof Error ? error : new Error(String(error));
  // A dead engine worker is the daemon's failure, not this request's: the daemon logs it once
  // (without a stack) and exits, so the request only gets the generic answer.
  if (logged.has(e) || declaredCode(e) === "worker_failed") {
    return new ApiError(500, "The server had an error while processing your request");
  }
  logged.add(e);
  log?.("error", "Unexpected error while serving a request", {
    name: e.name,
    message: e.message,
    stack: e.stack,
  });
  return new ApiError(500, "The server had an error while processing your request");
}
