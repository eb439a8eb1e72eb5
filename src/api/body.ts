// Reads a JSON request body within a size limit and a deadline: Content-Length is checked first,
// then the bytes actually received, so a lying or absent header cannot get past the limit, and a
// body that stops short of its Content-Length (or a chunked body with no final chunk) is cut off.
import { ApiError } from "./errors.ts";

/** The request body did not arrive in time (raised inside the stream {@link withBodyDeadline} makes). */
export class BodyTimeoutError extends Error {
  readonly timeoutMs: number;

  constructor(timeoutMs: number) {
    super(`The request body did not arrive within ${timeoutMs / 1000} s`);
    this.name = "BodyTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}

/** A request whose body stream fails with BodyTimeoutError once it is `timeoutMs` old. */
export interface DeadlineRequest {
  request: Request;
  /** Stops the timer (the handler is done, whether or not it read the body). */
  dispose(): void;
}

/**
 * Wraps `request` so that reading its body fails `timeoutMs` after this call (the headers have
 * arrived by then): the HTTP layer has no body-read timeout of its own, so a client that sends
 * a few bytes and stalls would otherwise hold its handler forever.
 */
export function withBodyDeadline(request: Request, timeoutMs: number): DeadlineRequest {
  if (request.body === null) return { request, dispose: () => {} };
  const source = request.body.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let isSettled = false;
  const settle = () => {
    isSettled = true;
    clearTimeout(timer);
  };
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const expire = () => {
        if (isSettled) return;
        settle();
        controller.error(new BodyTimeoutError(timeoutMs));
        source.cancel().catch(() => {});
      };
      timer = setTimeout(expire, timeoutMs);
    },
    async pull(controller) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await source.read();
      } catch (error) {
        if (!isSettled) controller.error(error);
        settle();
        return;
      }
      if (isSettled) return;
      if (chunk.done) {
        settle();
        controller.close();
      } else {
        controller.enqueue(chunk.value);
      }
    },
    cancel(reason) {
      settle();
      return source.cancel(reason);
    },
  });
  return {
    request: new Request(request, { body, duplex: "half" } as RequestInit),
    dispose: settle,
  };
}

function tooLarge(maxBytes: number): ApiError {
  return new ApiError(413, `The request body is larger than the limit of ${maxBytes} bytes`, {
    code: "request_too_large",
  });
}

async function readBytes(request: Request, maxBytes: number): Promise<Uint8Array> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge(maxBytes);
  if (request.body === null) return new Uint8Array();
  const reader = request.body.getReader();
  const parts: Uint8Array[] = [];
  let numBytes = 0;
  try {
    while (true) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error instanceof BodyTimeoutError) {
          // The connection is stuck mid-body, so it cannot carry another request.
          throw new ApiError(408, `${error.message}; send the whole body at once`, {
            code: "request_timeout",
            headers: { Connection: "close" },
          });
        }
        throw new ApiError(400, "The request body could not be read to the end");
      }
      const { done, value } = chunk;
      if (done) break;
      numBytes += value.length;
      if (numBytes > maxBytes) {
        await reader.cancel();
        throw tooLarge(maxBytes);
      }
      parts.push(value);
    }
  } finally {
    reader.releaseLock();
  }
  const bytes = new Uint8Array(numBytes);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes;
}

/**
 * A 415 unless the body is declared as JSON. Only checked once the body is read (so size limits
 * answer first), and before anything is computed: a browser can send `text/plain` cross-origin
 * without a preflight, and that must not reach the engine of a key-less local server.
 */
function checkJsonContentType(request: Request): void {
  const header = request.headers.get("content-type");
  const mediaType = (header ?? "").split(";")[0].trim().toLowerCase();
  if (mediaType === "application/json") return;
  throw new ApiError(
    415,
    header === null
      ? "The request has no Content-Type; send the JSON body as application/json"
      : `Content-Type ${
        JSON.stringify(header)
      } is not supported; send the body as application/json`,
    { code: "unsupported_media_type" },
  );
}

/**
 * The body parsed as a JSON object: a 413 above `maxBytes`, a 415 unless it is declared as
 * application/json, a 408 when it stops arriving, a 400 for anything but an object.
 */
export async function readJsonObject(
  request: Request,
  maxBytes: number,
): Promise<Record<string, unknown>> {
  const bytes = await readBytes(request, maxBytes);
  checkJsonContentType(request);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "The request body is not valid UTF-8");
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(400, "We could not parse the JSON body of your request");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ApiError(400, "The request body must be a JSON object");
  }
  return body as Record<string, unknown>;
}
