// `denollm batch`: line parsing and resume bookkeeping, then 1,000 lines on stories260K (1%
// malformed) killed half-way with SIGKILL and resumed, against one uninterrupted run.
import assert from "node:assert/strict";
import {
  parseBatchInput,
  parseBatchLine,
  pendingLines,
  readDoneResults,
} from "../src/batch/batch_runner.ts";
import { UsageError } from "../src/errors.ts";
import { modelDirWithTemplate } from "./api_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

Deno.test("a batch line is a request or the error that answers it", () => {
  const ok = parseBatchLine(
    JSON.stringify({
      custom_id: "a",
      method: "POST",
      url: "/v1/completions",
      body: { prompt: "x" },
    }),
    1,
  );
  assert.equal(ok.customId, "a");
  assert.deepEqual(ok.request, { url: "/v1/completions", body: { prompt: "x" } });
  const broken = parseBatchLine('{"custom_id": "b", "method"', 2);
  assert.equal(broken.customId, null);
  assert.equal(broken.error?.status, 400);
  const url = parseBatchLine(
    JSON.stringify({ custom_id: "c", method: "POST", url: "/v1/embeddings", body: {} }),
    3,
  );
  assert.equal(url.customId, "c");
  assert.equal(url.error?.status, 404);
  assert.equal(url.error?.code, "unknown_url");
  const stream = parseBatchLine(
    JSON.stringify({
      custom_id: "d",
      method: "POST",
      url: "/v1/completions",
      body: { stream: true },
    }),
    4,
  );
  assert.equal(stream.error?.param, "stream");
  assert.equal(parseBatchLine('{"method": "POST"}', 5).error?.param, "custom_id");
  assert.equal(parseBatchLine("[1]", 6).customId, null);
});

Deno.test("a batch file with a custom_id twice is refused before anything runs", () => {
  const line = JSON.stringify({ custom_id: "a", method: "POST", url: "/v1/completions", body: {} });
  assert.throws(() => parseBatchInput(`${line}\n\n${line}\n`), UsageError);
  assert.equal(parseBatchInput(`${line}\n\n`).length, 1);
});

Deno.test("resume cuts a half-written last line and skips what is done", async () => {
  const path = await Deno.makeTempFile();
  try {
    const done = [{ custom_id: "a" }, { custom_id: null }, { custom_id: "c" }];
    await Deno.writeTextFile(
      path,
      done.map((d) => JSON.stringify(d) + "\n").join("") + '{"custom_id": "d", "resp',
    );
    const counts = await readDoneResults(path);
    assert.deepEqual([...counts], [["a", 1], [null, 1], ["c", 1]]);
    assert.ok((await Deno.readTextFile(path)).endsWith('"c"}\n'), "the partial line is cut");
    const lines = parseBatchInput(
      ["a", null, "b", null, "c", "d"].map((id) =>
        id === null ? "{broken" : JSON.stringify({ custom_id: id, method: "POST" })
      ).join("\n"),
    );
    // The first line without a custom_id is done, the second is not.
    assert.deepEqual(pendingLines(lines, counts).map((l) => l.lineNo), [3, 4, 6]);
  } finally {
    await Deno.remove(path);
  }
});

/** 1,000 lines: completions and chat, greedy; 10 malformed in four ways. */
function batchInput(): string {
  const prompts = ["Once upon a time", "The little dog", "Lily wanted to", "One day, a cat"];
  const lines: string[] = [];
  for (let i = 0; i < 1000; i++) {
    const line = { custom_id: `req-${i}`, method: "POST", url: "/v1/completions" };
    if (i % 100 === 37) {
      const bad = [
        `{"custom_id": "req-${i}", "method": "POST", "url": "/v1/comp`,
        JSON.stringify({ ...line, url: "/v1/embeddings", body: {} }),
        JSON.stringify({ ...line, body: { prompt: "x", temperature: -1 } }),
        JSON.stringify({ method: "POST", url: "/v1/completions", body: { prompt: "x" } }),
      ];
      lines.push(bad[Math.floor(i / 100) % bad.length]);
    } else if (i % 10 === 3) {
      lines.push(JSON.stringify({
        ...line,
        url: "/v1/chat/completions",
        body: {
          messages: [{ role: "user", content: `${prompts[i % 4]} ${i}` }],
          max_tokens: 16,
          temperature: 0,
        },
      }));
    } else {
      lines.push(JSON.stringify({
        ...line,
        body: {
          model: "anything",
          prompt: `${prompts[i % 4]} ${i}`,
          max_tokens: 16 + (i % 17),
          temperature: 0,
        },
      }));
    }
  }
  return lines.join("\n") + "\n";
}

function batchCommand(model: string, input: string, output: string): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-ffi",
      MAIN,
      "batch",
      "--model",
      model,
      "--input",
      input,
      "--output",
      output,
      "--threads",
      "1",
      "--max-num-seqs",
      "16",
      "--kv-cache-memory",
      "16M",
      "--max-model-len",
      "256",
    ],
    stdout: "null",
    stderr: "piped",
  });
}

async function countLines(path: string): Promise<number> {
  try {
    const text = await Deno.readTextFile(path);
    return text.split("\n").length - 1;
  } catch {
    return 0;
  }
}

/** Results by custom_id without what differs from run to run (ids, timestamps). */
function normalized(text: string): Map<string, string[]> {
  const byId = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const result = JSON.parse(line);
    delete result.id;
    delete result.response.request_id;
    delete result.response.body.id;
    delete result.response.body.created;
    const key = String(result.custom_id);
    byId.set(key, [...(byId.get(key) ?? []), JSON.stringify(result)].sort());
  }
  return byId;
}

Deno.test("batch: killed half-way and resumed, it writes what one uninterrupted run writes", async () => {
  const model = await modelDirWithTemplate();
  const dir = await Deno.makeTempDir({ prefix: "denollm_batch_" });
  try {
    const input = `${dir}/requests.jsonl`;
    await Deno.writeTextFile(input, batchInput());

    const whole = await batchCommand(model, input, `${dir}/whole.jsonl`).output();
    assert.equal(whole.code, 0, new TextDecoder().decode(whole.stderr));
    const expected = normalized(await Deno.readTextFile(`${dir}/whole.jsonl`));
    assert.equal([...expected.values()].flat().length, 1000);
    // Five malformed lines without a readable custom_id (broken JSON, no custom_id), five with one.
    assert.equal(expected.get("null")?.length, 5);
    const errors = [...expected.values()].flat().filter((r) => JSON.parse(r).error !== null);
    assert.equal(errors.length, 10);
    assert.ok(expected.get("req-3")![0].includes('"object":"chat.completion"'));

    const resumed = `${dir}/resumed.jsonl`;
    const child = batchCommand(model, input, resumed).spawn();
    while ((await countLines(resumed)) < 300) await new Promise((r) => setTimeout(r, 2));
    child.kill("SIGKILL");
    await child.output();
    const numWritten = await countLines(resumed);
    assert.ok(numWritten < 1000, `killed half-way, after ${numWritten} lines`);
    // As a kill mid-write leaves it.
    await Deno.writeTextFile(resumed, '{"id": "batch_req_1", "custom_id": "req-99', {
      append: true,
    });

    const again = await batchCommand(model, input, resumed).output();
    const log = new TextDecoder().decode(again.stderr);
    assert.equal(again.code, 0, log);
    assert.match(log, /already in .*: resuming/);
    assert.deepEqual(normalized(await Deno.readTextFile(resumed)), expected);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(model, { recursive: true });
  }
});
