// An HTTP/1.1 server over Deno.listen with the limits Deno.serve (2.9.6) lacks: a deadline for the
// request head, an idle timeout for keep-alive connections and a cap on open connections, so a
// client that trickles its headers (slowloris) or parks idle sockets cannot hold the server. The
// handler gets (Request, info) like Deno.serve's; the request's signal aborts when the client goes.
import {
  BodyCutError,
  type BodySource,
  chunkedBody,
  indexOfCrlf,
  lengthBody,
  SocketReader,
} from "./http1_body.ts";
import { HttpError, parseHead, type RequestHead } from "./http1_head.ts";

export interface Http1Info {
  remoteAddr: Deno.NetAddr;
  /** Resolves once the response is written in full; rejects when the client went away first. */
  completed: Promise<void>;
}

export type Http1Handler = (request: Request, info: Http1Info) => Response | Promise<Response>;

export interface Http1Options {
  hostname: string;
  port: number;
  /** A request head must arrive within this from the connection's start or the last response. */
  headerTimeoutMs: number;
  /** A keep-alive connection with no new request this long after a response is closed. */
  keepAliveTimeoutMs: number;
  /** Connections past this many open ones get a 503 and are closed. */
  maxConnections: number;
  /** A request head larger than this is answered 431. */
  maxHeadBytes?: number;
  onListen?: (addr: Deno.NetAddr) => void;
  /** Per-connection failures (malformed input, resets): for a debug log. */
  onConnectionError?: (message: string, fields: Record<string, unknown>) => void;
}

export const DEFAULT_MAX_HEAD_BYTES = 64 << 10;
/** Bytes read ahead of the current request (a pipelined next one) before reading stops. */
const MAX_READ_AHEAD = 64 << 10;
/** How long a connection being closed after an error reads what the client still sends. */
const LINGER_MS = 1000;
/** Connections refused over the cap that may linger at once (the rest close at once). */
const MAX_LINGERING = 256;

const encoder = new TextEncoder();
const CONTINUE = encoder.encode("HTTP/1.1 100 Continue\r\n\r\n");

