// The real `denollm serve` against slow, hostile and overloading clients: body deadlines,
// Content-Type and CORS, /tokenize limits, bounded queueing, start-up messages, engine failure and
// a drain held by a stalled body. Every request loop here is bounded in count and time.
import assert from "node:assert/strict";
import { MODEL_DIR, rawRequest, ServerProcess, waitHealthy } from "./server_process.ts";

const JSON_HEADERS = { "content-type": "application/json" };

function head(method: string, path: string, headers: Record<string, string>): string {
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n${lines}\r\n`;
}

/** The `data:` payloads of an SSE body. */
function sseEvents(text: string): string[] {
  return text.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
}

async function errorOf(response: Response, status: number) {
  const text = await response.text();
  assert.equal(response.status, status, text);
  const body = JSON.parse(text);
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
  return body.error as { message: string; type: string; code: string | null };
}

Deno.test("denollm serve against slow and hostile clients", async (t) => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--body-timeout",
    "1",
    "--max-num-seqs",
    "1",
    "--max-queue-delay",
    "0.2",
    "--max-queued-tokens",
    "18",
    "--allowed-origins",
    "https://ok.example",
  ]);
  try {
    const port = await server.port;
    const url = `http://127.0.0.1:${port}`;
    await waitHealthy(url);
    const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 2 });

    await t.step(
      "a body shorter than its Content-Length is cut at the deadline with 408",
      async () => {
        const started = performance.now();
        const response = await rawRequest(port, [
          head("POST", "/v1/completions", { ...JSON_HEADERS, "content-length": "100" }),
          body.slice(0, 10),
        ], { timeoutMs: 5000 });
        assert.ok(response, "no answer within 5 s");
        assert.equal(response.status, 408, response.body);
        assert.equal(JSON.parse(response.body).error.code, "request_timeout");
        const elapsedS = (performance.now() - started) / 1000;
        assert.ok(elapsedS >= 0.9 && elapsedS < 4, `${elapsedS} s`);
      },
    );

    await t.step("a chunked body with no final chunk is cut with 408", async () => {
      const response = await rawRequest(port, [
        head("POST", "/tokenize", { ...JSON_HEADERS, "transfer-encoding": "chunked" }),
        `${body.length.toString(16)}\r\n${body}\r\n`,
      ], { timeoutMs: 5000 });
      assert.ok(response, "no answer within 5 s");
      assert.equal(response.status, 408, response.body);
    });

    await t.step("stalled requests never hold the server", async () => {
      const stalled = Array.from({ length: 8 }, () =>
        rawRequest(port, [
          head("POST", "/v1/completions", { ...JSON_HEADERS, "content-length": "1000" }),
          "{",
        ], { timeoutMs: 5000 }));
      const started = performance.now();
      const ok = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: JSON_HEADERS,
        body,
      });
      assert.equal(ok.status, 200);
      await ok.body?.cancel();
      assert.ok(performance.now() - started < 1000);
      for (const response of await Promise.all(stalled)) assert.equal(response?.status, 408);
    });

    await t.step("POST needs Content-Type application/json (415 otherwise)", async () => {
      for (
        const type of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
      ) {
        const error = await errorOf(
          await fetch(`${url}/v1/completions`, {
            method: "POST",
            headers: { "content-type": type },
            body,
          }),
          415,
        );
        assert.equal(error.code, "unsupported_media_type");
        assert.match(error.message, /application\/json/);
      }
      const bare = await rawRequest(port, [
        head("POST", "/v1/chat/completions", { "content-length": String(body.length) }) + body,
      ]);
      assert.equal(bare?.status, 415);
      const withCharset = await fetch(`${url}/tokenize`, {
        method: "POST",
        headers: { "content-type": "Application/JSON; charset=utf-8" },
        body: JSON.stringify({ prompt: "Once" }),
      });
      assert.equal(withCharset.status, 200);
      await withCharset.body?.cancel();
    });

    await t.step("CORS: preflights answered for --allowed-origins only", async () => {
      const preflight = (origin: string) =>
        fetch(`${url}/v1/chat/completions`, {
          method: "OPTIONS",
          headers: {
            origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
          },
        });
      const allowed = await preflight("https://ok.example");
      assert.equal(allowed.status, 204);
      assert.equal(allowed.headers.get("access-control-allow-origin"), "https://ok.example");
      assert.match(allowed.headers.get("access-control-allow-methods") ?? "", /POST/);
      assert.match(allowed.headers.get("access-control-allow-headers") ?? "", /Content-Type/i);
      await allowed.body?.cancel();
      const other = await preflight("https://evil.example");
      assert.equal(other.status, 403);
      assert.equal(other.headers.get("access-control-allow-origin"), null);
      await other.body?.cancel();
      const post = await fetch(`${url}/tokenize`, {
        method: "POST",
        headers: { ...JSON_HEADERS, origin: "https://ok.example" },
        body: JSON.stringify({ prompt: "Once" }),
      });
      assert.equal(post.headers.get("access-control-allow-origin"), "https://ok.example");
      await post.body?.cancel();
    });

    await t.step("/tokenize has the completion routes' length limits", async () => {
      const started = performance.now();
      const huge = "Once upon a time there was a girl. ".repeat(30_000);
      for (const request of [{ prompt: huge }, { messages: [{ role: "user", content: huge }] }]) {
        const error = await errorOf(
          await fetch(`${url}/tokenize`, {
            method: "POST",
            headers: JSON_HEADERS,
            body: JSON.stringify(request),
          }),
          400,
        );
        assert.equal(error.code, "context_length_exceeded");
        assert.match(error.message, /1050000 characters/);
      }
      assert.ok(performance.now() - started < 3000);
    });

    await t.step(
      "a queued request times out with 503; queued prompt tokens count for 429",
      async () => {
        // --max-num-seqs 1: one 480-token request runs (about 0.3 s here), everything else
        // queues, and each that starts runs as long again: most of the eight wait past 0.2 s.
        const send = (prompt: string, stream: boolean) =>
          fetch(`${url}/v1/completions`, {
            method: "POST",
            headers: JSON_HEADERS,
            body: JSON.stringify({ prompt, max_tokens: 480, ignore_eos: true, stream }),
          });
        const running = await send("Once", true);
        const reader = running.body!.pipeThrough(new TextDecoderStream()).getReader();
        await reader.read();
        // "Once" is 2 tokens with BOS: these eight queue 16 tokens, under --max-queued-tokens 18.
        const queued = Array.from({ length: 8 }, (_, i) => send("Once", i % 2 === 1));
        await new Promise((r) => setTimeout(r, 50));
        // 6 more tokens would pass 18 (at most one of the eight can have started by now).
        const busy = await errorOf(await send("Once upon a time there", false), 429);
        assert.equal(busy.code, "queue_full");
        assert.match(busy.message, /prompt tokens waiting/);
        const codes = { stream: [] as string[], plain: [] as string[] };
        for (const [i, pending] of queued.entries()) {
          const response = await pending;
          const kind = i % 2 === 1 ? "stream" : "plain";
          if (response.status === 200) {
            await response.body?.cancel();
            codes[kind].push("ok");
            continue;
          }
          // A stream has sent nothing yet while it waits, so it gets the same JSON error.
          const error = await errorOf(response, 503);
          codes[kind].push(error.code!);
        }
        // The first queued may start once the running one ends; the ones behind it cannot.
        assert.ok(codes.plain.includes("queue_timeout"), JSON.stringify(codes));
        assert.ok(codes.stream.includes("queue_timeout"), JSON.stringify(codes));
        await reader.cancel();
      },
    );
  } finally {
    await server.close();
  }
});

