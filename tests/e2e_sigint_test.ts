// Ctrl+C in a terminal: SIGINT reaches the whole process group of `deno task serve` (deno task and
// the server both), so the server sees it twice. One interrupt must still drain the stream in
// flight; a second one typed later skips the wait.
import assert from "node:assert/strict";
import { cleanEnv, MODEL_DIR, ServerProcess } from "./server_process.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function hasSetsid(): Promise<boolean> {
  try {
    const { code } = await new Deno.Command("setsid", { args: ["--version"], stdout: "null" })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

type LogLine = { msg: string; [key: string]: unknown };

/** `deno task serve` as the leader of a process group of its own, as a terminal's job would be. */
function spawnGroup(args: string[]) {
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "task", "serve", ...args],
    cwd: ROOT,
    env: { ...cleanEnv(), NO_COLOR: "1" },
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const logs: LogLine[] = [];
  const raw: string[] = [];
  const waiters: { test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  const reading = (async () => {
    let pending = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const text = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        raw.push(text);
        try {
          const line = JSON.parse(text) as LogLine;
          logs.push(line);
          for (const w of waiters.splice(0)) {
            if (w.test(line)) w.resolve(line);
            else waiters.push(w);
          }
        } catch {
          // deno task's own "Task serve ..." line.
        }
      }
    }
  })();
  const waitFor = (test: (l: LogLine) => boolean, timeoutMs = 30_000) => {
    const found = logs.find(test);
    if (found) return Promise.resolve(found);
    const { promise, resolve, reject } = Promise.withResolvers<LogLine>();
    waiters.push({ test, resolve });
    const timer = setTimeout(
      () => reject(new Error(`no such log line:\n${raw.join("\n")}`)),
      timeoutMs,
    );
    return promise.finally(() => clearTimeout(timer));
  };
  /** SIGINT to every process of the group, as a terminal sends it. */
  const interruptGroup = () => Deno.kill(-child.pid, "SIGINT");
  return { child, logs, raw, reading, waitFor, interruptGroup };
}

Deno.test({
  name: "deno task serve: SIGINT to the whole process group drains the stream in flight, exit 0",
  ignore: !(await hasSetsid()),
  async fn() {
    const server = spawnGroup([
      "--model",
      MODEL_DIR,
      "--port",
      "0",
      "--kv-cache-memory",
      "64M",
      "--threads",
      "1",
      "--log-format",
      "json",
    ]);
    try {
      const listening = await server.waitFor((l) => typeof l.port === "number");
      await server.waitFor((l) => l.msg.startsWith("serving "));
      const response = await fetch(`http://127.0.0.1:${listening.port}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: "Once upon a time",
          max_tokens: 480,
          ignore_eos: true,
          stream: true,
        }),
      });
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
      let body = (await reader.read()).value ?? "";
      server.interruptGroup();
      const draining = await server.waitFor((l) => l.msg.includes("draining"));
      assert.equal(draining.inflight, 1, "the request had finished before SIGINT");
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        body += value;
      }
      const events = body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
      assert.equal(events.at(-1), "[DONE]", server.raw.join("\n"));
      assert.equal(JSON.parse(events.at(-2)!).choices[0].finish_reason, "length");
      const status = await server.child.status;
      await server.reading;
      assert.equal(status.code, 0, server.raw.join("\n"));
      assert.ok(!server.logs.some((l) => l.msg.includes("aborting")), server.raw.join("\n"));
      assert.ok(server.logs.some((l) => l.msg === "stopped"));
    } finally {
      try {
        Deno.kill(-server.child.pid, "SIGKILL");
      } catch {
        // Already exited.
      }
      await server.reading;
      await server.child.status;
    }
  },
});

/** Starts a long stream on `server` and returns a reader of its SSE text. */
async function startStream(port: number) {
  const response = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: "Once upon a time",
      max_tokens: 480,
      ignore_eos: true,
      stream: true,
    }),
  });
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let body = (await reader.read()).value ?? "";
  return async () => {
    while (true) {
      const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
      if (done) break;
      body += value;
    }
    return body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
  };
}

Deno.test("denollm serve: two SIGINTs 100 ms apart (one Ctrl+C, forwarded) still drain", async () => {
  const server = new ServerProcess(["--model", MODEL_DIR, "--port", "0", "--max-num-seqs", "8"]);
  try {
    const port = await server.port;
    await server.waitForLog((l) => l.msg.startsWith("serving "));
    // Several streams at once so the drain outlasts the echo on a fast machine.
    const streams = await Promise.all([1, 2, 3, 4].map(() => startStream(port)));
    server.child.kill("SIGINT");
    await server.waitForLog((l) => l.msg.includes("draining"));
    await new Promise((r) => setTimeout(r, 100));
    server.child.kill("SIGINT");
    for (const rest of streams) {
      const events = await rest();
      assert.equal(events.at(-1), "[DONE]");
      assert.equal(JSON.parse(events.at(-2)!).choices[0].finish_reason, "length");
    }
    assert.equal((await server.exited).code, 0, server.rawStderr.join("\n"));
    assert.ok(!server.logs.some((l) => l.msg.includes("aborting")), server.rawStderr.join("\n"));
  } finally {
    await server.close();
  }
});

Deno.test("denollm serve: a second SIGINT typed later skips the drain, exit 0", async () => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--max-num-seqs",
    "16",
    "--shutdown-timeout",
    "60",
  ]);
  try {
    const port = await server.port;
    await server.waitForLog((l) => l.msg.startsWith("serving "));
    // More streams than can finish in the 1 s echo window on 1 thread.
    const streams = await Promise.all(Array.from({ length: 16 }, () => startStream(port)));
    server.child.kill("SIGINT");
    await server.waitForLog((l) => l.msg.includes("draining"));
    await new Promise((r) => setTimeout(r, 1200));
    server.child.kill("SIGINT");
    await Promise.all(streams.map((rest) => rest()));
    assert.equal((await server.exited).code, 0, server.rawStderr.join("\n"));
    assert.ok(server.logs.some((l) => l.msg.includes("aborting")), server.rawStderr.join("\n"));
    assert.ok(server.logs.some((l) => l.msg === "stopped"));
  } finally {
    await server.close();
  }
});
