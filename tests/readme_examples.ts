// README's curl examples, found in its "Serving" section and run with sh against a server on a
// local port: shared by the end-to-end test (a stories260K server) and the README test (the
// server README's first command starts).
import assert from "node:assert/strict";

const README = new URL("../README.md", import.meta.url);

/** The ```sh blocks of README's "Serving" section that run curl. */
export async function readmeCurlExamples(): Promise<string[]> {
  const readme = await Deno.readTextFile(README);
  const section = readme.split(/^## /m).find((s) => s.startsWith("Serving\n"));
  assert.ok(section, "README.md has no Serving section");
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)]
    .map((m) => m[1].trim())
    .filter((block) => block.startsWith("curl "));
}

/** Runs one example against 127.0.0.1:port; it must exit 0 with a non-error JSON or SSE body. */
export async function runCurlExample(example: string, port: number): Promise<void> {
  const command = example.replaceAll("localhost:8000", `127.0.0.1:${port}`);
  const output = await new Deno.Command("sh", { args: ["-c", command], stderr: "piped" }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, `${command}\n${stdout}${new TextDecoder().decode(output.stderr)}`);
  if (stdout.startsWith("data: ")) {
    const events = stdout.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
    assert.equal(events.at(-1), "[DONE]");
    for (const event of events.slice(0, -1)) JSON.parse(event);
  } else {
    const body = JSON.parse(stdout);
    assert.ok(!("error" in body), stdout);
  }
}
