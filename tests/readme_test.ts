// README's two commands and its examples: the first command (`./denollm serve`) starts the server
// every curl example in "Serving" then runs against; `.ci/run` runs exactly README's test command;
// and `./denollm` takes Deno from npm (npx) when no deno is on PATH.
import assert from "node:assert/strict";
import { readmeCurlExamples, runCurlExample } from "./readme_examples.ts";
import { ServerProcess } from "./server_process.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const README = await Deno.readTextFile(`${ROOT}README.md`);

function section(title: string): string {
  const found = README.split(/^## /m).find((s) => s.startsWith(`${title}\n`));
  assert.ok(found, `README.md has no ${title} section`);
  return found;
}

function shBlocks(text: string): string[] {
  return [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1].trim());
}

/** README's two commands: the one that runs the daemon, the one that passes the tests. */
function readmeCommands(): { serve: string; test: string } {
  const blocks = shBlocks(section("Set up and run"));
  return { serve: blocks[0], test: blocks.find((b) => b.includes(" test"))! };
}

Deno.test("README leads with ./denollm serve and ./denollm test; .ci/run runs the latter", async () => {
  const { serve, test } = readmeCommands();
  assert.equal(serve, "./denollm serve");
  assert.equal(test, "./denollm test");
  const ci = (await Deno.readTextFile(`${ROOT}.ci/run`)).split("\n")
    .map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
  assert.equal(ci.at(-1), test);
  // The tasks the two commands run build the native libraries first.
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  for (const name of ["serve", "test"]) assert.deepEqual(tasks[name].dependencies, ["build"], name);
});

Deno.test("README's curl examples pass against the server README's first command starts", async () => {
  const { serve } = readmeCommands();
  // `./denollm serve` is `main.ts serve` with no flags; the test adds a free port and its own
  // cache for the demo model.
  const extra = serve.split(/\s+/).slice(2);
  const cache = await Deno.makeTempDir({ prefix: "denollm-readme-" });
  const server = new ServerProcess([...extra, "--port", "0"], { XDG_CACHE_HOME: cache });
  try {
    const port = await server.port;
    await server.waitForLog((l) => l.msg.startsWith("serving "), 60_000);
    const examples = await readmeCurlExamples();
    assert.ok(examples.length >= 4, `only ${examples.length} curl examples`);
    for (const example of examples) await runCurlExample(example, port);
  } finally {
    await server.close();
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("./denollm runs deno task through npx -y deno@2.9.6 when no deno is on PATH", async () => {
  const bin = await Deno.makeTempDir({ prefix: "denollm-path-" });
  try {
    const tools = ["bash", "dirname", "sed", "grep"];
    for (const tool of tools) {
      const found = ["/usr/bin", "/bin"].map((d) => `${d}/${tool}`).find((p) => {
        try {
          return Deno.statSync(p).isFile;
        } catch {
          return false;
        }
      });
      assert.ok(found, tool);
      await Deno.symlink(found, `${bin}/${tool}`);
    }
    // A stand-in for npx that records its arguments and runs this Deno in place of the download.
    await Deno.writeTextFile(
      `${bin}/npx`,
      `#!${bin}/bash\necho "$@" > "${bin}/npx.args"\nshift 2\nexec "${Deno.execPath()}" "$@"\n`,
    );
    await Deno.chmod(`${bin}/npx`, 0o755);
    const output = await new Deno.Command(`${ROOT}denollm`, {
      args: ["serve", "--version"],
      env: { PATH: bin, HOME: Deno.env.get("HOME") ?? "/tmp", NO_COLOR: "1" },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, stderr);
    assert.match(new TextDecoder().decode(output.stdout), /^denollm \d+\.\d+\.\d+\n/);
    const args = await Deno.readTextFile(`${bin}/npx.args`);
    assert.match(args, /^-y deno@2\.9\.6 task --config \S+\/deno\.json serve --version\n$/);
    // The serve task built (or found up to date) the native libraries first.
    assert.match(stderr, /libdenollm_cpu\.so/);
  } finally {
    await Deno.remove(bin, { recursive: true });
  }
});
