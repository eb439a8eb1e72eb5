// `denollm serve` configuration: flags, DENOLLM_* variables, precedence, defaults, every kind of bad
// value, and --help.
import assert from "node:assert/strict";
import { defaultNumThreads } from "../src/engine/threads.ts";
import { UsageError } from "../src/errors.ts";
import {
  type ClientLimits,
  defaultHfCache,
  envName,
  parseByteSize,
  parseServeConfig,
  SERVE_USAGE,
  type ServeConfig,
} from "../src/server/config.ts";
import { DeviceError, resolveDevice } from "../src/server/device.ts";
import { createLogger } from "../src/server/log.ts";

const ENV = { HOME: "/home/u" };

function parse(args: string[], env: Record<string, string> = {}): ServeConfig {
  const parsed = parseServeConfig(args, { env: { ...ENV, ...env } });
  assert.equal(parsed.help, false);
  return (parsed as { config: ServeConfig }).config;
}

function assertUsage(args: string[], env: Record<string, string>, message: string): void {
  assert.throws(
    () => parseServeConfig(args, { env: { ...ENV, ...env } }),
    (error: Error) => {
      assert.ok(error instanceof UsageError, `${error.name}: ${error.message}`);
      assert.equal(error.message, message);
      return true;
    },
  );
}

