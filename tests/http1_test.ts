// The HTTP/1.1 server (src/server/http1.ts) over real loopback sockets: malformed and smuggling-prone
// heads, pipelining, chunked bodies both ways, 100-continue, HTTP/1.0, the header and idle
// timeouts, the connection cap, disconnects and graceful shutdown.
import assert from "node:assert/strict";
import { type Http1Handler, type Http1Options, serveHttp1 } from "../src/server/http1.ts";

const encoder = new TextEncoder();

/** A handler that answers with the method, path and body it read ("GET /a <body>"). */
const echo: Http1Handler = async (request) => {
  let body: string;
  try {
    body = await request.text();
  } catch {
    return new Response("bad body", { status: 400 });
  }
  return new Response(`${request.method} ${new URL(request.url).pathname} ${body}`);
};

async function withServer(
  options: Partial<Http1Options>,
  handler: Http1Handler,
  fn: (port: number, server: ReturnType<typeof serveHttp1>) => Promise<void>,
): Promise<void> {
  const server = serveHttp1({
    hostname: "127.0.0.1",
    port: 0,
    headerTimeoutMs: 10_000,
    keepAliveTimeoutMs: 10_000,
    maxConnections: 64,
    ...options,
  }, handler);
  try {
    await fn(server.addr.port, server);
  } finally {
    await server.shutdown();
  }
}

/** A raw client socket: write bytes, read text until a condition or the end of the stream. */
class Raw {
  conn!: Deno.TcpConn;
  text = "";
  isEnded = false;
  #decoder = new TextDecoder();
  #isGuardHit = false;
  #guard: ReturnType<typeof setTimeout> | undefined;