const REASONS: Record<number, string> = {
  200: "OK",
  201: "Created",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  304: "Not Modified",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  417: "Expectation Failed",
  422: "Unprocessable Content",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

let dateSecond = -1;
let dateText = "";
/** The Date header, formatted once a second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

/** A whole small response the server writes itself (errors before or outside any handler). */
export function plainResponse(status: number, message: string, extra = ""): Uint8Array {
  const body = JSON.stringify({
    error: {
      message,
      type: status >= 500 ? "server_error" : "invalid_request_error",
      param: null,
      code: null,
    },
  });
  return encoder.encode(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\ndate: ${httpDate()}\r\n` +
      `content-type: application/json\r\ncontent-length: ${encoder.encode(body).length}\r\n` +
      `${extra}connection: close\r\n\r\n${body}`,
  );
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/**
 * Half-closes after the last response and reads (dropping) what the client still sends for a
 * moment, so the kernel answers with FIN rather than a reset that could destroy that response.
 */
async function lingerClose(conn: Deno.Conn, reader?: SocketReader): Promise<void> {
  const timer = setTimeout(() => close(conn), LINGER_MS);
  try {
    await conn.closeWrite();
    let dropped = 0;
    while (dropped < MAX_READ_AHEAD) {
      if (reader !== undefined) {
        dropped += reader.buffered.length;
        reader.consume(reader.buffered.length);
        if (!(await reader.fill())) break;
      } else {
        const n = await conn.read(new Uint8Array(4096));
        if (n === null) break;
        dropped += n;
      }
    }
  } catch {
    // Closed by the timer or reset by the peer: either way it is done.
  } finally {
    clearTimeout(timer);
    close(conn);
  }
}

/** The bytes of a response chunk: a body may yield Uint8Array (or, leniently, strings). */
function chunkBytes(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return encoder.encode(value);
  throw new TypeError("A response body chunk must be a Uint8Array");
}

const PENDING = Symbol("pending");

/** A running server; `shutdown()` stops it gracefully. */
export class Http1Server {
  readonly addr: Deno.NetAddr;
  /** Resolves when the server has stopped and every connection has closed. */
  readonly finished: Promise<void>;
  readonly #listener: Deno.TcpListener;
  readonly #options: Required<Omit<Http1Options, "onListen" | "onConnectionError">> & Http1Options;
  readonly #handler: Http1Handler;
  readonly #connections = new Map<Deno.Conn, Connection>();
  #numLingering = 0;
  #isClosing = false;
  #closed = Promise.withResolvers<void>();

  constructor(options: Http1Options, handler: Http1Handler) {
    this.#options = { maxHeadBytes: DEFAULT_MAX_HEAD_BYTES, ...options };
    this.#handler = handler;
    this.#listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
    });
    this.addr = this.#listener.addr;
    options.onListen?.(this.addr);
    this.finished = this.#accept();
  }

  get isClosing(): boolean {
    return this.#isClosing;
  }

  get numConnections(): number {
    return this.#connections.size;
  }

  /** Stops accepting, closes idle connections, and resolves once open responses have finished. */
  shutdown(): Promise<void> {
    if (!this.#isClosing) {
      this.#isClosing = true;
      try {
        this.#listener.close();
      } catch {
        // Already closed.
      }
      for (const connection of this.#connections.values()) connection.closeIfIdle();
    }
    return this.finished;
  }

  async #accept(): Promise<void> {
    const tasks = new Set<Promise<void>>();
    while (!this.#isClosing) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#isClosing || error instanceof Deno.errors.BadResource) break;
        // EMFILE and the like: wait a moment rather than spin.
        this.#options.onConnectionError?.("accept failed", { error: String(error) });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (this.#connections.size >= this.#options.maxConnections) {
        const task = this.#refuse(conn);
        tasks.add(task);
        task.finally(() => tasks.delete(task));
        continue;
      }
      try {
        conn.setNoDelay(true);
      } catch {
        // A connection already reset: the first read will say so.
      }
      const connection = new Connection(conn, this.#options, this.#handler, this);
      this.#connections.set(conn, connection);
      const task = connection.run().catch((error) => {
        this.#options.onConnectionError?.("connection failed", { error: String(error) });
      }).finally(() => {
        this.#connections.delete(conn);
        tasks.delete(task);
      });
      tasks.add(task);
    }
    while (tasks.size > 0) await Promise.all(tasks);
    this.#closed.resolve();
  }

  async #refuse(conn: Deno.Conn): Promise<void> {
    const bytes = plainResponse(
      503,
      `The server has ${this.#options.maxConnections} connections open, its limit; retry later`,
      "retry-after: 1\r\n",
    );
    this.#options.onConnectionError?.("connection refused: too many open", {
      max_connections: this.#options.maxConnections,
    });
    try {
      await writeAll(conn, bytes);
    } catch {
      close(conn);
      return;
    }
    if (this.#numLingering >= MAX_LINGERING) return close(conn);
    this.#numLingering++;
    try {
      await lingerClose(conn);
    } finally {
      this.#numLingering--;
    }
  }
}

/** Starts an HTTP/1.1 server; throws as Deno.listen does when the address cannot be bound. */
export function serveHttp1(options: Http1Options, handler: Http1Handler): Http1Server {
  return new Http1Server(options, handler);
}

/** One TCP connection: requests read and answered one after another. */
class Connection {
  readonly #conn: Deno.Conn;
  readonly #options: Required<Omit<Http1Options, "onListen" | "onConnectionError">> & Http1Options;
  readonly #handler: Http1Handler;
  readonly #server: Http1Server;
  readonly #reader: SocketReader;
  /** Waiting for a request head with none of its bytes read: safe to close on shutdown. */
  #isIdle = true;
  #isClosed = false;
  #lingerTimer: ReturnType<typeof setTimeout> | undefined;
  /** Called when the client goes away while a request is open. */
  #onGone: (() => void) | undefined;

  constructor(
    conn: Deno.Conn,
    options: Required<Omit<Http1Options, "onListen" | "onConnectionError">> & Http1Options,
    handler: Http1Handler,
    server: Http1Server,
  ) {
    this.#conn = conn;
    this.#options = options;
    this.#handler = handler;
    this.#server = server;
    this.#reader = new SocketReader(conn);
  }