Deno.test("serve config", async (t) => {
  await t.step("defaults", () => {
    assert.deepEqual(parse(["--model", "/models/llama"]), {
      model: "/models/llama",
      revision: "main",
      host: "127.0.0.1",
      port: 8000,
      servedModelName: "llama",
      apiKey: undefined,
      maxModelLen: undefined,
      maxNumSeqs: 64,
      maxNumBatchedTokens: 2048,
      kvCacheMemoryBytes: 2 ** 30,
      blockSize: 16,
      kvCacheDtype: "f32",
      numThreads: defaultNumThreads(),
      device: { kind: "auto" },
      scheduler: "continuous",
      enablePrefixCaching: true,
      mmap: true,
      enforceEager: false,
      maxQueuedRequests: 256,
      shutdownTimeoutMs: 30_000,
      logFormat: "text",
      hfCacheDir: "/home/u/.cache/huggingface/hub",
    });
  });

  await t.step("every flag", () => {
    const config = parse([
      "--model=org/name",
      "--revision",
      "v1.0",
      "--host",
      "0.0.0.0",
      "--port",
      "9000",
      "--served-model-name",
      "chat",
      "--api-key",
      "sk-1",
      "--max-model-len",
      "4096",
      "--max-num-seqs",
      "8",
      "--max-num-batched-tokens",
      "512",
      "--kv-cache-memory",
      "512M",
      "--block-size",
      "32",
      "--kv-cache-dtype",
      "f16",
      "--threads",
      "4",
      "--device",
      "cuda:1",
      "--scheduler",
      "static",
      "--no-prefix-caching",
      "--no-mmap",
      "--enforce-eager",
      "--max-queued-requests",
      "0",
      "--shutdown-timeout",
      "2.5",
      "--log-format",
      "json",
      "--hf-cache",
      "/cache",
    ]);
    assert.deepEqual(config, {
      model: "org/name",
      revision: "v1.0",
      host: "0.0.0.0",
      port: 9000,
      servedModelName: "chat",
      apiKey: "sk-1",
      maxModelLen: 4096,
      maxNumSeqs: 8,
      maxNumBatchedTokens: 512,
      kvCacheMemoryBytes: 512 * 2 ** 20,
      blockSize: 32,
      kvCacheDtype: "f16",
      numThreads: 4,
      device: { kind: "cuda", ordinal: 1 },
      scheduler: "static",
      enablePrefixCaching: false,
      mmap: false,
      enforceEager: true,
      maxQueuedRequests: 0,
      shutdownTimeoutMs: 2500,
      logFormat: "json",
      hfCacheDir: "/cache",
    });
  });

  await t.step("every flag as DENOLLM_* and flags win", () => {
    const env = {
      DENOLLM_MODEL: "org/name:model-q8.gguf",
      DENOLLM_PORT: "9001",
      DENOLLM_API_KEY: "from-env",
      DENOLLM_KV_CACHE_MEMORY: "2G",
      DENOLLM_NO_PREFIX_CACHING: "true",
      DENOLLM_DEVICE: "CPU",
      DENOLLM_LOG_FORMAT: "json",
      DENOLLM_SCHEDULER: "static",
    };
    const fromEnv = parse([], env);
    assert.equal(fromEnv.model, "org/name:model-q8.gguf");
    assert.equal(fromEnv.servedModelName, "org/name");
    assert.equal(fromEnv.port, 9001);
    assert.equal(fromEnv.apiKey, "from-env");
    assert.equal(fromEnv.kvCacheMemoryBytes, 2 * 2 ** 30);
    assert.equal(fromEnv.enablePrefixCaching, false);
    assert.deepEqual(fromEnv.device, { kind: "cpu" });
    assert.equal(fromEnv.scheduler, "static");
    const flagsWin = parse(["--model", "./m", "--port", "9002", "--log-format", "text"], env);
    assert.equal(flagsWin.model, "./m");
    assert.equal(flagsWin.port, 9002);
    assert.equal(flagsWin.logFormat, "text");
    assert.equal(flagsWin.apiKey, "from-env");
    // A bad variable is still an error when a flag would not override it.
    assertUsage(
      ["--model", "m"],
      { DENOLLM_THREADS: "many" },
      'DENOLLM_THREADS="many": ' +
        "expected an integer from 0 to 4096",
    );
    // An empty variable counts as unset.
    assert.equal(parse(["--model", "m"], { DENOLLM_PORT: "" }).port, 8000);
    assert.equal(
      parse(["--model", "m"], { DENOLLM_NO_PREFIX_CACHING: "0" }).enablePrefixCaching,
      true,
    );
    // Every option has its variable.
    for (const line of SERVE_USAGE.split("\n").filter((l) => l.startsWith("  --"))) {
      const flag = line.trim().split(/\s+/)[0].slice(2);
      if (flag !== "help") assert.ok(SERVE_USAGE.includes(`env ${envName(flag)}`), flag);
    }
  });

  await t.step("connection limits: defaults, flags and DENOLLM_*", () => {
    const limits = (args: string[], env: Record<string, string> = {}) => {
      const parsed = parseServeConfig(["--model", "/m", ...args], { env: { ...ENV, ...env } });
      assert.equal(parsed.help, false);
      const { headerTimeoutMs, keepAliveTimeoutMs, maxConnections } =
        (parsed as { limits: ClientLimits }).limits;
      return { headerTimeoutMs, keepAliveTimeoutMs, maxConnections };
    };
    assert.deepEqual(limits([]), {
      headerTimeoutMs: 10_000,
      keepAliveTimeoutMs: 5_000,
      maxConnections: 1024,
    });
    assert.deepEqual(
      limits(["--header-timeout", "1.5", "--keep-alive-timeout", "2", "--max-connections", "3"]),
      { headerTimeoutMs: 1500, keepAliveTimeoutMs: 2000, maxConnections: 3 },
    );
    assert.deepEqual(
      limits(["--max-connections", "7"], {
        DENOLLM_HEADER_TIMEOUT: "4",
        DENOLLM_KEEP_ALIVE_TIMEOUT: "6",
        DENOLLM_MAX_CONNECTIONS: "9",
      }),
      { headerTimeoutMs: 4000, keepAliveTimeoutMs: 6000, maxConnections: 7 },
    );
    for (const flag of ["--header-timeout", "--keep-alive-timeout", "--max-connections"]) {
      assert.throws(() => limits([flag, "0"]), UsageError);
    }
  });

  await t.step("served model name and hub cache defaults", () => {
    assert.equal(parse(["--model", "../models/stories/"]).servedModelName, "stories");
    assert.equal(parse(["--model", "/m/x.gguf"]).servedModelName, "x.gguf");
    assert.equal(parse(["--model", "Qwen/Qwen2.5-0.5B"]).servedModelName, "Qwen/Qwen2.5-0.5B");
    assert.equal(defaultHfCache({ HF_HOME: "/hf/" }), "/hf/hub");
    assert.equal(defaultHfCache({ HF_HUB_CACHE: "/c", HF_HOME: "/hf" }), "/c");
    assert.equal(defaultHfCache({ XDG_CACHE_HOME: "/x", HOME: "/h" }), "/x/huggingface/hub");
    assert.equal(parse(["--model", "m"], { HF_HOME: "/hf" }).hfCacheDir, "/hf/hub");
    assert.equal(parse(["--model", "m", "--hf-cache", "/c"], { HF_HOME: "/hf" }).hfCacheDir, "/c");
  });

  await t.step("byte sizes", () => {
    assert.equal(parseByteSize("1073741824"), 2 ** 30);
    assert.equal(parseByteSize("512M"), 512 * 2 ** 20);
    assert.equal(parseByteSize("512MiB"), 512 * 2 ** 20);
    assert.equal(parseByteSize("2g"), 2 * 2 ** 30);
    assert.equal(parseByteSize("1.5G"), 1.5 * 2 ** 30);
    assert.equal(parseByteSize("64k"), 65536);
    assert.equal(parseByteSize("1T"), 2 ** 40);
    assert.equal(parseByteSize("100B"), 100);
    for (const bad of ["", "G", "-1G", "1X", "1 G G", "0x10"]) {
      assert.equal(parseByteSize(bad), undefined, bad);
    }
  });

  await t.step("--sampling-device and DENOLLM_SAMPLING_DEVICE", () => {
    assert.equal(parse(["--model", "m"]).samplingDevice, undefined, "unset: the engine's auto");
    assert.equal(parse(["--model", "m", "--sampling-device", "device"]).samplingDevice, "device");
    assert.equal(
      parse(["--model", "m"], { DENOLLM_SAMPLING_DEVICE: "host" }).samplingDevice,
      "host",
    );
    assert.match(SERVE_USAGE, /--sampling-device WHERE/);
  });

  await t.step("every bad value names the flag or variable and the value", () => {
    const cases: [string, string, string][] = [
      ["port", "70000", "expected an integer from 0 to 65535"],
      ["port", "80.5", "expected an integer from 0 to 65535"],
      ["port", "-1", "expected an integer from 0 to 65535"],
      ["max-model-len", "0", "expected an integer at least 1"],
      ["max-num-seqs", "x", "expected an integer at least 1"],
      ["max-num-batched-tokens", "0", "expected an integer at least 1"],
      ["block-size", "0", "expected an integer from 1 to 1024"],
      ["kv-cache-dtype", "fp8", "expected one of f32, f16, bf16"],
      ["threads", "-2", "expected an integer from 0 to 4096"],
      ["max-queued-requests", "-1", "expected an integer at least 0"],
      [
        "kv-cache-memory",
        "lots",
        "expected a positive size in bytes, optionally with a K, M, G or T suffix",
      ],
      [
        "kv-cache-memory",
        "0",
        "expected a positive size in bytes, optionally with a K, M, G or T suffix",
      ],
      ["device", "gpu", "expected auto, cpu, cuda or cuda:N"],
      ["device", "cuda:x", "expected auto, cpu, cuda or cuda:N"],
      ["scheduler", "fifo", "expected one of continuous, static"],
      ["sampling-device", "gpu", "expected one of auto, device, host"],
      ["log-format", "xml", "expected one of text, json"],
      ["shutdown-timeout", "-5", "expected a number of seconds, at least 0"],
      ["served-model-name", " ", "expected a non-empty value"],
      ["host", "", "expected a non-empty value"],
    ];
    for (const [flag, value, expected] of cases) {
      assertUsage(["--model", "m", `--${flag}=${value}`], {}, `--${flag} "${value}": ${expected}`);
      if (value !== "") {
        assertUsage(
          ["--model", "m"],
          { [envName(flag)]: value },
          `${envName(flag)}="${value}": ${expected}`,
        );
      }
    }
    assertUsage(
      ["--model", "m"],
      { DENOLLM_NO_PREFIX_CACHING: "maybe" },
      'DENOLLM_NO_PREFIX_CACHING="maybe": expected true or false (1/0, yes/no)',
    );
    assertUsage([], {}, "--model (or DENOLLM_MODEL) is required");
    assertUsage(["--model", "m", "--bogus"], {}, "Unknown option '--bogus'");
    assertUsage(
      ["--model", "m", "extra"],
      {},
      `Unexpected argument 'extra'. This command does not take positional arguments`,
    );
    assertUsage(["--model"], {}, "Option '--model <value>' argument missing");
  });

  await t.step("--help lists every flag with its default and variable", async () => {
    assert.deepEqual(parseServeConfig(["--help"], { env: {} }), { help: true });
    assert.deepEqual(parseServeConfig(["--model", "m", "-h"], { env: {} }), { help: true });
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-env", "--allow-ffi", "main.ts", "serve", "--help"],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    const help = new TextDecoder().decode(output.stdout);
    for (
      const flag of [
        "model",
        "revision",
        "host",
        "port",
        "served-model-name",
        "api-key",
        "max-model-len",
        "max-num-seqs",
        "max-num-batched-tokens",
        "kv-cache-memory",
        "block-size",
        "kv-cache-dtype",
        "threads",
        "device",
        "scheduler",
        "no-prefix-caching",
        "no-mmap",
        "enforce-eager",
        "max-queued-requests",
        "shutdown-timeout",
        "log-format",
        "hf-cache",
      ]
    ) {
      assert.match(help, new RegExp(`^  --${flag}\\b`, "m"), flag);
      assert.ok(help.includes(`env ${envName(flag)}`), flag);
    }
    for (
      const text of [
        "default 127.0.0.1",
        "default 8000",
        "default 64",
        "default 2048",
        "default 1G",
        "default 16",
        "default auto",
        "default continuous",
        "default 256",
        "default 30",
        "default text",
        "default main",
      ]
    ) {
      assert.ok(help.includes(text), text);
    }
  });
});

