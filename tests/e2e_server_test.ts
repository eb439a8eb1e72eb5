// The real `denollm serve` process on loopback, driven by the official openai client, the README's
// curl examples, dropped streams, SIGTERM, sd_notify and start-up failures.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { sockaddrUn } from "../src/server/sd_notify.ts";
import { readmeCurlExamples, runCurlExample } from "./readme_examples.ts";
import { ServerProcess, waitHealthy } from "./server_process.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const MODEL_NAME = "stories260K";
const CHAT_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n" +
  "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
/** A bound datagram socket read without blocking, standing in for systemd's notify socket. */
class NotifySocket {
  readonly address = `@denollm-e2e-${Deno.pid}-${crypto.randomUUID()}`;
  #lib = Deno.dlopen(
    "libc.so.6",
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
      close: { parameters: ["i32"], result: "i32" },
    } as const,
  );
  #fd: number;
  messages: string[] = [];

  constructor() {
    this.#fd = this.#lib.symbols.socket(1, /* AF_UNIX */ 2, /* SOCK_DGRAM */ 0);
    const { bytes, length } = sockaddrUn(this.address);
    assert.equal(this.#lib.symbols.bind(this.#fd, bytes, length), 0);
  }

  /** Waits until a received datagram contains `text`. */
  async waitFor(text: string, timeoutMs = 20_000): Promise<void> {
    const buffer = new Uint8Array(4096);
    const deadline = Date.now() + timeoutMs;
    while (!this.messages.some((m) => m.split("\n").includes(text))) {
      if (Date.now() > deadline) throw new Error(`No ${text} in ${JSON.stringify(this.messages)}`);
      const n = Number(this.#lib.symbols.recv(this.#fd, buffer, 4096n, 0x40 /* MSG_DONTWAIT */));
      if (n >= 0) this.messages.push(new TextDecoder().decode(buffer.subarray(0, n)));
      else await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    this.#lib.symbols.close(this.#fd);
    this.#lib.close();
  }
}

/**
 * An unlabelled metric's value in Prometheus text (its only label the served model's name), e.g.
 * metric(text, "denollm_num_requests_running").
 */
function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) =>
    new RegExp(`^${name}(\\{model_name="[^"]*"\\})? `).test(l)
  );
  assert.ok(line, `no ${name} in /metrics`);
  return Number(line.split(" ").at(-1));
}

async function copyModelWithChatTemplate(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "denollm-e2e-model-" });
  for await (const entry of Deno.readDir(MODEL_DIR)) {
    await Deno.copyFile(`${MODEL_DIR}/${entry.name}`, `${dir}/${entry.name}`);
    await Deno.chmod(`${dir}/${entry.name}`, 0o644);
  }
  const config = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
  config.chat_template = CHAT_TEMPLATE;
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(config));
  return dir;
}

