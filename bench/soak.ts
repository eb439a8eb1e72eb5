// Soak benchmark (not a test): starts a real `denollm serve`, sends rounds of mixed requests
// (streamed and not, n = 1 and 2, completed and cancelled, keep-alive and fresh connections that
// close after a delay, salted tenants) and prints the server's RSS after each round, the growth
// from round 2 on, and what the server still tracks once the round has drained.
// --mode disconnect sends only what issue 17 reported: non-streaming requests (n = 1 or 2, long
// max_tokens) each on a fresh connection the client closes 0 to close-delay ms later, mostly
// before the response; --mode complete sends non-streaming requests read to the end.
//
//   deno task bench:soak --model DIR [--rounds 10] [--requests 500] [--concurrency 16]
//     [--max-seconds 600] [--close-delay-ms 3000] [--kv-cache-memory 64M]
//     [--mode mixed|disconnect|complete] [--max-tokens N]
import { parseArgs } from "node:util";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    rounds: { type: "string", default: "10" },
    requests: { type: "string", default: "500" },
    concurrency: { type: "string", default: "16" },
    "max-seconds": { type: "string", default: "600" },
    "close-delay-ms": { type: "string", default: "3000" },
    "kv-cache-memory": { type: "string", default: "64M" },
    mode: { type: "string", default: "mixed" },
    "max-tokens": { type: "string" },
  },
});
if (v.model === undefined) {
  console.error("usage: deno task bench:soak --model DIR [--rounds 10] [--requests 500]");
  Deno.exit(2);
}
const numRounds = Number(v.rounds);
const numPerRound = Number(v.requests);
const concurrency = Number(v.concurrency);
const deadline = Date.now() + Number(v["max-seconds"]) * 1000;
const maxCloseDelayMs = Number(v["close-delay-ms"]);
const mode = v.mode!;
if (!["mixed", "disconnect", "complete"].includes(mode)) {
  console.error(`--mode must be mixed, disconnect or complete, found ${mode}`);
  Deno.exit(2);
}
const fixedMaxTokens = v["max-tokens"] === undefined ? undefined : Number(v["max-tokens"]);
const ROOT = new URL("..", import.meta.url).pathname;

/** mulberry32, so that a run can be repeated. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
const random = rng(17);

const child = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-ffi",
    "--allow-net",
    "--unstable-no-legacy-abort",
    "main.ts",
    "serve",
    "--model",
    v.model,
    "--port",
    "0",
    "--threads",
    "1",
    "--kv-cache-memory",
    v["kv-cache-memory"]!,
    "--log-format",
    "json",
  ],
  cwd: ROOT,
  stdin: "null",
  stdout: "null",
  stderr: "piped",
}).spawn();

/** The port, from the server's "listening" log line. */
async function readPort(): Promise<number> {
  const lines = child.stderr.pipeThrough(new TextDecoderStream());
  let pending = "";
  const reader = lines.getReader();
  while (true) {
    const { value, done } = await reader.read();
    if (done) throw new Error("The server exited before it listened");
    pending += value;
    const match = /"port":(\d+)/.exec(pending);
    if (match) {
      // Keep draining stderr so the server never blocks on a full pipe.
      (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      return Number(match[1]);
    }
  }
}

const port = await readPort();
const url = `http://127.0.0.1:${port}`;

async function rssBytes(): Promise<number> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "rss=", "-p", String(child.pid)],
    stdout: "piped",
  }).output();
  return Number(new TextDecoder().decode(out.stdout).trim()) * 1024;
}

/**
 * The server's resident bytes split by where they live: anonymous mappings of 32 MiB or more (the
 * native library's lazily touched KV cache and step workspace, dl_alloc's big blocks) and the rest
 * (V8's heap, malloc, code). A lazily mapped KV cache grows RSS as new blocks are first written,
 * up to its size; growth past that is a leak.
 */
async function residentSplit(): Promise<{ bigAnonBytes: number; otherBytes: number }> {
  // Through cat: Deno 2.9 lets only --allow-all read /proc files; --allow-run is already held.
  const out = await new Deno.Command("cat", {
    args: [`/proc/${child.pid}/smaps`],
    stdout: "piped",
  }).output();
  const smaps = new TextDecoder().decode(out.stdout);
  let bigAnonBytes = 0;
  let otherBytes = 0;
  let isBigAnon = false;
  for (const line of smaps.split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)\s*(\S*)/.exec(line);
    if (range) {
      const size = parseInt(range[2], 16) - parseInt(range[1], 16);
      isBigAnon = range[3] === "0" && range[4] === "" && size >= 32 * 2 ** 20;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      if (isBigAnon) bigAnonBytes += Number(rss[1]) * 1024;
      else otherBytes += Number(rss[1]) * 1024;
    }
  }
  return { bigAnonBytes, otherBytes };
}

async function metrics(): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  // A sample may carry constant labels (`name{model_name="…"} 0`): the value is the last field.
  const get = (name: string) =>
    Number(
      text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
        ?.split(" ").at(-1) ?? NaN,
    );
  return {
    running: get("denollm_num_requests_running"),
    waiting: get("denollm_num_requests_waiting"),
    kv: get("denollm_kv_cache_usage_ratio"),
  };
}