Deno.test("serve device resolution", async (t) => {
  const noGpu = () => ({ reason: "the CUDA driver (libcuda.so.1) is not installed" });
  const oneGpu = () => ({ names: ["Test GPU"] });
  const saved = Deno.env.get("CUDA_VISIBLE_DEVICES");
  const restore = () => {
    if (saved === undefined) Deno.env.delete("CUDA_VISIBLE_DEVICES");
    else Deno.env.set("CUDA_VISIBLE_DEVICES", saved);
  };
  const library = new URL("../deno.json", import.meta.url).pathname; // any existing file

  await t.step("auto falls back to the CPU, cuda without a GPU is an error", () => {
    assert.equal(resolveDevice({ kind: "auto" }, { probe: noGpu }).backend, "cpu");
    assert.equal(
      resolveDevice({ kind: "auto" }, { probe: oneGpu, cudaLibraryPath: "/nonexistent.so" })
        .backend,
      "cpu",
    );
    assert.throws(
      () => resolveDevice({ kind: "cuda" }, { probe: noGpu }),
      (e: Error) => e instanceof DeviceError && /--device cuda: no usable CUDA GPU/.test(e.message),
    );
    assert.deepEqual(resolveDevice({ kind: "cpu" }, { probe: oneGpu }), {
      backend: "cpu",
      description: "cpu",
    });
  });

  await t.step("auto and cuda:N with a GPU", () => {
    try {
      Deno.env.delete("CUDA_VISIBLE_DEVICES");
      assert.deepEqual(
        resolveDevice({ kind: "auto" }, { probe: oneGpu, cudaLibraryPath: library }),
        {
          backend: "cuda",
          description: "cuda (Test GPU)",
        },
      );
      resolveDevice({ kind: "cuda", ordinal: 1 }, { probe: oneGpu, cudaLibraryPath: library });
      assert.equal(Deno.env.get("CUDA_VISIBLE_DEVICES"), "1");
      Deno.env.set("CUDA_VISIBLE_DEVICES", "4,6");
      resolveDevice({ kind: "cuda", ordinal: 1 }, { probe: oneGpu, cudaLibraryPath: library });
      assert.equal(Deno.env.get("CUDA_VISIBLE_DEVICES"), "6");
      Deno.env.set("CUDA_VISIBLE_DEVICES", "4");
      assert.throws(
        () =>
          resolveDevice({ kind: "cuda", ordinal: 1 }, { probe: oneGpu, cudaLibraryPath: library }),
        /CUDA_VISIBLE_DEVICES=4 makes only 1 GPU\(s\) visible/,
      );
    } finally {
      restore();
    }
  });
});

