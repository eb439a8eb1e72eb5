// The built-in demo model: `denollm serve` with no model serves random weights of a real shape,
// made deterministically, cached, and announced as noise in the log and in /v1/models.
import assert from "node:assert/strict";
import { demoCacheRoot, ensureDemoModel } from "../src/server/demo_model.ts";
import { ServerProcess } from "./server_process.ts";

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("demo model: deterministic, cached, under XDG_CACHE_HOME", async () => {
  assert.equal(demoCacheRoot({ XDG_CACHE_HOME: "/x/", HOME: "/h" }), "/x/denollm/demo");
  assert.equal(demoCacheRoot({ HOME: "/h" }), "/h/.cache/denollm/demo");
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  try {
    const first = await ensureDemoModel(a);
    assert.equal(first.isCached, false);
    const again = await ensureDemoModel(a);
    assert.deepEqual(again, { path: first.path, isCached: true });
    const other = await ensureDemoModel(b);
    for (const file of ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
      assert.equal(await sha256(`${first.path}/${file}`), await sha256(`${other.path}/${file}`));
    }
    const tokenizerConfig = JSON.parse(
      await Deno.readTextFile(`${first.path}/tokenizer_config.json`),
    );
    assert.equal(typeof tokenizerConfig.chat_template, "string");
    // Nothing half-written is left beside it.
    const names = [...Deno.readDirSync(a)].map((e) => e.name);
    assert.deepEqual(names, [first.path.split("/").pop()]);
  } finally {
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});

Deno.test("denollm serve with no model serves the demo and says its output is noise", async () => {
  const cache = await Deno.makeTempDir();
  const server = new ServerProcess(["--port", "0"], { XDG_CACHE_HOME: cache });
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await server.waitForLog((l) => l.msg.startsWith("serving "), 60_000);
    assert.ok(
      server.logs.some((l) => l.level === "warn" && /output is noise/.test(l.msg)),
      server.rawStderr.join("\n"),
    );
    const models = await (await fetch(`${url}/v1/models`)).json();
    assert.equal(models.data[0].id, "demo");
    assert.match(models.data[0].notice, /random weights: its output is noise/);
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "demo",
        messages: [{ role: "user", content: "Hello" }],
        max_tokens: 8,
        temperature: 0,
      }),
    });
    const body = await response.json();
    assert.equal(response.status, 200, JSON.stringify(body));
    assert.equal(typeof body.choices[0].message.content, "string");
  } finally {
    await server.close();
  }
  // A second start uses the cached copy.
  const again = new ServerProcess(["demo", "--port", "0"], { XDG_CACHE_HOME: cache });
  try {
    await again.waitForLog((l) => l.msg.startsWith("serving "), 60_000);
    assert.ok(again.logs.some((l) => l.cached === true), again.rawStderr.join("\n"));
    assert.ok(!again.logs.some((l) => /generating/.test(l.msg)));
  } finally {
    await again.close();
    await Deno.remove(cache, { recursive: true });
  }
});
