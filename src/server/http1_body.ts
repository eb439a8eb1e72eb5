// The bytes of one HTTP/1.1 connection as they arrive, and the request bodies cut from them: a
// Content-Length body or a chunked one (RFC 9112 section 7.1), whose malformed framing ends the
// body with an error instead of being guessed at.
import { HttpError } from "./http1_head.ts";

const CRLF = [13, 10];
/** A chunk-size line (size and extensions) longer than this is refused. */
const MAX_CHUNK_LINE = 4096;
/** Trailer fields after the last chunk, all together; they are read and dropped. */
const MAX_TRAILER_BYTES = 16 << 10;

/** Bytes read from a connection and not yet consumed; one read at a time, shared by callers. */
export class SocketReader {
  readonly #conn: Deno.Conn;
  #data = new Uint8Array(0);
  #filling: Promise<boolean> | undefined;
  /** The peer has closed its side (or the connection failed). */
  isEnded = false;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  get buffered(): Uint8Array {
    return this.#data;
  }

  consume(n: number): void {
    this.#data = this.#data.subarray(n);
  }

  /** Reads more bytes; false at the end of the stream. A read already pending is shared. */
  fill(): Promise<boolean> {
    this.#filling ??= this.#read().finally(() => (this.#filling = undefined));
    return this.#filling;
  }

  async #read(): Promise<boolean> {
    if (this.isEnded) return false;
    const chunk = new Uint8Array(16 << 10);
    let n: number | null;
    try {
      n = await this.#conn.read(chunk);
    } catch (error) {
      this.isEnded = true;
      throw error;
    }
    if (n === null) {
      this.isEnded = true;
      return false;
    }
    // Bytes already handed out are never written again, so a new array is made when some remain.
    if (this.#data.length === 0) {
      this.#data = chunk.subarray(0, n);
    } else {
      const joined = new Uint8Array(this.#data.length + n);
      joined.set(this.#data);
      joined.set(chunk.subarray(0, n), this.#data.length);
      this.#data = joined;
    }
    return true;
  }
}

/** Where CRLF starts in `bytes` at or after `from`, or -1. */
export function indexOfCrlf(bytes: Uint8Array, from = 0): number {
  for (let i = Math.max(from, 0); i + 1 < bytes.length; i++) {
    if (bytes[i] === CRLF[0] && bytes[i + 1] === CRLF[1]) return i;
  }
  return -1;
}

/** The client went away before the body was complete. */
export class BodyCutError extends Error {
  constructor() {
    super("The connection closed before the request body was complete");
    this.name = "BodyCutError";
  }
}

/** Pulls one body's bytes from a SocketReader; `next()` gives undefined once the body is done. */
export interface BodySource {
  next(): Promise<Uint8Array | undefined>;
  readonly isDone: boolean;
}

async function more(reader: SocketReader): Promise<void> {
  if (!(await reader.fill())) throw new BodyCutError();
}

/** Up to `max` buffered bytes (reading when none are), consumed. */
async function take(reader: SocketReader, max: number): Promise<Uint8Array> {
  if (reader.buffered.length === 0) await more(reader);
  const part = reader.buffered.subarray(0, Math.min(max, reader.buffered.length));
  reader.consume(part.length);
  return part;
}

export function lengthBody(reader: SocketReader, length: number): BodySource {
  let remaining = length;
  return {
    get isDone() {
      return remaining === 0;
    },
    async next() {
      if (remaining === 0) return undefined;
      const part = await take(reader, remaining);
      remaining -= part.length;
      return part;
    },
  };
}

/** The next CRLF-ended line (without CRLF), consumed; `limit` bounds its length. */
async function readLine(reader: SocketReader, limit: number, what: string): Promise<string> {
  let scanned = 0;
  while (true) {
    const end = indexOfCrlf(reader.buffered, scanned - 1);
    if (end >= 0) {
      const line = String.fromCharCode(...reader.buffered.subarray(0, end));
      reader.consume(end + 2);
      return line;
    }
    scanned = reader.buffered.length;
    if (scanned > limit) throw new HttpError(400, `The ${what} is too long`);
    await more(reader);
  }
}

export function chunkedBody(reader: SocketReader): BodySource {
  let state: "size" | "data" | "done" = "size";
  let remaining = 0;
  return {
    get isDone() {
      return state === "done";
    },
    async next() {
      while (true) {
        if (state === "done") return undefined;
        if (state === "data") {
          if (remaining > 0) {
            const part = await take(reader, remaining);
            remaining -= part.length;
            return part;
          }
          while (reader.buffered.length < 2) await more(reader);
          if (reader.buffered[0] !== CRLF[0] || reader.buffered[1] !== CRLF[1]) {
            throw new HttpError(400, "A chunk's data is not followed by CRLF");
          }
          reader.consume(2);
          state = "size";
          continue;
        }
        const line = await readLine(reader, MAX_CHUNK_LINE, "chunk size line");
        // Size, optional whitespace, then extensions (ignored) with no control characters.
        const match = /^([0-9A-Fa-f]{1,12})[ \t]*(;[\t\x20-\x7e\x80-\xff]*)?$/.exec(line);
        if (match === null) throw new HttpError(400, "Malformed chunk size");
        remaining = parseInt(match[1], 16);
        if (remaining > 0) {
          state = "data";
          continue;
        }
        let trailerBytes = 0;
        while (true) {
          const trailer = await readLine(reader, MAX_TRAILER_BYTES, "trailer section");
          trailerBytes += trailer.length + 2;
          if (trailerBytes > MAX_TRAILER_BYTES) {
            throw new HttpError(400, "The trailer section is too long");
          }
          if (trailer === "") break;
        }
        state = "done";
      }
    },
  };
}