Deno.test("serve log lines", () => {
  const lines: string[] = [];
  const text = createLogger("text", { write: (l) => lines.push(l), isJournal: false });
  text("info", "listening", { url: "http://x:1", note: "two words", n: 3 });
  const journal = createLogger("text", { write: (l) => lines.push(l), isJournal: true });
  journal("warn", "careful");
  const json = createLogger("json", { write: (l) => lines.push(l) });
  json("error", "bad", { port: 80 });
  assert.equal(lines[0], 'info: listening url=http://x:1 note="two words" n=3\n');
  assert.equal(lines[1], "<4>careful\n");
  const parsed = JSON.parse(lines[2]);
  assert.equal(parsed.level, "error");
  assert.equal(parsed.msg, "bad");
  assert.equal(parsed.port, 80);
  assert.ok(!Number.isNaN(Date.parse(parsed.time)));
});

Deno.test("serve --tool-call-parser takes vLLM's parser names", () => {
  assert.equal(parse(["--model", "m"]).toolCallParser, undefined);
  assert.equal(parse(["--model", "m", "--tool-call-parser", "mistral"]).toolCallParser, "mistral");
  assert.equal(
    parse(["--model", "m"], { DENOLLM_TOOL_CALL_PARSER: "llama3_json" }).toolCallParser,
    "llama3_json",
  );
  assert.equal(
    parse(["--model", "m", "--tool-call-parser", "hermes"], {
      DENOLLM_TOOL_CALL_PARSER: "mistral",
    }).toolCallParser,
    "hermes",
  );
  assertUsage(
    ["--model", "m", "--tool-call-parser", "qwen"],
    {},
    '--tool-call-parser "qwen": expected one of hermes, llama3_json, mistral',
  );
  assert.match(SERVE_USAGE, /--tool-call-parser NAME/);
});