Deno.test("denollm serve end to end", async (t) => {
  const modelDir = await copyModelWithChatTemplate();
  const notifySocket = new NotifySocket();
  const server = new ServerProcess(
    ["--model", modelDir, "--port", "0", "--served-model-name", MODEL_NAME],
    { NOTIFY_SOCKET: notifySocket.address },
  );
  try {
    const port = await server.port;
    const url = `http://127.0.0.1:${port}`;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });

    await t.step("/health is 503 while loading, then 200; READY=1 is sent", async () => {
      const statuses = await waitHealthy(url);
      const readyLog = server.logs.findIndex((l) => l.msg.startsWith("serving "));
      // Loading takes a while, so the first probe normally sees 503; never anything but 503/200.
      assert.ok(statuses.every((s) => s === 503 || s === 200), statuses.join());
      assert.ok(statuses.includes(503) || readyLog >= 0, statuses.join());
      await notifySocket.waitFor("READY=1");
      const ready = await server.waitForLog((l) => l.msg.startsWith("serving "));
      assert.equal(ready.model, MODEL_NAME);
      assert.ok((ready.kv_blocks as number) > 0 && (ready.weight_bytes as number) > 0);
      assert.equal(ready.kv_tokens, (ready.kv_blocks as number) * (ready.block_size as number));
      assert.equal(typeof ready.load_ms, "number");
      // --sampling-device auto: the host sampler on the CPU build.
      assert.equal(ready.sampling_device, "host");
    });

    let greedyText = "";
    await t.step("completions, streaming and not", async () => {
      const models = await client.models.list();
      assert.deepEqual(models.data.map((m) => m.id), [MODEL_NAME]);
      const completion = await client.completions.create({
        model: MODEL_NAME,
        prompt: "Once upon a time",
        max_tokens: 24,
        temperature: 0,
      });
      greedyText = completion.choices[0].text;
      assert.ok(greedyText.length > 0);
      assert.equal(completion.choices[0].finish_reason, "length");
      assert.equal(completion.usage?.completion_tokens, 24);
      const stream = await client.completions.create({
        model: MODEL_NAME,
        prompt: "Once upon a time",
        max_tokens: 24,
        temperature: 0,
        stream: true,
      });
      let streamed = "";
      let finish: string | null = null;
      for await (const chunk of stream) {
        streamed += chunk.choices[0]?.text ?? "";
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(streamed, greedyText);
      assert.equal(finish, "length");
    });

    await t.step("chat, streaming and not", async () => {
      const messages = [{ role: "user" as const, content: "Tell me a story" }];
      const chat = await client.chat.completions.create({
        model: MODEL_NAME,
        messages,
        max_tokens: 16,
        temperature: 0,
      });
      const reply = chat.choices[0].message;
      assert.equal(reply.role, "assistant");
      assert.ok((reply.content ?? "").length > 0);
      const stream = await client.chat.completions.create({
        model: MODEL_NAME,
        messages,
        max_tokens: 16,
        temperature: 0,
        stream: true,
      });
      let streamed = "";
      for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
      assert.equal(streamed, reply.content);
    });

    await t.step("n > 1, stop strings, logprobs", async () => {
      const several = await client.completions.create({
        model: MODEL_NAME,
        prompt: "Once upon a time",
        max_tokens: 8,
        temperature: 1,
        n: 3,
        seed: 5,
      });
      assert.deepEqual(several.choices.map((c) => c.index).sort(), [0, 1, 2]);

      // Stop at a word the greedy completion contains: the text ends just before it.
      const words = greedyText.trim().split(/\s+/);
      const stopWord = ` ${words[Math.min(3, words.length - 1)]}`;
      const stopped = await client.completions.create({
        model: MODEL_NAME,
        prompt: "Once upon a time",
        max_tokens: 24,
        temperature: 0,
        stop: [stopWord],
      });
      assert.equal(stopped.choices[0].finish_reason, "stop");
      assert.equal(stopped.choices[0].text, greedyText.slice(0, greedyText.indexOf(stopWord)));

      const withLogprobs = await client.completions.create({
        model: MODEL_NAME,
        prompt: "Once upon a time",
        max_tokens: 5,
        temperature: 0,
        logprobs: 2,
      });
      const lp = withLogprobs.choices[0].logprobs!;
      assert.equal(lp.tokens!.length, 5);
      assert.equal(lp.token_logprobs!.length, 5);
      assert.ok(lp.token_logprobs!.every((x) => x <= 0));
      assert.ok(lp.top_logprobs!.every((top) => Object.keys(top).length >= 1));

      const chatLogprobs = await client.chat.completions.create({
        model: MODEL_NAME,
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 4,
        temperature: 0,
        logprobs: true,
        top_logprobs: 2,
      });
      const content = chatLogprobs.choices[0].logprobs!.content!;
      assert.equal(content.length, 4);
      assert.ok(content.every((c) => c.top_logprobs.length === 2 && c.logprob <= 0));
    });

    await t.step("the same seed gives the same sample", async () => {
      const sample = async (seed: number) =>
        (await client.completions.create({
          model: MODEL_NAME,
          prompt: "Once upon a time",
          max_tokens: 24,
          temperature: 1,
          seed,
        })).choices[0].text;
      const first = await sample(42);
      assert.equal(await sample(42), first);
    });

    await t.step("README's curl examples", async () => {
      const examples = await readmeCurlExamples();
      assert.ok(examples.length >= 3, `only ${examples.length} curl examples`);
      for (const example of examples) await runCurlExample(example, port);
    });

    await t.step("50 dropped streams free their KV blocks", async () => {
      const before = await (await fetch(`${url}/metrics`)).text();
      const abortsBefore = before.match(
        /denollm_requests_total\{model_name="[^"]*",finish_reason="abort"\} (\d+)/,
      );
      const streams = Array.from({ length: 50 }, async (_, i) => {
        const controller = new AbortController();
        const response = await fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            prompt: `Story ${i}: once upon a time`,
            max_tokens: 400,
            ignore_eos: true,
            stream: true,
          }),
          signal: controller.signal,
        });
        assert.equal(response.status, 200);
        const reader = response.body!.getReader();
        await reader.read();
        controller.abort();
        await reader.cancel().catch(() => {});
      });
      await Promise.all(streams);
      const deadline = Date.now() + 10_000;
      let text = "";
      while (Date.now() < deadline) {
        text = await (await fetch(`${url}/metrics`)).text();
        if (
          metric(text, "denollm_kv_cache_usage_ratio") === 0 &&
          metric(text, "denollm_num_requests_running") === 0
        ) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(metric(text, "denollm_kv_cache_usage_ratio"), 0, text);
      assert.equal(metric(text, "denollm_num_requests_running"), 0);
      assert.equal(metric(text, "denollm_num_requests_waiting"), 0);
      const aborts = Number(
        text.match(/denollm_requests_total\{model_name="[^"]*",finish_reason="abort"\} (\d+)/)
          ?.[1] ?? 0,
      );
      // They were dropped mid-way: most never reached 400 tokens.
      assert.ok(aborts - Number(abortsBefore?.[1] ?? 0) >= 25, `only ${aborts} aborted`);
    });

    await t.step({
      name: "/metrics passes promtool check metrics",
      ignore: !(await hasPromtool()),
      fn: async () => {
        const text = await (await fetch(`${url}/metrics`)).text();
        const child = new Deno.Command("promtool", {
          args: ["check", "metrics"],
          stdin: "piped",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const writer = child.stdin.getWriter();
        await writer.write(new TextEncoder().encode(text));
        await writer.close();
        const result = await child.output();
        const report = new TextDecoder().decode(result.stdout) +
          new TextDecoder().decode(result.stderr);
        assert.equal(result.code, 0, report);
      },
    });

    await t.step("SIGTERM: the in-flight request completes, STOPPING=1, exit 0", async () => {
      const response = await fetch(`${url}/v1/completions`, {
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
      server.child.kill("SIGTERM");
      const draining = await server.waitForLog((l) => l.msg.includes("draining"));
      assert.equal(draining.inflight, 1, "the request had finished before SIGTERM");
      // New requests are refused (connection closed) or get 503 while draining.
      const late = await fetch(`${url}/health`).then((r) => r.status, () => "refused");
      assert.ok(late === 503 || late === "refused", String(late));
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        body += value;
      }
      const events = body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
      assert.equal(events.at(-1), "[DONE]");
      const last = JSON.parse(events.at(-2)!);
      assert.equal(last.choices[0].finish_reason, "length");
      await notifySocket.waitFor("STOPPING=1");
      const status = await server.exited;
      assert.equal(status.code, 0, server.rawStderr.join("\n"));
      assert.ok(server.logs.some((l) => l.msg === "stopped"));
    });
  } finally {
    await server.close();
    notifySocket.close();
    await Deno.remove(modelDir, { recursive: true });
  }
});

