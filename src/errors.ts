// The error codes every denollm error carries, the domain errors callers are expected to catch,
// and the plain-data form (ErrorInfo) in which an error crosses from a worker to the main thread.

/**
 * Every code, one per kind of failure a caller may handle differently. The HTTP API maps codes to
 * statuses (src/api/errors.ts); a code survives the trip from a worker thread, a class does not.
 */
export const ERROR_CODES = [
  /** A bad argument or parameter (what RangeError and TypeError mean). */
  "invalid_argument",
  /** A bad command-line flag, environment variable or configuration value. */
  "usage",
  /** The prompt plus the requested output does not fit the model's context or the KV cache. */
  "request_too_long",
  /** A request id that is already in use. */
  "request_id_in_use",
  /** More KV cache blocks were needed than are free. */
  "out_of_kv_blocks",
  /** A model or tokenizer file is missing, malformed or unsupported. */
  "model_format",
  /** The chat template is missing, malformed, or rejected the messages. */
  "chat_template",
  /** A Hugging Face hub download that cannot succeed as asked. */
  "hub",
  /** A --device that cannot be served: no GPU, no CUDA build, ordinal out of range. */
  "device",
  /** The native library could not be loaded, or one of its calls failed. */
  "native",
  /** A worker thread (the engine's or the tokenizer's) died or was closed. */
  "worker_failed",
  /** Anything else: a bug, never the caller's fault. */
  "internal",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Whether `value` is one of {@link ERROR_CODES}. */
export function isErrorCode(value: unknown): value is ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(value);
}

/** The base of every denollm error: a message for people and a {@link ErrorCode} for code. */
export class DenollmError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DenollmError";
    this.code = code;
  }
}

/** A request that can never run: too long for the model or for the whole KV cache. */
export class RequestTooLongError extends DenollmError {
  constructor(message: string) {
    super("request_too_long", message);
    this.name = "RequestTooLongError";
  }
}

/** A request id that is already in use. */
export class RequestIdError extends DenollmError {
  constructor(message: string) {
    super("request_id_in_use", message);
    this.name = "RequestIdError";
  }
}

/** Raised when a sequence needs more KV blocks than are free. */
export class OutOfKvBlocksError extends DenollmError {
  constructor(needed: number, free: number) {
    super("out_of_kv_blocks", `Out of KV cache blocks: needed ${needed}, ${free} free`);
    this.name = "OutOfKvBlocksError";
  }
}

/** A bad command line or configuration: printed with the usage, exit code 2. */
export class UsageError extends DenollmError {
  constructor(message: string) {
    super("usage", message);
    this.name = "UsageError";
  }
}

/** An error as plain data, the form in which it crosses a worker boundary. */
export interface ErrorInfo {
  code: ErrorCode;
  /** The original class name, kept so logs and `error.name` read the same on both sides. */
  name: string;
  message: string;
}

/** The built-in errors that mean a bad argument. */
const BUILTIN_CODES: Readonly<Record<string, ErrorCode>> = {
  RangeError: "invalid_argument",
  TypeError: "invalid_argument",
};

/** Codes by class name for the errors of ffi/native.ts, which does not import from src/. */
const FFI_CODES: Readonly<Record<string, ErrorCode>> = {
  NativeError: "native",
  LibraryLoadError: "native",
};

/** The code of an ffi/ error class named `name`, which carries no code itself. */
export function ffiErrorCode(name: string): ErrorCode | undefined {
  return Object.hasOwn(FFI_CODES, name) ? FFI_CODES[name] : undefined;
}

function codeForName(name: string): ErrorCode {
  if (Object.hasOwn(BUILTIN_CODES, name)) return BUILTIN_CODES[name];
  return ffiErrorCode(name) ?? "internal";
}

/**
 * The code of any thrown value: a DenollmError's own code, "invalid_argument" for RangeError and
 * TypeError, else "internal".
 */
export function errorCode(error: unknown): ErrorCode {
  if (error instanceof DenollmError) return error.code;
  if (error instanceof Error) return codeForName(error.name);
  return "internal";
}

/** `error` as plain data for `postMessage`; a thrown non-Error becomes its string. */
export function errorInfo(error: unknown): ErrorInfo {
  const e = error instanceof Error ? error : new Error(String(error));
  return { code: errorCode(e), name: e.name, message: e.message };
}

/**
 * An error raised in another thread, rebuilt from its {@link ErrorInfo}: the same code, name and
 * message (the class and the stack stay behind).
 */
export class RemoteError extends DenollmError {
  constructor(info: ErrorInfo) {
    super(
      "code" in info && isErrorCode(info.code) ? info.code : codeForName(info.name),
      info.message,
    );
    this.name = info.name;
  }
}

/** The error that {@link errorInfo} describes, on the receiving side of a worker boundary. */
export function errorFromInfo(info: ErrorInfo): RemoteError {
  return new RemoteError(info);
}
