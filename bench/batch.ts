// `denollm batch` against the same requests sent over HTTP to `denollm serve` (benchmark, not a
// test): both with the same engine flags and the same number of requests in flight.
//
//   deno run -A bench/batch.ts --model DIR [--lines 1000] [--max-tokens 32] [--threads 1]
//     [--max-num-seqs 16] [--port 18431]
import { parseArgs } from "node:util";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    lines: { type: "string", default: "1000" },
    "max-tokens": { type: "string", default: "32" },
    threads: { type: "string", default: "1" },
    "max-num-seqs": { type: "string", default: "16" },
    port: { type: "string", default: "18431" },
  },
});
if (!v.model) throw new Error("--model is required");
const main = new URL("../main.ts", import.meta.url).pathname;
const numLines = Number(v.lines);
const maxTokens = Number(v["max-tokens"]);
const maxInFlight = 2 * Number(v["max-num-seqs"]);
const engineFlags = [
  "--model",
  v.model,
  "--threads",
  v.threads!,
  "--max-num-seqs",
  v["max-num-seqs"]!,
  "--kv-cache-memory",
  "64M",
  "--max-model-len",
  "256",
];
const starts = ["Once upon a time", "The little dog", "Lily wanted to", "One day, a cat"];
const bodies = Array.from({ length: numLines }, (_, i) => ({
  prompt: `${starts[i % starts.length]} ${i}`,
  max_tokens: maxTokens,
  temperature: 0,
  ignore_eos: true,
}));

const dir = await Deno.makeTempDir({ prefix: "denollm_bench_batch_" });
try {
  const input = `${dir}/requests.jsonl`;
  await Deno.writeTextFile(
    input,
    bodies.map((body, i) =>
      JSON.stringify({ custom_id: `r${i}`, method: "POST", url: "/v1/completions", body })
    ).join("\n") + "\n",
  );
  const batch = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "batch", ...engineFlags, "--input", input, "--output", `${dir}/o`],
    stdout: "null",
    stderr: "piped",
  }).output();
  const log = new TextDecoder().decode(batch.stderr);
  if (batch.code !== 0) throw new Error(log);
  const summary = log.trim().split("\n").at(-1)!;
  console.log(`batch (in-process app, engine worker): ${summary}`);

  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "serve", ...engineFlags, "--port", v.port!],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const url = `http://127.0.0.1:${v.port}`;
    for (let i = 0;; i++) {
      const ok = await fetch(`${url}/health`).then((r) => (r.body?.cancel(), r.ok), () => false);
      if (ok) break;
      if (i > 300) throw new Error("the server did not start");
      await new Promise((r) => setTimeout(r, 100));
    }
    const started = performance.now();
    let next = 0;
    let numTokens = 0;
    const worker = async () => {
      while (next < bodies.length) {
        const body = bodies[next++];
        const res = await fetch(`${url}/v1/completions`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        });
        const json = await res.json();
        numTokens += json.usage.completion_tokens;
      }
    };
    await Promise.all(Array.from({ length: maxInFlight }, worker));
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `HTTP (${maxInFlight} concurrent clients): ${numLines} lines in ${seconds.toFixed(1)} s ` +
        `(${(numLines / seconds).toFixed(1)} lines/s, ${(numTokens / seconds).toFixed(0)} ` +
        `output tok/s)`,
    );
  } finally {
    server.kill("SIGTERM");
    await server.status;
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