/** A raw loopback socket whose reads stop at `guardMs` (a guard against a hang, not a timing). */
async function rawSocket(port: number, guardMs = 15_000) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const decoder = new TextDecoder();
  let text = "";
  let isEnded = false;
  let isGuardHit = false;
  const guard = setTimeout(() => {
    isGuardHit = true;
    conn.close();
  }, guardMs);
  return {
    get text() {
      return text;
    },
    /** The server closed the connection (not the guard). */
    get isEnded() {
      return isEnded && !isGuardHit;
    },
    send: (part: string) =>
      conn.write(new TextEncoder().encode(part)).then(() => true, () => false),
    /** Reads until `until(text)` or the end of the stream. */
    async read(until: (text: string) => boolean = () => false): Promise<string> {
      const buffer = new Uint8Array(16 << 10);
      while (!isEnded && !until(text)) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) isEnded = true;
        else text += decoder.decode(buffer.subarray(0, n), { stream: true });
      }
      return text;
    },
    close() {
      clearTimeout(guard);
      try {
        conn.close();
      } catch {
        // Closed by the guard or already.
      }
    },
  };
}

/** One whole Content-Length response is in `text`. */
function hasWholeResponse(text: string): boolean {
  const end = text.indexOf("\r\n\r\n");
  const length = /\r\ncontent-length: *(\d+)/i.exec(text);
  return end >= 0 && length !== null && text.length >= end + 4 + Number(length[1]);
}

