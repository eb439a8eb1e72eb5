// --load-format dummy: a model directory without its weights is served with random ones, and the
// load logs its start and end with the byte total.
import assert from "node:assert/strict";
import { loadProgressLog } from "../src/server/serve.ts";

const PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-ffi",
  "--allow-net",
  "--unstable-no-legacy-abort",
];
const ROOT = new URL("..", import.meta.url).pathname;

async function weightlessCopy(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "denollm-dummy-" });
  const src = `${ROOT}../shared/models/stories260K/hf`;
  for await (const entry of Deno.readDir(src)) {
    if (entry.isFile && entry.name !== "model.safetensors") {
      await Deno.copyFile(`${src}/${entry.name}`, `${dir}/${entry.name}`);
    }
  }
  return dir;
}

function serve(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...PERMISSIONS,
      "main.ts",
      "serve",
      "--device",
      "cpu",
      "--threads",
      "1",
      "--kv-cache-memory",
      "16M",
      "--log-format",
      "json",
      ...args,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test("--load-format dummy serves a directory without weights", async () => {
  const dir = await weightlessCopy();
  const child = serve([dir, "--load-format", "dummy", "--port", "0"]);
  const lines: Record<string, unknown>[] = [];
  const decoder = new TextDecoderStream();
  const reading = (async () => {
    let buffer = "";
    for await (const chunk of child.stderr.pipeThrough(decoder)) {
      buffer += chunk;
      let i;
      while ((i = buffer.indexOf("\n")) >= 0) {
        lines.push(JSON.parse(buffer.slice(0, i)));
        buffer = buffer.slice(i + 1);
      }
    }
  })();
  const stderr = child.stdout.pipeTo(new WritableStream());
  try {
    let port = 0;
    for (let i = 0; i < 600 && port === 0; i++) {
      const listening = lines.find((l) => String(l.msg).startsWith("listening on"));
      if (listening) port = listening.port as number;
      else await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(port > 0, "the server never listened");
    let health = 0;
    for (let i = 0; i < 600 && health !== 200; i++) {
      const response = await fetch(`http://127.0.0.1:${port}/health`);
      await response.body?.cancel();
      health = response.status;
      if (health !== 200) await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(health, 200);
    const response = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Once", max_tokens: 4 }),
    });
    assert.deepEqual(response.status, 200);
    const body = await response.json();
    assert.deepEqual(body.usage.completion_tokens, 4);
    assert.ok(lines.some((l) => l.level === "warn" && /RANDOM/.test(String(l.msg))));
    const start = lines.find((l) => String(l.msg).startsWith("loading weights"));
    const end = lines.find((l) => String(l.msg).startsWith("loaded weights"));
    assert.ok(start && end, "no load progress lines");
    assert.ok((end.total_bytes as number) > 0);
    assert.deepEqual(end.loaded_bytes, end.total_bytes);
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await reading.catch(() => {});
    await stderr.catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("without --load-format dummy a directory without weights fails in one line", async () => {
  const dir = await weightlessCopy();
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", ...PERMISSIONS, "main.ts", "serve", dir, "--device", "cpu", "--port", "0"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.deepEqual(output.code, 1);
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    const errors = text.split("\n").filter((l) => / error: /.test(l));
    assert.deepEqual(errors.length, 1, text);
    assert.match(errors[0], /model\.safetensors/);
    assert.match(errors[0], /--load-format dummy/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadProgressLog logs a start, periodic and one end line", () => {
  const logged: [string, Record<string, unknown> | undefined][] = [];
  const progress = loadProgressLog((_level, msg, fields) => logged.push([msg, fields]), 0);
  progress(0, 100);
  progress(50, 100);
  progress(100, 100);
  progress(100, 100);
  assert.deepEqual(logged.map(([m]) => m.split(":")[0]), [
    "loading weights",
    "loading weights",
    "loaded weights",
  ]);
  assert.deepEqual(logged[2][1]?.total_bytes, 100);
});
