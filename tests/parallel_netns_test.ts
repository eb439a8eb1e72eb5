// Ranks on two hosts: two network namespaces joined by a veth pair (10.77.x.1 and 10.77.x.2),
// set up and torn down here; node 0 serves in one, `denollm serve --node-rank 1` runs the other
// host's ranks in the other, and they talk only over those addresses. Needs root (CAP_NET_ADMIN)
// and iproute2; without them the test is ignored and says why.
import assert from "node:assert/strict";
import { greedyRun, maxLogprobDiff, prompts, STORIES_260K } from "./parallel_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TAG = `${Deno.pid % 100000}`;
const NS = [`dlpar0-${TAG}`, `dlpar1-${TAG}`];
const SUBNET = `10.77.${Deno.pid % 250}`;
const ADDR = [`${SUBNET}.1`, `${SUBNET}.2`];

function ip(...args: string[]): { ok: boolean; stderr: string } {
  try {
    const out = new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).outputSync();
    return { ok: out.success, stderr: new TextDecoder().decode(out.stderr).trim() };
  } catch (error) {
    return { ok: false, stderr: (error as Error).message };
  }
}

/** Why namespaces cannot be made here, or null when they can. */
function whyNoNetns(): string | null {
  const probe = `dlprobe-${TAG}`;
  const made = ip("netns", "add", probe);
  if (!made.ok) return `ip netns add failed: ${made.stderr}`;
  ip("netns", "del", probe);
  return null;
}

const reason = whyNoNetns();
if (reason !== null) console.error(`parallel netns test ignored: ${reason}`);

function setUp(): void {
  const steps: string[][] = [
    ["netns", "add", NS[0]],
    ["netns", "add", NS[1]],
    ["link", "add", `dlv0-${TAG}`, "type", "veth", "peer", "name", `dlv1-${TAG}`],
    ["link", "set", `dlv0-${TAG}`, "netns", NS[0]],
    ["link", "set", `dlv1-${TAG}`, "netns", NS[1]],
  ];
  for (const [i, ns] of NS.entries()) {
    steps.push(
      ["-n", ns, "addr", "add", `${ADDR[i]}/24`, "dev", `dlv${i}-${TAG}`],
      ["-n", ns, "link", "set", `dlv${i}-${TAG}`, "up"],
      ["-n", ns, "link", "set", "lo", "up"],
    );
  }
  for (const step of steps) {
    const r = ip(...step);
    if (!r.ok) throw new Error(`ip ${step.join(" ")} failed: ${r.stderr}`);
  }
}

function tearDown(): void {
  for (const ns of NS) ip("netns", "del", ns); // takes its end of the veth pair with it
}

function inNamespace(ns: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command("ip", {
    args: ["netns", "exec", ns, Deno.execPath(), "run", "-A", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test({
  name: "parallel across two hosts (network namespaces) gives one rank's tokens",
  ignore: reason !== null,
  async fn(t) {
    const list = prompts(512, 16);
    const reference = await greedyRun(STORIES_260K, list);
    setUp();
    try {
      for (const [tp, pp] of [[2, 1], [2, 2]]) {
        await t.step(`TP=${tp}×PP=${pp}, ${(tp * pp) / 2} rank(s) per host`, async () => {
          const port = String(29000 + (Deno.pid % 1000) + tp * 10 + pp);
          const node1 = inNamespace(NS[1], [
            "main.ts",
            "serve",
            "--tensor-parallel-size",
            String(tp),
            "--pipeline-parallel-size",
            String(pp),
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            ADDR[0],
            "--master-port",
            port,
            "--bind-addr",
            ADDR[1],
          ]);
          const node0 = inNamespace(NS[0], [
            "tests/parallel_netns_client.ts",
            STORIES_260K,
            ADDR[0],
            port,
            String(tp),
            String(pp),
          ]);
          const [out0, out1] = await Promise.all([node0.output(), node1.output()]);
          const decode = (b: Uint8Array) => new TextDecoder().decode(b);
          assert.ok(out0.success, `node 0 failed: ${decode(out0.stderr)}`);
          assert.ok(out1.success, `node 1 failed: ${decode(out1.stderr)}`);
          const run = JSON.parse(decode(out0.stdout));
          assert.deepEqual(run.tokens, reference.tokens);
          assert.ok(maxLogprobDiff(run, reference) <= 1e-4);
        });
      }
    } finally {
      tearDown();
    }
  },
});