Deno.test("denollm serve: header timeout, keep-alive timeout and connection cap", async (t) => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--header-timeout",
    "1",
    "--keep-alive-timeout",
    "1",
    "--max-connections",
    "2",
  ]);
  const health = head("GET", "/health", {});
  try {
    const port = await server.port;
    await waitHealthy(`http://127.0.0.1:${port}`);

    await t.step(
      "a head trickled a byte at a time (slowloris) gets 408 and is closed",
      async () => {
        const socket = await rawSocket(port);
        try {
          await socket.send("GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ");
          let isReading = true;
          const trickle = (async () => {
            while (isReading && await socket.send("x")) {
              await new Promise((r) => setTimeout(r, 200));
            }
          })();
          const text = await socket.read();
          isReading = false;
          await trickle;
          assert.ok(socket.isEnded);
          assert.match(text, /^HTTP\/1\.1 408 /);
          assert.match(text, /\r\nconnection: close\r\n/);
        } finally {
          socket.close();
        }
      },
    );

    await t.step("an idle keep-alive connection is closed", async () => {
      const socket = await rawSocket(port);
      try {
        await socket.send(health);
        await socket.read(hasWholeResponse);
        assert.match(socket.text, /^HTTP\/1\.1 200 /);
        assert.doesNotMatch(socket.text, /connection: close/);
        await socket.read();
        assert.ok(socket.isEnded, "the idle connection stayed open");
      } finally {
        socket.close();
      }
    });

    await t.step(
      "connections past --max-connections get 503; the server serves again after",
      async () => {
        // A pooled fetch() connection may still count, so the 503 comes by the third at the latest.
        const held = [];
        const statuses: number[] = [];
        try {
          for (let i = 0; i < 3 && !statuses.includes(503); i++) {
            const socket = await rawSocket(port);
            held.push(socket);
            await socket.send(health);
            await socket.read(hasWholeResponse);
            statuses.push(Number(socket.text.split(" ")[1]));
          }
          assert.equal(statuses.at(-1), 503, JSON.stringify(statuses));
          assert.ok(statuses.slice(0, -1).every((s) => s === 200), JSON.stringify(statuses));
          const refused = held.at(-1)!;
          assert.match(refused.text, /\r\nconnection: close\r\n/);
          await refused.read();
          assert.ok(refused.isEnded);
        } finally {
          for (const socket of held) socket.close();
        }
        // The closed sockets are noticed at once, but not within any promised time: retry a while.
        let status = 0;
        for (let i = 0; i < 100 && status !== 200; i++) {
          const response = await rawRequest(port, [
            head("GET", "/health", { connection: "close" }),
          ]);
          status = response?.status ?? 0;
          if (status !== 200) await new Promise((r) => setTimeout(r, 50));
        }
        assert.equal(status, 200);
      },
    );
  } finally {
    await server.close();
  }
});

Deno.test("denollm serve: the engine worker dies mid-stream", async () => {
  const server = new ServerProcess(["--model", MODEL_DIR, "--port", "0"], {
    // Through the real worker: it throws an uncaught error after this many steps.
    DENOLLM_TEST_CRASH_ENGINE_AFTER_STEPS: "40",
  });
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await waitHealthy(url);
    const streams = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const response = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({
          prompt: `Story ${i}`,
          max_tokens: 480,
          ignore_eos: true,
          stream: true,
        }),
      });
      assert.equal(response.status, 200);
      return await response.text();
    }));
    for (const text of streams) {
      const events = sseEvents(text);
      assert.equal(events.at(-1), "[DONE]", text.slice(-300));
      const error = JSON.parse(events.at(-2)!).error;
      assert.equal(error.type, "server_error");
      assert.doesNotMatch(error.message, /fault injection|Crashed/);
    }
    const status = await server.exited;
    assert.equal(status.code, 1);
    const errors = server.logs.filter((l) => l.level === "error");
    // One line for the failure, one for the first request it ended: not one per stream.
    assert.ok(errors.length <= 2, JSON.stringify(errors));
    assert.ok(errors.some((l) => /a worker failed: .*fault injection/.test(l.msg)));
    assert.ok(errors.filter((l) => "stack" in l).length <= 1);
  } finally {
    await server.close();
  }
});