while (Date.now() < deadline) {
  const health = await fetch(`${url}/health`).catch(() => undefined);
  await health?.body?.cancel();
  if (health?.status === 200) break;
  await new Promise((r) => setTimeout(r, 100));
}

const TENANTS = [undefined, "tenant-a", "tenant-b", "tenant-c"];

function requestBody(): { path: string; body: string } {
  const stream = mode === "mixed" && random() < 0.5;
  const n = random() < 0.3 ? 2 : 1;
  const salt = TENANTS[Math.floor(random() * TENANTS.length)];
  const words = ["Once upon a time", "The little dog", "In a big house", "She said"];
  const prompt = `${words[Math.floor(random() * words.length)]} ${Math.floor(random() * 1000)}`;
  const common = {
    max_tokens: fixedMaxTokens ?? 8 + Math.floor(random() * 56),
    temperature: 0.8,
    n,
    stream,
    ...(salt === undefined ? {} : { cache_salt: salt }),
  };
  return { path: "/v1/completions", body: JSON.stringify({ ...common, prompt }) };
}

/** A request on the shared keep-alive pool; cancelled ones stop reading after the first bytes. */
async function keepAliveRequest(cancel: boolean): Promise<void> {
  const { path, body } = requestBody();
  const controller = new AbortController();
  const response = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
    signal: controller.signal,
  });
  if (!cancel) {
    await response.arrayBuffer();
    return;
  }
  const reader = response.body!.getReader();
  await reader.read().catch(() => {});
  controller.abort();
  await reader.cancel().catch(() => {});
}

/** A request on a connection of its own that the client closes 0 to close-delay ms later. */
async function freshConnectionRequest(): Promise<void> {
  const { path, body } = requestBody();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const bytes = new TextEncoder().encode(body);
  const head = `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n` +
    `content-length: ${bytes.length}\r\n\r\n`;
  try {
    await conn.write(new TextEncoder().encode(head));
    await conn.write(bytes);
    const closeAfterMs = random() * maxCloseDelayMs;
    const buffer = new Uint8Array(16 << 10);
    const until = Date.now() + closeAfterMs;
    while (Date.now() < until) {
      const n = await Promise.race([
        conn.read(buffer).catch(() => null),
        new Promise<"late">((r) => setTimeout(() => r("late"), Math.max(0, until - Date.now()))),
      ]);
      if (n === null || n === "late") break;
    }
  } finally {
    conn.close();
  }
}

async function runRound(): Promise<{ numSent: number; numFailed: number }> {
  let next = 0;
  let numFailed = 0;
  const worker = async () => {
    while (next < numPerRound && Date.now() < deadline) {
      next++;
      const kind = random();
      try {
        if (mode === "disconnect") await freshConnectionRequest();
        else if (mode === "complete") await keepAliveRequest(false);
        else if (kind < 0.4) await keepAliveRequest(false);
        else if (kind < 0.6) await keepAliveRequest(true);
        else await freshConnectionRequest();
      } catch {
        numFailed++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { numSent: next, numFailed };
}

/** Waits until the engine has nothing running, waiting or in the KV cache. */
async function settle(): Promise<Record<string, number>> {
  const until = Date.now() + 30_000;
  let m = await metrics();
  while (Date.now() < until && (m.running > 0 || m.waiting > 0 || m.kv > 0)) {
    await new Promise((r) => setTimeout(r, 100));
    m = await metrics();
  }
  return m;
}

console.log(
  "round  requests  failed  rss_mb  growth_vs_round2  big_anon_mb  other_mb  running  waiting  kv_usage",
);
let totalSent = 0;
let round2Rss: number | undefined;
const rows: number[] = [];
try {
  for (let round = 1; round <= numRounds && Date.now() < deadline; round++) {
    const { numSent, numFailed } = await runRound();
    totalSent += numSent;
    const m = await settle();
    // Let sockets closed by the fresh-connection clients be reaped before sampling.
    await new Promise((r) => setTimeout(r, 1000));
    const rss = await rssBytes();
    const split = await residentSplit();
    rows.push(rss);
    if (round === 2) round2Rss = rss;
    const growth = round2Rss === undefined ? "-" : `${((rss / round2Rss - 1) * 100).toFixed(1)}%`;
    console.log(
      `${String(round).padStart(5)}  ${String(numSent).padStart(8)}  ${
        String(numFailed).padStart(6)
      }  ${(rss / 2 ** 20).toFixed(0).padStart(6)}  ${growth.padStart(16)}  ${
        (split.bigAnonBytes / 2 ** 20).toFixed(0).padStart(11)
      }  ${(split.otherBytes / 2 ** 20).toFixed(0).padStart(8)}  ${
        String(m.running).padStart(7)
      }  ${String(m.waiting).padStart(7)}  ${String(m.kv).padStart(8)}`,
    );
  }
  if (rows.length >= 3) {
    const perRound = rows.slice(1).map((rss, i) => i === 0 ? 0 : (rss / rows[i] - 1) * 100);
    console.log(
      `${totalSent} requests; growth per round after round 2: max ${
        Math.max(...perRound.slice(1)).toFixed(1)
      }%, total ${((rows.at(-1)! / rows[1] - 1) * 100).toFixed(1)}%`,
    );
  }
} finally {
  child.kill("SIGTERM");
  await child.status;
}
