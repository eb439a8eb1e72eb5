// The flags `vllm serve` users bring along: a positional model, --version, --seed, --log-level,
// --chat-template and --[no-]enable-prefix-caching, in the parser, --help, the log and a server.
import assert from "node:assert/strict";
import { UsageError } from "../src/errors.ts";
import {
  type OperatorSettings,
  parseServeConfig,
  type ServeConfig,
  servedModelAliases,
} from "../src/server/config.ts";
import { createLogger } from "../src/server/log.ts";
import { MODEL_DIR, ServerProcess } from "./server_process.ts";

const ENV = { HOME: "/home/u" };
const TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n" +
  "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

function parse(
  args: string[],
  env: Record<string, string> = {},
  readFile?: (path: string) => string,
): { config: ServeConfig; operator: OperatorSettings } {
  const parsed = parseServeConfig(args, { env: { ...ENV, ...env }, readFile });
  assert.ok(!parsed.help && parsed.version !== true);
  return parsed;
}

function usageError(args: string[], message: string | RegExp): void {
  assert.throws(() => parseServeConfig(args, { env: ENV }), (error: Error) => {
    assert.ok(error instanceof UsageError, `${error.name}: ${error.message}`);
    if (typeof message === "string") assert.equal(error.message, message);
    else assert.match(error.message, message);
    return true;
  });
}

Deno.test("operator flags", async (t) => {
  await t.step("a positional model, as `vllm serve MODEL`", () => {
    const { config } = parse(["org/name", "--port", "9000"]);
    assert.equal(config.model, "org/name");
    assert.equal(config.servedModelName, "org/name");
    assert.equal(config.port, 9000);
    assert.equal(
      parse(["/models/llama"], { DENOLLM_MODEL: "other" }).config.model,
      "/models/llama",
    );
    usageError(
      ["a", "b"],
      "Unexpected argument 'b'. This command does not take positional arguments",
    );
  });

  await t.step("no model: the default model when the caller gives one", () => {
    const parsed = parseServeConfig([], { env: ENV, defaultModel: "demo" });
    assert.ok(!parsed.help && parsed.version !== true);
    assert.equal(parsed.config.model, "demo");
  });

  await t.step("--version", () => {
    assert.deepEqual(parseServeConfig(["--version"], { env: {} }), { help: false, version: true });
  });

  await t.step("defaults: no seed, info, the model's template", () => {
    assert.deepEqual(parse(["--model", "m"]).operator, { logLevel: "info" });
  });

  await t.step("--seed and DENOLLM_SEED", () => {
    assert.equal(parse(["m", "--seed", "42"]).operator.seed, 42);
    assert.equal(parse(["m"], { DENOLLM_SEED: "7" }).operator.seed, 7);
    usageError(["m", "--seed=-1"], /^--seed "-1": expected an integer from 0 to 4294967295$/);
  });

  await t.step("--log-level", () => {
    for (const level of ["debug", "info", "warn", "error"] as const) {
      assert.equal(parse(["m", "--log-level", level]).operator.logLevel, level);
    }
    usageError(
      ["m", "--log-level", "loud"],
      '--log-level "loud": expected one of debug, info, warn, error',
    );
  });

  await t.step("--chat-template: a file, or the template itself", () => {
    const files: Record<string, string> = { "/t.jinja": TEMPLATE };
    const readFile = (path: string) => {
      if (path in files) return files[path];
      throw new Deno.errors.NotFound(`no such file: ${path}`);
    };
    assert.equal(
      parse(["m", "--chat-template", "/t.jinja"], {}, readFile).operator.chatTemplate,
      TEMPLATE,
    );
    assert.equal(
      parse(["m", "--chat-template", TEMPLATE], {}, readFile).operator.chatTemplate,
      TEMPLATE,
    );
    assert.throws(
      () => parseServeConfig(["m", "--chat-template", "/missing.jinja"], { env: ENV, readFile }),
      /^UsageError: --chat-template "\/missing.jinja": no such file, and no Jinja template either/,
    );
  });

  await t.step("--enable-prefix-caching / --no-enable-prefix-caching, the old flag kept", () => {
    assert.equal(parse(["m"]).config.enablePrefixCaching, true);
    assert.equal(parse(["m", "--enable-prefix-caching"]).config.enablePrefixCaching, true);
    assert.equal(parse(["m", "--no-enable-prefix-caching"]).config.enablePrefixCaching, false);
    assert.equal(parse(["m", "--no-prefix-caching"]).config.enablePrefixCaching, false);
    assert.equal(
      parse(["m"], { DENOLLM_NO_ENABLE_PREFIX_CACHING: "1" }).config.enablePrefixCaching,
      false,
    );
    assert.equal(
      parse(["m"], { DENOLLM_ENABLE_PREFIX_CACHING: "false" }).config.enablePrefixCaching,
      false,
    );
    usageError(
      ["m", "--enable-prefix-caching", "--no-prefix-caching"],
      '--enable-prefix-caching "true" contradicts --no-prefix-caching "true"',
    );
  });

  await t.step("--help and --version from the command line", async () => {
    const run = async (...args: string[]) => {
      const output = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-read", "--allow-env", "--allow-ffi", "main.ts", ...args],
        cwd: new URL("..", import.meta.url).pathname,
        stdout: "piped",
      }).output();
      assert.equal(output.code, 0);
      return new TextDecoder().decode(output.stdout);
    };
    const help = await run("serve", "--help");
    for (
      const flag of [
        "seed",
        "log-level",
        "chat-template",
        "enable-prefix-caching",
        "no-enable-prefix-caching",
      ]
    ) {
      assert.match(help, new RegExp(`^  --${flag}\\b`, "m"), flag);
    }
    assert.match(help, /^ {2}-V, --version\b/m);
    assert.match(help, /denollm serve \[MODEL\]/);
    assert.equal(await run("--version"), "denollm 0.1.0\n");
    assert.equal(await run("serve", "--version"), "denollm 0.1.0\n");
  });
});

