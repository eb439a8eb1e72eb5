// Parses an HTTP/1.x request head (request line and header fields) and decides how its body is
// framed, by RFC 9112's rules: anything ambiguous (Content-Length with Transfer-Encoding, differing
// Content-Lengths, obs-fold, space before the colon) is refused, because a proxy in front could read
// the same bytes as a different request (request smuggling).

/** A request the server refuses before any handler sees it: answered with `status`, then closed. */
export class HttpError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = "HttpError";
    this.status = status;
  }
}

/** How the body after the head is delimited. */
export type BodyFraming = { kind: "none" } | { kind: "length"; length: number } | {
  kind: "chunked";
};

export interface RequestHead {
  method: string;
  /** The request target as sent: origin-form (`/path?q`) or absolute-form (`http://h/path`). */
  target: string;
  version: "1.0" | "1.1";
  headers: [string, string][];
  url: string;
  body: BodyFraming;
  /** The client asks for the connection to stay open after the response. */
  isKeepAlive: boolean;
  /** `Expect: 100-continue` on HTTP/1.1: the client waits for 100 before it sends the body. */
  expectsContinue: boolean;
}

/** At most this many header fields; more is answered 431 like an oversized head. */
export const MAX_HEADER_FIELDS = 100;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: visible ASCII, space, tab and obs-text; no CR, LF, NUL or other controls. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const TARGET = /^[\x21-\x7e]+$/;
/** A Host header: a reg-name, IPv4 or bracketed IPv6, and an optional port. */
const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?$/;

/** The head's bytes as a string of the same code units (latin1), without TextDecoder's remaps. */
function latin1(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

function trimOws(value: string): string {
  return value.replace(/^[ \t]+|[ \t]+$/g, "");
}

function listValues(headers: [string, string][], name: string): string[] | undefined {
  const values = headers.filter(([k]) => k === name).map(([, v]) => v);
  if (values.length === 0) return undefined;
  return values.join(",").split(",").map(trimOws).filter((v) => v !== "");
}

function framing(version: "1.0" | "1.1", headers: [string, string][]): BodyFraming {
  const lengths = listValues(headers, "content-length");
  const codings = listValues(headers, "transfer-encoding");
  if (codings !== undefined) {
    if (lengths !== undefined) {
      throw new HttpError(400, "Content-Length and Transfer-Encoding together are ambiguous");
    }
    if (version === "1.0") throw new HttpError(400, "HTTP/1.0 has no Transfer-Encoding");
    const lower = codings.map((c) => c.toLowerCase());
    if (lower.at(-1) !== "chunked") {
      throw new HttpError(400, "Transfer-Encoding must end with chunked");
    }
    if (lower.length > 1) {
      throw new HttpError(501, `Transfer-Encoding ${codings.join(", ")} is not supported`);
    }
    return { kind: "chunked" };
  }
  if (lengths === undefined) return { kind: "none" };
  if (lengths.length === 0 || !lengths.every((l) => /^[0-9]{1,15}$/.test(l))) {
    throw new HttpError(400, "Content-Length must be a decimal number");
  }
  if (!lengths.every((l) => Number(l) === Number(lengths[0]))) {
    throw new HttpError(400, "Content-Length values differ");
  }
  const length = Number(lengths[0]);
  return length === 0 ? { kind: "none" } : { kind: "length", length };
}

function requestUrl(target: string, headers: [string, string][], version: string): string {
  const hosts = headers.filter(([k]) => k === "host").map(([, v]) => v);
  if (hosts.length > 1 || (version === "1.1" && hosts.length === 0)) {
    throw new HttpError(400, "An HTTP/1.1 request needs exactly one Host header");
  }
  const host = hosts[0] ?? "";
  if (!HOST.test(host)) throw new HttpError(400, "The Host header is malformed");
  let url: URL;
  try {
    if (target.startsWith("/")) url = new URL(`http://${host || "localhost"}${target}`);
    else if (/^https?:\/\//i.test(target)) url = new URL(target);
    else throw new HttpError(400, "The request target must be a path or an absolute URL");
  } catch (error) {
    if (error instanceof HttpError) throw error;
    throw new HttpError(400, "The request target is not a valid URL");
  }
  return url.href;
}

/** Parses `bytes`: the head up to, not including, the blank line that ends it. */
export function parseHead(bytes: Uint8Array): RequestHead {
  const lines = latin1(bytes).split("\r\n");
  const requestLine = lines[0].split(" ");
  if (requestLine.length !== 3) throw new HttpError(400, "Malformed request line");
  const [method, target, protocol] = requestLine;
  if (!TOKEN.test(method)) throw new HttpError(400, "Malformed method");
  if (!TARGET.test(target)) throw new HttpError(400, "Malformed request target");
  const match = /^HTTP\/1\.([01])$/.exec(protocol);
  if (match === null) {
    if (/^HTTP\/[0-9]\.[0-9]$/.test(protocol)) {
      throw new HttpError(505, `${protocol} is not supported; use HTTP/1.1`);
    }
    throw new HttpError(400, "Malformed HTTP version");
  }
  const version = match[1] === "1" ? "1.1" : "1.0";
  if (lines.length - 1 > MAX_HEADER_FIELDS) {
    throw new HttpError(431, `More than ${MAX_HEADER_FIELDS} header fields`);
  }
  const headers: [string, string][] = [];
  for (const line of lines.slice(1)) {
    // obs-fold (a continuation line) is refused, as RFC 9112 allows, rather than unfolded.
    if (line.startsWith(" ") || line.startsWith("\t")) {
      throw new HttpError(400, "Folded header lines are not accepted");
    }
    const colon = line.indexOf(":");
    const name = line.slice(0, colon);
    // No space may come before the colon (a proxy could read "name :" as another field).
    if (colon <= 0 || !TOKEN.test(name)) throw new HttpError(400, "Malformed header field");
    const value = trimOws(line.slice(colon + 1));
    if (!FIELD_VALUE.test(value)) throw new HttpError(400, "Malformed header field value");
    headers.push([name.toLowerCase(), value]);
  }
  const connection = listValues(headers, "connection")?.map((t) => t.toLowerCase()) ?? [];
  const isKeepAlive = version === "1.1"
    ? !connection.includes("close")
    : connection.includes("keep-alive") && !connection.includes("close");
  const expect = headers.find(([k]) => k === "expect")?.[1].toLowerCase();
  if (expect !== undefined && expect !== "100-continue") {
    throw new HttpError(417, `Expect: ${expect} is not supported`);
  }
  return {
    method,
    target,
    version,
    headers,
    url: requestUrl(target, headers, version),
    body: framing(version, headers),
    isKeepAlive,
    expectsContinue: expect === "100-continue" && version === "1.1",
  };
}