Deno.test({
  name: "denollm serve: SIGTERM with a response still being delivered names it",
  ignore: !(await hasPython()),
  fn: async () => {
    // The drain waits for server.shutdown(), which waits for every response to reach its client,
    // while a generation that has finished no longer counts as in flight. A client that stops
    // reading a large response is such a case: the log used to say "aborting requests still in
    // flight inflight=0".
    const server = new ServerProcess([
      "--model",
      MODEL_DIR,
      "--port",
      "0",
      "--shutdown-timeout",
      "0.5",
    ]);
    const body = JSON.stringify({
      prompt: "Once",
      max_tokens: 480,
      ignore_eos: true,
      n: 16,
      logprobs: 20,
      stream: true,
    });
    let reader: Deno.ChildProcess | undefined;
    try {
      const port = await server.port;
      const url = `http://127.0.0.1:${port}`;
      await waitHealthy(url);
      // Megabytes of logprobs to a client that never reads them, through a receive buffer small
      // enough (SO_RCVBUF, which Deno.connect cannot set) that they stay on the server's side.
      const request = head("POST", "/v1/completions", {
        ...JSON_HEADERS,
        "content-length": String(body.length),
      }) +
        body;
      reader = new Deno.Command("python3", {
        args: [
          "-c",
          "import socket, sys, time\n" +
          "s = socket.socket()\n" +
          "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)\n" +
          `s.connect(("127.0.0.1", ${port}))\n` +
          "s.sendall(sys.stdin.buffer.read())\n" +
          "time.sleep(60)\n",
        ],
        stdin: "piped",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const writer = reader.stdin.getWriter();
      await writer.write(new TextEncoder().encode(request));
      await writer.close();
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        const text = await (await fetch(`${url}/metrics`)).text();
        if (
          /^denollm_requests_total\{model_name="[^"]*",finish_reason="length"\} 16$/m.test(text)
        ) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      server.child.kill("SIGTERM");
      const status = await server.exited;
      assert.equal(status.code, 0, server.rawStderr.join("\n"));
      const draining = server.logs.find((l) => l.msg.includes("draining"));
      assert.equal(draining?.inflight, 0);
      assert.equal(draining?.open_requests, 1);
      assert.ok(!server.logs.some((l) => l.msg === "aborting requests still in flight"));
      const closing = server.logs.find((l) => l.msg === "closing connections still open");
      assert.equal(closing?.open_requests, 1, server.rawStderr.join("\n"));
    } finally {
      try {
        reader?.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await reader?.status;
      await server.close();
    }
  },
});

/** python3 sets SO_RCVBUF, which the slow-reader test needs. */
async function hasPython(): Promise<boolean> {
  try {
    const { code } = await new Deno.Command("python3", { args: ["--version"], stdout: "null" })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

Deno.test("denollm serve start-up messages name the flag or field", async (t) => {
  const run = async (args: string[]) => {
    const server = new ServerProcess(args);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const exited = await Promise.race([
      server.exited,
      new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), 30_000))),
    ]);
    clearTimeout(timer);
    await server.close();
    assert.ok(exited, "the server did not exit");
    const lines = server.rawStderr.filter((l) => l.trim() !== "");
    const errors = lines.filter((l) => !l.startsWith("{") || JSON.parse(l).level === "error");
    return { code: exited.code, errors, lines };
  };

  await t.step("--host 'not a host!' exits 2 naming --host", async () => {
    const { code, lines } = await run(["--model", MODEL_DIR, "--host", "not a host!"]);
    assert.equal(code, 2);
    assert.equal(
      lines[0],
      'error: --host "not a host!": expected a host name or an IP address, such as 127.0.0.1, ' +
        "0.0.0.0 or ::1",
    );
  });

  await t.step("--threads above 4x the CPUs exits 2 naming --threads", async () => {
    const { code, lines } = await run(["--model", MODEL_DIR, "--threads", "4096"]);
    assert.equal(code, 2);
    assert.match(lines[0], /^error: --threads "4096": expected at most \d+ threads/);
  });

  await t.step("--kv-cache-memory 2T exits 1 naming --kv-cache-memory", async () => {
    const { code, errors } = await run([
      "--model",
      MODEL_DIR,
      "--port",
      "0",
      "--kv-cache-memory",
      "2T",
    ]);
    assert.equal(code, 1);
    assert.equal(errors.length, 1, errors.join("\n"));
    const msg = JSON.parse(errors[0]).msg;
    assert.match(msg, /^--kv-cache-memory 2199023255552 bytes \(2048\.0 GiB\) cannot be allocated/);
    assert.match(msg, /lower --kv-cache-memory$/);
  });

  await t.step("max_position_embeddings 1e15 exits 1 naming the field", async () => {
    const dir = await Deno.makeTempDir({ prefix: "denollm-e2e-1e15-" });
    try {
      for await (const entry of Deno.readDir(MODEL_DIR)) {
        await Deno.copyFile(`${MODEL_DIR}/${entry.name}`, `${dir}/${entry.name}`);
      }
      const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
      config.max_position_embeddings = 1e15;
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
      const { code, errors } = await run(["--model", dir, "--port", "0"]);
      assert.equal(code, 1);
      assert.equal(errors.length, 1, errors.join("\n"));
      assert.match(
        JSON.parse(errors[0]).msg,
        /max_position_embeddings in config\.json is 1000000000000000, more than 16777216 tokens/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