Deno.test("--log-level drops less severe lines", () => {
  const lines: string[] = [];
  const log = createLogger("text", {
    write: (l) => lines.push(l),
    isJournal: false,
    level: "warn",
  });
  log("debug", "d");
  log("info", "i");
  log("warn", "w");
  log("error", "e");
  assert.deepEqual(lines, ["warn: w\n", "error: e\n"]);
  const debug = createLogger("json", { write: (l) => lines.push(l), level: "debug" });
  debug("debug", "d");
  assert.equal(JSON.parse(lines.at(-1)!).level, "debug");
  const quiet = createLogger("text", { write: (l) => lines.push(l), isJournal: false });
  quiet("debug", "hidden");
  assert.equal(lines.length, 3);
  const stamped = createLogger("text", {
    write: (l) => lines.push(l),
    isJournal: false,
    timestamps: true,
  });
  stamped("info", "hello", { n: 1 });
  assert.match(lines.at(-1)!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info: hello n=1\n$/);
  const journal = createLogger("text", {
    write: (l) => lines.push(l),
    isJournal: true,
    timestamps: true,
  });
  journal("warn", "careful");
  assert.equal(lines.at(-1), "<4>careful\n");
});

Deno.test("denollm serve MODEL --chat-template --seed: chat works, unseeded requests repeat", async () => {
  const server = new ServerProcess([
    MODEL_DIR,
    "--port",
    "0",
    "--chat-template",
    TEMPLATE,
    "--seed",
    "1234",
    "--log-level",
    "debug",
  ]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await server.waitForLog((l) => l.msg.startsWith("serving "));
    const chat = async (seed?: number) => {
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          messages: [{ role: "user", content: "Tell me a story" }],
          max_tokens: 24,
          temperature: 1,
          ...(seed === undefined ? {} : { seed }),
        }),
      });
      const body = await response.json();
      assert.equal(response.status, 200, JSON.stringify(body));
      return body.choices[0].message.content as string;
    };
    const first = await chat();
    assert.equal(await chat(), first, "two unseeded requests under --seed differ");
    assert.equal(await chat(1234), first, "--seed is not the request's seed");
    const others = await Promise.all([1, 2, 3].map((seed) => chat(seed)));
    assert.ok(others.some((text) => text !== first), "the request's own seed is ignored");
  } finally {
    await server.close();
  }
});

Deno.test("the default served name of …/NAME/hf is NAME, and hf is still accepted", async () => {
  const { config } = parse(["../shared/models/stories260K/hf/"]);
  assert.equal(config.servedModelName, "stories260K");
  assert.deepEqual(servedModelAliases(config), ["hf"]);
  assert.equal(parse(["./hf"]).config.servedModelName, "hf");
  assert.equal(parse(["/m/x.gguf"]).config.servedModelName, "x.gguf");
  const named = parse(["/m/stories/hf", "--served-model-name", "s"]).config;
  assert.deepEqual(servedModelAliases(named), []);

  const server = new ServerProcess([MODEL_DIR, "--port", "0"]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await server.waitForLog((l) => l.msg.startsWith("serving "));
    const models = await (await fetch(`${url}/v1/models`)).json();
    assert.deepEqual(models.data.map((m: { id: string }) => m.id), ["stories260K"]);
    for (const model of ["stories260K", "hf"]) {
      const response = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, prompt: "Hi", max_tokens: 2 }),
      });
      assert.equal(response.status, 200, model);
      await response.body?.cancel();
    }
  } finally {
    await server.close();
  }
});
