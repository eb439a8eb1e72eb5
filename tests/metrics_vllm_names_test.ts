// --metrics-names vllm: vLLM's exact metric names, finished_reason, and model_name on every sample,
// so vLLM's Grafana dashboards read denollm's /metrics.
import assert from "node:assert/strict";
import { Metrics, type MetricsOptions } from "../src/api/metrics.ts";
import { parseServeConfig } from "../src/server/config.ts";

function sampleMetrics(opts?: MetricsOptions): Metrics {
  const m = new Metrics(opts);
  m.requestsFinished.inc(2, { finish_reason: "stop" });
  m.promptTokens.inc(10);
  m.timeToFirstToken.observe(0.2);
  m.updateFromEngine(
    {
      numRunning: 1,
      numWaiting: 2,
      numKvBlocks: 10,
      numFreeKvBlocks: 5,
      prefixCacheQueries: 4,
      prefixCacheHits: 1,
      numPreemptions: 0,
    } as Parameters<Metrics["updateFromEngine"]>[0],
  );
  return m;
}

Deno.test("metrics under vLLM's names carry model_name", () => {
  const text = sampleMetrics({ names: "vllm", modelName: 'org/m"x' }).render();
  const label = 'model_name="org/m\\"x"';
  for (
    const line of [
      `vllm:request_success_total{${label},finished_reason="stop"} 2`,
      `vllm:prompt_tokens_total{${label}} 10`,
      `vllm:num_requests_running{${label}} 1`,
      `vllm:num_requests_waiting{${label}} 2`,
      `vllm:kv_cache_usage_perc{${label}} 0.5`,
      `vllm:prefix_cache_queries_total{${label}} 4`,
      `vllm:time_to_first_token_seconds_count{${label}} 1`,
      "# TYPE vllm:time_to_first_token_seconds histogram",
      "# TYPE vllm:request_success_total counter",
    ]
  ) {
    assert.ok(text.split("\n").includes(line), `${line}\n${text}`);
  }
  assert.match(
    text,
    /^vllm:time_to_first_token_seconds_bucket\{model_name="[^\n]*",le="\+Inf"\} 1$/m,
  );
  assert.ok(!/^denollm_(?!http_responses)/m.test(text), text);
  // Every sample line has the label.
  for (const line of text.split("\n").filter((l) => l !== "" && !l.startsWith("#"))) {
    assert.ok(line.includes(label), line);
  }
});

Deno.test("metrics keep denollm's names by default, with model_name when given", () => {
  const bare = sampleMetrics().render();
  assert.ok(bare.split("\n").includes('denollm_requests_total{finish_reason="stop"} 2'), bare);
  assert.ok(!bare.includes("model_name"));
  const text = sampleMetrics({ modelName: "org/m" }).render();
  const label = 'model_name="org/m"';
  for (
    const line of [
      `denollm_requests_total{${label},finish_reason="stop"} 2`,
      `denollm_prompt_tokens_total{${label}} 10`,
      `denollm_num_requests_running{${label}} 1`,
      `denollm_kv_cache_usage_ratio{${label}} 0.5`,
      `denollm_time_to_first_token_seconds_bucket{${label},le="+Inf"} 1`,
      `denollm_time_to_first_token_seconds_count{${label}} 1`,
    ]
  ) {
    assert.ok(text.split("\n").includes(line), `${line}\n${text}`);
  }
  const samples = text.split("\n").filter((l) => l !== "" && !l.startsWith("#"));
  for (const line of samples) assert.ok(line.includes(label), line);
  // The two namings differ only in metric and label names, not in which samples they have.
  const vllm = sampleMetrics({ names: "vllm", modelName: "org/m" }).render();
  assert.equal(
    vllm.split("\n").filter((l) => l !== "" && !l.startsWith("#")).length,
    samples.length,
  );
});

Deno.test("a model name that spells a label is kept as it is under vLLM's names", () => {
  const name = 'x",finish_reason="y';
  const text = sampleMetrics({ names: "vllm", modelName: name }).render();
  assert.ok(
    text.split("\n").includes(
      'vllm:request_success_total{model_name="x\\",finish_reason=\\"y",finished_reason="stop"} 2',
    ),
    text,
  );
});

Deno.test("--metrics-names", () => {
  const parsed = parseServeConfig(["m", "--metrics-names", "vllm"], { env: {} });
  assert.ok(!parsed.help && parsed.version !== true);
  assert.equal(parsed.operator.metricsNames, "vllm");
  assert.throws(
    () => parseServeConfig(["m", "--metrics-names", "prom"], { env: {} }),
    /--metrics-names "prom": expected one of denollm, vllm/,
  );
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

Deno.test({
  name: "metrics under both namings pass promtool check metrics",
  ignore: !(await hasPromtool()),
  async fn(t) {
    for (const names of ["vllm", "denollm"] as const) {
      await t.step(names, () => promtoolCheck(names));
    }
  },
});

async function promtoolCheck(names: "vllm" | "denollm"): Promise<void> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(
    new TextEncoder().encode(sampleMetrics({ names, modelName: "m" }).render()),
  );
  await writer.close();
  const result = await child.output();
  const report = new TextDecoder().decode(result.stdout) +
    new TextDecoder().decode(result.stderr);
  // vLLM's own names draw promtool's lint about ':' (reserved for recording rules); any other
  // complaint, a parse error above all, fails.
  const others = report.split("\n").filter((l) =>
    l.trim() !== "" && !/metric names should not contain ':'$/.test(l)
  );
  assert.deepEqual(others, [], report);
}
