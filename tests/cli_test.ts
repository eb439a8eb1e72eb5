// The generate CLI as a user runs it: completion on stdout and nothing else, logs on stderr, and
// a clear one-line error with a non-zero exit (never a stack trace) for bad input.
import assert from "node:assert/strict";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const MODEL_DIR = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const fixture = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/llamacpp/stories260K.json", import.meta.url)),
);

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-env", "--allow-ffi", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("generate streams exactly the greedy completion to stdout", async () => {
  const r = await cli(
    "generate",
    "--model",
    `${MODEL_DIR}/stories260K-f32.gguf`,
    "--prompt",
    fixture.generate.prompt,
    "--max-tokens",
    "64",
    "--ignore-eos",
    "--threads",
    "1",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, fixture.generate.text + "\n");
  assert.match(r.stderr, /tok\/s/);
});

Deno.test("a stop string ends the output just before it", async () => {
  const r = await cli(
    "generate",
    "--model",
    `${MODEL_DIR}/hf`,
    "--prompt",
    fixture.generate.prompt,
    "--max-tokens",
    "64",
    "--stop",
    "Lily",
  );
  assert.equal(r.code, 0, r.stderr);
  const expected = fixture.generate.text.slice(0, fixture.generate.text.indexOf("Lily"));
  assert.equal(r.stdout, expected + "\n");
  assert.match(r.stderr, /finish reason stop/);
});

Deno.test("sampling with a seed is reproducible", async () => {
  const args = [
    "generate",
    "--model",
    `${MODEL_DIR}/hf`,
    "--prompt",
    "Once upon a time",
    "--max-tokens",
    "30",
    "--temperature",
    "1",
    "--top-p",
    "0.9",
    "--seed",
    "11",
  ];
  const [a, b] = [await cli(...args), await cli(...args)];
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdout, b.stdout);
});

Deno.test("bad input exits non-zero with a clear message and no stack trace", async (t) => {
  const cases: [string, string[], RegExp, number][] = [
    ["missing model", ["--model", "/nonexistent", "--prompt", "x"], /no such file/, 1],
    [
      "bad number",
      ["--model", `${MODEL_DIR}/hf`, "--prompt", "x", "--max-tokens", "ten"],
      /--max-tokens expects an integer/,
      2,
    ],
    ["no prompt", ["--model", `${MODEL_DIR}/hf`], /--prompt is required/, 2],
    ["unknown flag", ["--model", `${MODEL_DIR}/hf`, "--prompt", "x", "--bogus"], /bogus/, 2],
    [
      "bad temperature",
      ["--model", `${MODEL_DIR}/hf`, "--prompt", "x", "--temperature=-1"],
      /temperature must be/,
      2,
    ],
    [
      "too long",
      ["--model", `${MODEL_DIR}/hf`, "--prompt", "x", "--max-tokens", "9999"],
      /context length of 512/,
      1,
    ],
    [
      "no chat template",
      ["--model", `${MODEL_DIR}/hf`, "--prompt", "x", "--chat"],
      /no chat template/,
      2,
    ],
  ];
  for (const [name, args, pattern, code] of cases) {
    await t.step(name, async () => {
      const r = await cli("generate", ...args);
      assert.equal(r.code, code, r.stderr);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, pattern);
      assert.doesNotMatch(r.stderr, /^\s+at /m);
    });
  }
});
