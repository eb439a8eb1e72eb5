// `denollm serve --sampling-device device` end to end: the log says where tokens are sampled, a
// seeded completion is the same twice, and /metrics counts the tokens sampled on the device while
// a logprobs request's tokens are not.
import assert from "node:assert/strict";
import { MODEL_DIR, ServerProcess } from "./server_process.ts";

async function complete(url: string, body: Record<string, unknown>) {
  const response = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", prompt: "Once upon a time", max_tokens: 16, ...body }),
  });
  assert.equal(response.status, 200);
  return await response.json();
}

async function deviceTokens(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  // `denollm_device_sampled_tokens_total{model_name="m"} 32`
  const line = text.split("\n").find((l) => l.startsWith("denollm_device_sampled_tokens_total{"));
  assert.ok(line !== undefined, text);
  return Number(line.split(" ").at(-1));
}

Deno.test("serve --sampling-device device: seeded output repeats, /metrics counts it", async () => {
  const server = new ServerProcess([
    "--model",
    MODEL_DIR,
    "--port",
    "0",
    "--served-model-name",
    "m",
    "--sampling-device",
    "device",
  ]);
  try {
    const url = `http://127.0.0.1:${await server.port}`;
    const ready = await server.waitForLog((l) => l.msg.startsWith("serving "), 60_000);
    assert.equal(ready.sampling_device, "device");
    const seeded = { temperature: 0.9, top_p: 0.95, seed: 5, ignore_eos: true };
    const first = await complete(url, seeded);
    const second = await complete(url, seeded);
    assert.equal(first.choices[0].text, second.choices[0].text);
    assert.equal(first.usage.completion_tokens, 16);
    const afterSeeded = await deviceTokens(url);
    assert.equal(afterSeeded, 32, "both completions' tokens came from the device");
    // logprobs need the logits: its tokens are sampled on the host.
    const withLogprobs = await complete(url, { ...seeded, logprobs: 1 });
    assert.equal(withLogprobs.choices[0].logprobs.tokens.length, 16);
    assert.equal(await deviceTokens(url), afterSeeded);
  } finally {
    await server.close();
  }
});
