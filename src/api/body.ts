// Reads a JSON request body within a size limit: Content-Length is checked first, then the bytes
// actually received, so a lying or absent header cannot get past the limit.
import { ApiError } from "./errors.ts";

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
      } catch {
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

/** The body parsed as a JSON object; a 413 above `maxBytes`, a 400 for anything but an object. */
export async function readJsonObject(
  request: Request,
  maxBytes: number,
): Promise<Record<string, unknown>> {
  const bytes = await readBytes(request, maxBytes);
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