async function hasPromtool(): Promise<boolean> {
  try {
    const { code } = await new Deno.Command("promtool", { args: ["--version"], stdout: "null" })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

Deno.test("denollm serve --api-key", async () => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--kv-cache-memory",
    "4M",
    "--api-key",
    "sk-test",
  ]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await waitHealthy(url);
    const anonymous = new OpenAI({ baseURL: `${url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(
      anonymous.completions.create({ model: "hf", prompt: "Hi", max_tokens: 2 }),
      (error: unknown) => {
        assert.ok(error instanceof OpenAI.AuthenticationError, String(error));
        assert.equal(error.status, 401);
        return true;
      },
    );
    const bare = await fetch(`${url}/v1/models`);
    assert.equal(bare.status, 401);
    await bare.body?.cancel();
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "sk-test", maxRetries: 0 });
    const completion = await client.completions.create({
      model: "hf",
      prompt: "Hi",
      max_tokens: 2,
    });
    assert.equal(completion.choices.length, 1);
  } finally {
    await server.close();
  }
});

Deno.test("denollm serve: requests still running at --shutdown-timeout are aborted", async () => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--shutdown-timeout",
    // Well inside the time the 480 tokens take, now that a stream runs at the engine's speed.
    "0.05",
  ]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    await waitHealthy(url);
    const response = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Once", max_tokens: 480, ignore_eos: true, stream: true }),
    });
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let body = (await reader.read()).value ?? "";
    server.child.kill("SIGTERM");
    while (true) {
      const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
      if (done) break;
      body += value;
    }
    const status = await server.exited;
    assert.equal(status.code, 0, server.rawStderr.join("\n"));
    assert.ok(server.logs.some((l) => l.msg === "aborting requests still in flight"));
    const events = body.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
    const finishes = events.filter((e) => e !== "[DONE]").map((e) =>
      JSON.parse(e).choices[0]?.finish_reason
    ).filter((f) => f);
    // Cut short, far before 480 tokens, and still a well-formed stream.
    assert.ok(events.length < 400, `${events.length} events`);
    assert.deepEqual(finishes, ["abort"]);
    assert.equal(events.at(-1), "[DONE]");
  } finally {
    await server.close();
  }
});

Deno.test("denollm serve start-up failures: one line, exit 1 (2 for bad flags)", async (t) => {
  const run = async (args: string[], env: Record<string, string> = {}) => {
    const server = new ServerProcess(args, env);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const exited = await Promise.race([
      server.exited,
      new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), 30_000))),
    ]);
    clearTimeout(timer);
    await server.close();
    assert.ok(exited, "the server did not exit");
    return { code: exited.code, lines: server.rawStderr.filter((l) => l.trim() !== "") };
  };
  const errorLine = (lines: string[]) => {
    const errors = lines.map((l) => JSON.parse(l)).filter((l) => l.level === "error");
    assert.equal(errors.length, 1, lines.join("\n"));
    return errors[0].msg as string;
  };

  await t.step("a model path that does not exist", async () => {
    const { code, lines } = await run(["--model", "/nonexistent/model", "--port", "0"]);
    assert.equal(code, 1);
    assert.match(errorLine(lines), /\/nonexistent\/model: no such file or directory/);
  });

  await t.step("a KV cache too small for one sequence", async () => {
    const { code, lines } = await run([
      "--model",
      MODEL_DIR,
      "--port",
      "0",
      "--kv-cache-memory",
      "1K",
    ]);
    assert.equal(code, 1);
    assert.match(errorLine(lines), /raise --kv-cache-memory or lower --max-model-len/);
  });

  await t.step("a port in use", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = String((listener.addr as Deno.NetAddr).port);
      const { code, lines } = await run(["--model", MODEL_DIR, "--port", port]);
      assert.equal(code, 1);
      assert.equal(
        errorLine(lines),
        `Cannot listen on 127.0.0.1:${port}: the address is already in use`,
      );
    } finally {
      listener.close();
    }
  });

  await t.step("a bad flag value exits 2 and names it", async () => {
    const { code, lines } = await run(["--model", MODEL_DIR], { DENOLLM_PORT: "eighty" });
    assert.equal(code, 2);
    assert.equal(lines[0], 'error: DENOLLM_PORT="eighty": expected an integer from 0 to 65535');
  });
});