  /** Reads fail after `guardMs` (a guard against a hang, not a timing). */
  static async open(port: number, guardMs = 10_000): Promise<Raw> {
    const raw = new Raw();
    raw.conn = await Deno.connect({ hostname: "127.0.0.1", port });
    raw.#guard = setTimeout(() => {
      raw.#isGuardHit = true;
      raw.close();
    }, guardMs);
    return raw;
  }

  async send(text: string): Promise<void> {
    await this.conn.write(encoder.encode(text));
  }

  /** Reads until `until(text)` holds or the server closes; false if it never held. */
  async readUntil(until: (text: string) => boolean): Promise<boolean> {
    const buffer = new Uint8Array(16 << 10);
    while (!until(this.text)) {
      if (this.isEnded) return false;
      const n = await this.conn.read(buffer).catch(() => null);
      if (n === null) {
        if (this.#isGuardHit) {
          throw new Error(`no answer in time; got ${JSON.stringify(this.text)}`);
        }
        this.isEnded = true;
        continue;
      }
      this.text += this.#decoder.decode(buffer.subarray(0, n), { stream: true });
    }
    return true;
  }

  /** Reads to the end of the stream (the server closed). */
  async readToEnd(): Promise<string> {
    await this.readUntil(() => false);
    return this.text;
  }

  close(): void {
    clearTimeout(this.#guard);
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** The responses in `text`, each with its status, lowercase headers and body (both framings). */
function parseResponses(text: string) {
  const out: { status: number; headers: Record<string, string>; body: string }[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf("\r\n\r\n");
    if (end < 0) break;
    const [statusLine, ...lines] = rest.slice(0, end).split("\r\n");
    const headers = Object.fromEntries(lines.map((l) => {
      const colon = l.indexOf(":");
      return [l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()];
    }));
    rest = rest.slice(end + 4);
    let body = "";
    const status = Number(statusLine.split(" ")[1]);
    if (headers["content-length"] !== undefined) {
      body = rest.slice(0, Number(headers["content-length"]));
      rest = rest.slice(body.length);
    } else if (headers["transfer-encoding"] === "chunked") {
      while (true) {
        const lineEnd = rest.indexOf("\r\n");
        const size = parseInt(rest.slice(0, lineEnd), 16);
        rest = rest.slice(lineEnd + 2);
        if (size === 0) {
          rest = rest.slice(2);
          break;
        }
        body += rest.slice(0, size);
        rest = rest.slice(size + 2);
      }
    } else if (status !== 100 && status !== 204) {
      body = rest;
      rest = "";
    }
    out.push({ status, headers, body });
  }
  return out;
}

const GOOD = "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";

Deno.test("http1: malformed and ambiguous heads are refused and the connection closed", async (t) => {
  await withServer({ maxHeadBytes: 4096 }, echo, async (port) => {
    const cases: [string, string, number][] = [
      [
        "Content-Length with Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
      ],
      [
        "two different Content-Lengths",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
      ],
      [
        "a negative Content-Length",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
      ],
      ["a hex Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", 400],
      ["an obs-fold line", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", 400],
      ["space before the colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400],
      ["a NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", 400],
      ["a bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", 400],
      ["no Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400],
      ["two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400],
      ["a garbage request line", "HELLO\r\n\r\n", 400],
      ["a target that is no path", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400],
      ["HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505],
      [
        "Transfer-Encoding not ending in chunked",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
      ],
      [
        "chunked after another coding",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
      ],
      [
        "Transfer-Encoding on HTTP/1.0",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
      ],
      ["a method fetch() forbids", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 400],
      ["an unknown Expect", "GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417],
      [
        "a head over the limit",
        `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${"x".repeat(5000)}\r\n\r\n`,
        431,
      ],
      ["a head over the limit with no end", `GET / HTTP/1.1\r\nX-Big: ${"x".repeat(5000)}`, 431],
      ["too many fields", `GET / HTTP/1.1\r\nHost: a\r\n${"X: 1\r\n".repeat(120)}\r\n`, 431],
    ];
    for (const [name, request, status] of cases) {
      await t.step(`${name}: ${status}`, async () => {
        const raw = await Raw.open(port);
        try {
          await raw.send(request);
          const [response, ...more] = parseResponses(await raw.readToEnd());
          assert.equal(response?.status, status, raw.text);
          assert.equal(response.headers.connection, "close");
          assert.equal(more.length, 0);
        } finally {
          raw.close();
        }
      });
    }
    await t.step("a malformed chunk size fails the body; the connection closes", async () => {
      const raw = await Raw.open(port);
      try {
        await raw.send("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        const [response] = parseResponses(await raw.readToEnd());
        assert.equal(response.status, 400);
        assert.equal(response.body, "bad body");
      } finally {
        raw.close();
      }
    });
    await t.step("chunk data not followed by CRLF fails the body", async () => {
      const raw = await Raw.open(port);
      try {
        await raw.send(
          "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        );
        const [response] = parseResponses(await raw.readToEnd());
        assert.equal(response.status, 400);
      } finally {
        raw.close();
      }
    });
    await t.step("the server still answers afterwards", async () => {
      const raw = await Raw.open(port);
      try {
        await raw.send(GOOD);
        assert.ok(await raw.readUntil((text) => parseResponses(text).length === 1));
        assert.equal(parseResponses(raw.text)[0].body, "GET /ok ");
      } finally {
        raw.close();
      }
    });
  });
});

Deno.test("http1: pipelined requests are answered in order with both body framings", async () => {
  await withServer({}, echo, async (port) => {
    const raw = await Raw.open(port);
    try {
      await raw.send(
        "\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n" +
          "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
          "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
          "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n" +
          "GET /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
      );
      const responses = parseResponses(await raw.readToEnd());
      assert.deepEqual(responses.map((r) => r.body), [
        "GET /a ",
        "POST /b hello",
        "POST /c abcde",
        "GET /d ",
      ]);
      // Complete bodies go out with their length; the last one asked to close.
      assert.equal(responses[0].headers["content-length"], "7");
      assert.equal(responses[3].headers.connection, "close");
    } finally {
      raw.close();
    }
  });
});

Deno.test("http1: a streamed response is chunked and each chunk is flushed", async () => {
  const second = Promise.withResolvers<void>();
  const handler: Http1Handler = () =>
    new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(encoder.encode("data: one\n\n"));
          // The second chunk waits until the client has seen the first: without a flush per
          // chunk this test hangs.
          await second.promise;
          controller.enqueue(encoder.encode("data: two\n\n"));
          controller.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  await withServer({}, handler, async (port) => {
    const raw = await Raw.open(port);
    try {
      await raw.send(GOOD);
      assert.ok(await raw.readUntil((text) => text.includes("data: one")));
      assert.match(raw.text, /transfer-encoding: chunked/);
      assert.doesNotMatch(raw.text, /content-length/);
      second.resolve();
      assert.ok(await raw.readUntil((text) => text.endsWith("0\r\n\r\n")));
      assert.equal(parseResponses(raw.text)[0].body, "data: one\n\ndata: two\n\n");
    } finally {
      raw.close();
    }
  });
});

Deno.test("http1: Expect: 100-continue gets 100 once the handler reads the body", async () => {
  await withServer({}, echo, async (port) => {
    const raw = await Raw.open(port);
    try {
      await raw.send(
        "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
      );
      assert.ok(await raw.readUntil((text) => text.includes("\r\n\r\n")));
      assert.match(raw.text, /^HTTP\/1\.1 100 Continue\r\n\r\n$/);
      await raw.send("body");
      assert.ok(await raw.readUntil((text) => text.includes("POST /e body")));
    } finally {
      raw.close();
    }
  });
});

Deno.test("http1: HTTP/1.0 closes unless keep-alive is asked, and streams without chunks", async () => {
  const stream: Http1Handler = (request, info) =>
    new URL(request.url).pathname === "/s"
      ? new Response(
        new ReadableStream({
          async pull(controller) {
            // Still being produced when the head is written, so no Content-Length can be sent.
            await new Promise((r) => setTimeout(r, 50));
            controller.enqueue(encoder.encode("x"));
            controller.close();
          },
          start(controller) {
            controller.enqueue(encoder.encode("a"));
          },
        }),
      )
      : echo(request, info);
  await withServer({}, stream, async (port) => {
    const plain = await Raw.open(port);
    try {
      await plain.send("GET /a HTTP/1.0\r\n\r\n");
      const [response] = parseResponses(await plain.readToEnd());
      assert.equal(response.body, "GET /a ");
      assert.equal(response.headers.connection, "close");
    } finally {
      plain.close();
    }
    const kept = await Raw.open(port);
    try {
      await kept.send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
      assert.ok(await kept.readUntil((text) => parseResponses(text).length === 1));
      assert.equal(parseResponses(kept.text)[0].headers.connection, "keep-alive");
      await kept.send("GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
      const responses = parseResponses(await kept.readToEnd());
      assert.equal(responses.length, 2);
      assert.equal(responses[1].headers["transfer-encoding"], undefined);
      assert.equal(responses[1].body, "ax");
    } finally {
      kept.close();
    }
  });
});

Deno.test("http1: a head not complete within the header timeout gets 408", async (t) => {
  await withServer({ headerTimeoutMs: 300 }, echo, async (port) => {
    await t.step("trickled bytes: 408 and close", async () => {
      const raw = await Raw.open(port);
      let isReading = true;
      try {
        // A slowloris: header bytes keep coming, the head never ends.
        const trickle = (async () => {
          await raw.send("GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ");
          while (isReading) {
            await new Promise((r) => setTimeout(r, 50));
            if (!(await raw.send("x").then(() => true, () => false))) break;
          }
        })();
        const [response] = parseResponses(await raw.readToEnd());
        isReading = false;
        await trickle;
        assert.equal(response.status, 408);
        assert.equal(response.headers.connection, "close");
      } finally {
        isReading = false;
        raw.close();
      }
    });
    await t.step("a connection that sends nothing is closed without a response", async () => {
      const raw = await Raw.open(port);
      try {
        assert.equal(await raw.readToEnd(), "");
      } finally {
        raw.close();
      }
    });
  });
});

Deno.test("http1: an idle keep-alive connection is closed after the keep-alive timeout", async () => {
  await withServer({ keepAliveTimeoutMs: 200 }, echo, async (port) => {
    const raw = await Raw.open(port);
    try {
      await raw.send(GOOD);
      assert.ok(await raw.readUntil((text) => parseResponses(text).length === 1));
      // Kept open at first (a second request on it works), then closed once idle.
      await raw.send(GOOD);
      assert.ok(await raw.readUntil((text) => parseResponses(text).length === 2));
      await raw.readToEnd();
      assert.ok(raw.isEnded);
      assert.equal(parseResponses(raw.text).length, 2);
    } finally {
      raw.close();
    }
  });
});

Deno.test("http1: connections past the cap get 503 and the server serves again after", async () => {
  await withServer({ maxConnections: 2 }, echo, async (port, server) => {
    const held = [await Raw.open(port), await Raw.open(port)];
    try {
      // Both held connections are accepted before the third arrives.
      for (const raw of held) {
        await raw.send(GOOD);
        assert.ok(await raw.readUntil((text) => parseResponses(text).length === 1));
      }
      const over = await Raw.open(port);
      try {
        await over.send(GOOD);
        const [response] = parseResponses(await over.readToEnd());
        assert.equal(response.status, 503);
        assert.equal(response.headers.connection, "close");
        assert.match(JSON.parse(response.body).error.message, /2 connections/);
      } finally {
        over.close();
      }
    } finally {
      for (const raw of held) raw.close();
    }
    while (server.numConnections > 0) await new Promise((r) => setTimeout(r, 10));
    const again = await Raw.open(port);
    try {
      await again.send(GOOD);
      assert.ok(await again.readUntil((text) => parseResponses(text).length === 1));
      assert.equal(parseResponses(again.text)[0].status, 200);
    } finally {
      again.close();
    }
  });
});

Deno.test("http1: a client that disconnects aborts its request's signal", async () => {
  const aborted = Promise.withResolvers<void>();
  const completed = Promise.withResolvers<string>();
  const started = Promise.withResolvers<void>();
  const handler: Http1Handler = (request, info) => {
    request.signal.addEventListener("abort", () => aborted.resolve());
    info.completed.then(() => completed.resolve("resolved"), () => completed.resolve("rejected"));
    let timer: ReturnType<typeof setInterval> | undefined;
    return new Response(
      new ReadableStream({
        start(controller) {
          started.resolve();
          timer = setInterval(() => controller.enqueue(encoder.encode("tick\n")), 20);
        },
        cancel() {
          clearInterval(timer);
        },
      }),
    );
  };
  await withServer({}, handler, async (port) => {
    const raw = await Raw.open(port);
    await raw.send(GOOD);
    await started.promise;
    assert.ok(await raw.readUntil((text) => text.includes("tick")));
    raw.close();
    await aborted.promise;
    assert.equal(await completed.promise, "rejected");
  });
});

Deno.test("http1: a client that disconnects mid-body fails the body and aborts the signal", async () => {
  const outcome = Promise.withResolvers<{ error: string; isAborted: boolean }>();
  const handler: Http1Handler = async (request) => {
    try {
      await request.text();
      outcome.resolve({ error: "none", isAborted: request.signal.aborted });
    } catch (error) {
      outcome.resolve({ error: (error as Error).name, isAborted: request.signal.aborted });
    }
    return new Response("unused");
  };
  await withServer({}, handler, async (port) => {
    const raw = await Raw.open(port);
    await raw.send("POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b");
    raw.close();
    const { error, isAborted } = await outcome.promise;
    assert.notEqual(error, "none");
    assert.equal(isAborted, true);
  });
});

Deno.test("http1: info.completed resolves once the response is written", async () => {
  const completed = Promise.withResolvers<string>();
  const handler: Http1Handler = (_request, info) => {
    info.completed.then(() => completed.resolve("resolved"), () => completed.resolve("rejected"));
    assert.equal(info.remoteAddr.hostname, "127.0.0.1");
    return new Response("done");
  };
  await withServer({}, handler, async (port) => {
    const raw = await Raw.open(port);
    try {
      await raw.send(GOOD);
      assert.equal(await completed.promise, "resolved");
      assert.ok(await raw.readUntil((text) => text.endsWith("done")));
    } finally {
      raw.close();
    }
  });
});

Deno.test("http1: shutdown closes idle connections and lets an open response finish", async () => {
  const gate = Promise.withResolvers<void>();
  const entered = Promise.withResolvers<void>();
  const handler: Http1Handler = async () => {
    entered.resolve();
    await gate.promise;
    return new Response("late");
  };
  const server = serveHttp1({
    hostname: "127.0.0.1",
    port: 0,
    headerTimeoutMs: 10_000,
    keepAliveTimeoutMs: 10_000,
    maxConnections: 8,
  }, handler);
  const port = server.addr.port;
  const idle = await Raw.open(port);
  const busy = await Raw.open(port);
  try {
    await busy.send(GOOD);
    await entered.promise;
    let isStopped = false;
    const stopping = server.shutdown().then(() => (isStopped = true));
    assert.equal(await idle.readToEnd(), "");
    assert.equal(isStopped, false);
    gate.resolve();
    const [response] = parseResponses(await busy.readToEnd());
    assert.equal(response.body, "late");
    assert.equal(response.headers.connection, "close");
    await stopping;
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
  } finally {
    idle.close();
    busy.close();
    await server.shutdown();
  }
});