  closeIfIdle(): void {
    if (this.#isIdle && this.#reader.buffered.length === 0) this.#close();
  }

  #close(): void {
    clearTimeout(this.#lingerTimer);
    this.#isClosed = true;
    close(this.#conn);
  }

  async run(): Promise<void> {
    let isFirst = true;
    try {
      while (!this.#isClosed && !this.#server.isClosing) {
        const head = await this.#readHead(isFirst);
        isFirst = false;
        if (head === undefined) return this.#close();
        if (head instanceof HttpError) {
          this.#options.onConnectionError?.("bad request", {
            status: head.status,
            error: head.message,
          });
          await writeAll(this.#conn, plainResponse(head.status, head.message));
          return await lingerClose(this.#conn, this.#reader);
        }
        const isKeepAlive = await this.#exchange(head);
        if (!isKeepAlive) {
          if (!this.#isClosed) await lingerClose(this.#conn, this.#reader);
          return;
        }
      }
    } catch (error) {
      this.#onGone?.();
      if (!this.#isClosed) {
        this.#options.onConnectionError?.("connection error", { error: String(error) });
      }
    } finally {
      this.#close();
    }
  }

  /**
   * The next request head: undefined when the client closed, timed out idle or the server stops
   * while nothing has arrived; an HttpError to answer (408 once some bytes came too slowly).
   */
  async #readHead(isFirst: boolean): Promise<RequestHead | HttpError | undefined> {
    const reader = this.#reader;
    this.#isIdle = true;
    let isTimedOut = false;
    const hasBytes = () => reader.buffered.length > 0;
    // Both timers close the socket, which ends the pending read; the loop then sees why.
    const headerTimer = setTimeout(() => {
      isTimedOut = true;
      if (hasBytes()) {
        // Answered while the read stays pending: it drains what the client still sends until
        // the client closes or the linger timer does.
        this.#options.onConnectionError?.("request head timed out", {
          timeout_ms: this.#options.headerTimeoutMs,
        });
        writeAll(this.#conn, plainResponse(408, "The request head did not arrive in time"))
          .then(() => this.#conn.closeWrite())
          .catch(() => {})
          .finally(() => (this.#lingerTimer = setTimeout(() => this.#close(), LINGER_MS)));
      } else {
        this.#close();
      }
    }, this.#options.headerTimeoutMs);
    const idleTimer = isFirst ? undefined : setTimeout(() => {
      if (!hasBytes()) {
        isTimedOut = true;
        this.#close();
      }
    }, this.#options.keepAliveTimeoutMs);
    try {
      let scanned = 0;
      while (true) {
        // Empty lines before a request line are skipped (RFC 9112 section 2.2).
        while (
          reader.buffered.length >= 2 && reader.buffered[0] === 13 && reader.buffered[1] === 10
        ) {
          reader.consume(2);
          scanned = 0;
        }
        if (hasBytes()) this.#isIdle = false;
        const end = findHeadEnd(reader.buffered, scanned);
        if (end >= 0) {
          const bytes = reader.buffered.subarray(0, end);
          reader.consume(end + 4);
          if (end > this.#options.maxHeadBytes) {
            return new HttpError(431, "The request head is too large");
          }
          try {
            return parseHead(bytes);
          } catch (error) {
            if (error instanceof HttpError) return error;
            return new HttpError(400, "Malformed request head");
          }
        }
        scanned = Math.max(0, reader.buffered.length - 3);
        if (reader.buffered.length > this.#options.maxHeadBytes) {
          return new HttpError(431, "The request head is too large");
        }
        let isMore: boolean;
        try {
          isMore = await reader.fill();
        } catch (error) {
          if (isTimedOut || this.#isClosed) return undefined;
          throw error;
        }
        if (isTimedOut) {
          while (isMore && !this.#isClosed) {
            reader.consume(reader.buffered.length);
            isMore = await reader.fill().catch(() => false);
          }
          return undefined;
        }
        if (!isMore) return undefined;
      }
    } finally {
      clearTimeout(headerTimer);
      clearTimeout(idleTimer);
      this.#isIdle = false;
    }
  }

  /** Runs the handler for `head` and writes its response; true when the connection stays open. */
  async #exchange(head: RequestHead): Promise<boolean> {
    const abort = new AbortController();
    const completed = Promise.withResolvers<void>();
    completed.promise.catch(() => {});
    let isGone = false;
    let responseReader: ReadableStreamDefaultReader<unknown> | undefined;
    this.#onGone = () => {
      if (isGone) return;
      isGone = true;
      abort.abort(new Error("The client closed the connection"));
      responseReader?.cancel().catch(() => {});
      completed.reject(new Error("The client closed the connection"));
    };
    let source: BodySource | undefined;
    let isBodyBroken = false;
    if (head.body.kind === "length") source = lengthBody(this.#reader, head.body.length);
    if (head.body.kind === "chunked") source = chunkedBody(this.#reader);
    let sentContinue = !head.expectsContinue;
    let writing: Promise<void> = Promise.resolve();
    const watch = () => this.#watchForClose(() => completed.promise);
    const hasBody = source !== undefined && head.method !== "GET" && head.method !== "HEAD";
    const body = !hasBody || source === undefined ? null : new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        if (!sentContinue) {
          sentContinue = true;
          writing = writeAll(this.#conn, CONTINUE);
          await writing;
        }
        try {
          const part = await source!.next();
          if (part === undefined) {
            controller.close();
            watch();
          } else {
            controller.enqueue(part);
          }
        } catch (error) {
          isBodyBroken = true;
          if (error instanceof BodyCutError) this.#onGone?.();
          throw error;
        }
      },
      cancel: () => {
        isBodyBroken = true;
      },
    }, { highWaterMark: 0 });
    if (body === null && (source === undefined || source.isDone)) watch();

    let request: Request;
    try {
      request = new Request(head.url, {
        method: head.method,
        headers: head.headers,
        body,
        signal: abort.signal,
        duplex: "half",
      } as RequestInit);
    } catch (error) {
      // The fetch API refuses some requests outright (CONNECT, TRACE: forbidden methods).
      this.#options.onConnectionError?.("request refused", { error: String(error) });
      await writeAll(this.#conn, plainResponse(400, `${head.method} requests are not accepted`));
      return false;
    }
    let response: Response;
    try {
      const remoteAddr = this.#conn.remoteAddr as Deno.NetAddr;
      response = await this.#handler(request, { remoteAddr, completed: completed.promise });
      if (!(response instanceof Response)) throw new TypeError("The handler returned no Response");
    } catch (error) {
      this.#options.onConnectionError?.("handler failed", { error: String(error) });
      response = new Response("Internal Server Error", { status: 500 });
    }
    if (isGone) {
      await response.body?.cancel().catch(() => {});
      return false;
    }
    await writing;
    // The next request starts where this body ends: a body not read to its end closes the
    // connection instead of being skipped (its bytes could be anything).
    const isBodyPending = source !== undefined && !source.isDone;
    const isKeepAlive = head.isKeepAlive && !isBodyPending && !isBodyBroken &&
      !this.#server.isClosing &&
      !/(^|,)\s*close\s*(,|$)/i.test(response.headers.get("connection") ?? "");
    let isStillOpen: boolean;
    try {
      isStillOpen = await this.#writeResponse(
        head,
        response,
        isKeepAlive,
        (r) => (responseReader = r),
      );
    } catch (error) {
      this.#onGone?.();
      throw error;
    }
    this.#onGone = undefined;
    completed.resolve();
    return isStillOpen && !isGone;
  }

  /**
   * Keeps a read pending while the response is produced, so a client that disconnects is noticed
   * (its request's signal aborts); bytes of a pipelined next request are kept for it.
   */
  async #watchForClose(done: () => Promise<void>): Promise<void> {
    let isDone = false;
    done().then(() => (isDone = true), () => (isDone = true));
    while (!isDone && this.#reader.buffered.length < MAX_READ_AHEAD) {
      let isMore: boolean;
      try {
        isMore = await this.#reader.fill();
      } catch {
        isMore = false;
      }
      if (!isMore) {
        if (!isDone) this.#onGone?.();
        return;
      }
    }
  }

  async #writeResponse(
    head: RequestHead,
    response: Response,
    isKeepAlive: boolean,
    setReader: (reader: ReadableStreamDefaultReader<unknown>) => void,
  ): Promise<boolean> {
    const status = response.status;
    const isBodyless = head.method === "HEAD" || status === 204 || status === 304 ||
      (status >= 100 && status < 200);
    const reason = (response.statusText || REASONS[status] || "Unknown").replace(/[\r\n]/g, "");
    let text = `HTTP/1.1 ${status} ${reason}\r\n`;
    let hasDate = false;
    let declaredLength: string | undefined;
    for (const [name, value] of response.headers) {
      if (name === "connection" || name === "transfer-encoding" || name === "keep-alive") continue;
      if (name === "content-length") {
        declaredLength = value;
        continue;
      }
      if (name === "date") hasDate = true;
      text += `${name}: ${value}\r\n`;
    }
    if (!hasDate) text += `date: ${httpDate()}\r\n`;
    const isChunkedAllowed = head.version === "1.1";
    let keepAlive = isKeepAlive;
    const connectionLine = () =>
      keepAlive
        ? (head.version === "1.0" ? "connection: keep-alive\r\n" : "")
        : "connection: close\r\n";

    if (response.body === null || isBodyless) {
      await response.body?.cancel().catch(() => {});
      const length = isBodyless && status !== 204 && status !== 304 && head.method === "HEAD"
        ? declaredLength
        : isBodyless
        ? undefined
        : "0";
      if (length !== undefined) text += `content-length: ${length}\r\n`;
      await writeAll(this.#conn, encoder.encode(text + connectionLine() + "\r\n"));
      return keepAlive;
    }
    const reader = response.body.getReader();
    setReader(reader);
    try {
      const first = await reader.read();
      if (first.done) {
        text += "content-length: 0\r\n";
        await writeAll(this.#conn, encoder.encode(text + connectionLine() + "\r\n"));
        return keepAlive;
      }
      const firstBytes = chunkBytes(first.value);
      // A body that is already complete (a string, JSON, bytes) goes out with its length; only
      // one still being produced (a stream, SSE) is chunked. The check waits one timer tick.
      const pending = reader.read();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const second = await Promise.race([
        pending,
        new Promise<typeof PENDING>((r) => (timer = setTimeout(() => r(PENDING), 0))),
      ]);
      clearTimeout(timer);
      if (second !== PENDING && second.done) {
        text += `content-length: ${firstBytes.length}\r\n`;
        await writeAll(
          this.#conn,
          concat([encoder.encode(text + connectionLine() + "\r\n"), firstBytes]),
        );
        return keepAlive;
      }
      // HTTP/1.0 has no chunked coding: the body ends where the connection does.
      if (!isChunkedAllowed) keepAlive = false;
      const frame = (bytes: Uint8Array) =>
        isChunkedAllowed
          ? concat([
            encoder.encode(`${bytes.length.toString(16)}\r\n`),
            bytes,
            encoder.encode("\r\n"),
          ])
          : bytes;
      if (isChunkedAllowed) text += "transfer-encoding: chunked\r\n";
      await writeAll(
        this.#conn,
        concat([encoder.encode(text + connectionLine() + "\r\n"), frame(firstBytes)]),
      );
      let next = second === PENDING ? await pending : second;
      while (!next.done) {
        const bytes = chunkBytes(next.value);
        // Each chunk is written as it comes, so a stream reaches the client token by token.
        if (bytes.length > 0) await writeAll(this.#conn, frame(bytes));
        next = await reader.read();
      }
      if (isChunkedAllowed) await writeAll(this.#conn, encoder.encode("0\r\n\r\n"));
      return keepAlive;
    } catch (error) {
      await reader.cancel().catch(() => {});
      throw error;
    }
  }
}

/** Where the blank line ending a head starts (CRLFCRLF), searching from `from`; -1 if none yet. */
function findHeadEnd(bytes: Uint8Array, from: number): number {
  let i = from;
  while (true) {
    const at = indexOfCrlf(bytes, i);
    if (at < 0) return -1;
    if (bytes[at + 2] === 13 && bytes[at + 3] === 10) return at;
    i = at + 1;
  }
}
