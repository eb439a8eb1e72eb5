// The real `denollm serve` process on loopback for the hardening tests: spawn it with flags, read
// its JSON log, wait until it serves; plus raw TCP requests for clients no fetch() can imitate
// (stalled bodies, missing final chunks).

const ROOT = new URL("..", import.meta.url).pathname;
export const MODEL_DIR = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-ffi",
  "--allow-net",
  "--unstable-no-legacy-abort",
];
/** Small enough to allocate fast, large enough for 50 streams of a 512-token model. */
const SERVE_DEFAULTS = ["--kv-cache-memory", "64M", "--threads", "1", "--log-format", "json"];

/** This process's environment without settings meant for a real server (DENOLLM_*, systemd's). */
export function cleanEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) =>
      !k.startsWith("DENOLLM_") && k !== "NOTIFY_SOCKET" && k !== "JOURNAL_STREAM"
    ),
  );
}

export type LogLine = { level: string; msg: string; [key: string]: unknown };

/** A running `denollm serve` and its JSON log. */
export class ServerProcess {
  readonly child: Deno.ChildProcess;
  readonly logs: LogLine[] = [];
  readonly rawStderr: string[] = [];
  readonly exited: Promise<Deno.CommandStatus>;
  #listening = Promise.withResolvers<number>();
  #waiters: { predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }[] = [];
  #reading: Promise<void>;
  #stdoutClosed: Promise<void>;

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", ...PERMISSIONS, "main.ts", "serve", ...SERVE_DEFAULTS, ...args],
      cwd: ROOT,
      env: { ...cleanEnv(), NO_COLOR: "1", ...env },
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.exited = this.child.status;
    // Awaited through `port` by tests that need it; failure tests never ask.
    this.#listening.promise.catch(() => {});
    this.#reading = this.#read();
    this.#stdoutClosed = this.child.stdout.cancel();
  }

  async #read(): Promise<void> {
    const lines = this.child.stderr.pipeThrough(new TextDecoderStream());
    let pending = "";
    for await (const chunk of lines) {
      pending += chunk;
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const text = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        this.rawStderr.push(text);
        let line: LogLine;
        try {
          line = JSON.parse(text);
        } catch {
          continue;
        }
        this.logs.push(line);
        if (typeof line.port === "number") this.#listening.resolve(line.port);
        this.#waiters = this.#waiters.filter((w) =>
          !(w.predicate(line) && (w.resolve(line), true))
        );
      }
    }
    if (pending) this.rawStderr.push(pending);
    this.#listening.reject(new Error(`The server exited early:\n${this.rawStderr.join("\n")}`));
  }

  /** The port, once the server logs where it listens. */
  get port(): Promise<number> {
    return this.#listening.promise;
  }

  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    const found = this.logs.find(predicate);
    if (found) return Promise.resolve(found);
    const { promise, resolve, reject } = Promise.withResolvers<LogLine>();
    this.#waiters.push({ predicate, resolve });
    const timer = setTimeout(
      () => reject(new Error(`No such log line in ${timeoutMs} ms:\n${this.rawStderr.join("\n")}`)),
      timeoutMs,
    );
    return promise.finally(() => clearTimeout(timer));
  }

  /** Stops the process if still running and waits for its output to end. */
  async close(): Promise<Deno.CommandStatus> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await this.#reading;
    await this.#stdoutClosed;
    return await this.exited;
  }
}

/** Polls /health until 200, recording every status seen on the way. */
export async function waitHealthy(url: string, timeoutMs = 30_000): Promise<number[]> {
  const statuses: number[] = [];
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const response = await fetch(`${url}/health`);
    await response.body?.cancel();
    statuses.push(response.status);
    if (response.status === 200) return statuses;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`/health never became 200: ${statuses.slice(-5).join(", ")}`);
}

/** What a raw HTTP exchange got back: the status line's code, headers and body. */
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Milliseconds from the last byte sent to the connection's end. */
  elapsedMs: number;
}

/**
 * Sends `request` bytes as they are (several parts with `gapMs` between them) and reads until the
 * server closes the connection or `timeoutMs` passes; undefined when nothing came back in time.
 */
export async function rawRequest(
  port: number,
  parts: string[],
  opts: { gapMs?: number; timeoutMs?: number } = {},
): Promise<RawResponse | undefined> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timeoutMs = opts.timeoutMs ?? 10_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (const [i, part] of parts.entries()) {
      if (i > 0) await new Promise((r) => setTimeout(r, opts.gapMs ?? 0));
      try {
        await conn.write(new TextEncoder().encode(part));
      } catch {
        // The server answered and closed while we were still sending: read what it said.
        break;
      }
    }
    const started = performance.now();
    const reading = (async () => {
      const chunks: string[] = [];
      const buffer = new Uint8Array(16 << 10);
      const decoder = new TextDecoder();
      while (true) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        chunks.push(decoder.decode(buffer.subarray(0, n), { stream: true }));
        const text = chunks.join("");
        // One response is enough: a Content-Length body read in full ends it.
        const end = text.indexOf("\r\n\r\n");
        const length = /\r\ncontent-length: *(\d+)/i.exec(text);
        if (end >= 0 && length && text.length >= end + 4 + Number(length[1])) break;
      }
      return chunks.join("");
    })();
    const text = await Promise.race([
      reading,
      new Promise<undefined>((
        resolve,
      ) => (timer = setTimeout(() => resolve(undefined), timeoutMs))),
    ]);
    if (text === undefined || text === "") return undefined;
    const end = text.indexOf("\r\n\r\n");
    const [statusLine, ...headerLines] = text.slice(0, end).split("\r\n");
    const headers = Object.fromEntries(headerLines.map((l) => {
      const colon = l.indexOf(":");
      return [l.slice(0, colon).trim().toLowerCase(), l.slice(colon + 1).trim()];
    }));
    return {
      status: Number(statusLine.split(" ")[1]),
      headers,
      body: text.slice(end + 4),
      elapsedMs: performance.now() - started,
    };
  } finally {
    clearTimeout(timer);
    conn.close();
  }
}
