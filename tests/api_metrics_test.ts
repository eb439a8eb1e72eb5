// The Prometheus registry and the server's /metrics, checked by parsing the text exposition
// format 0.0.4 back with a small strict parser.
import assert from "node:assert/strict";
import { Metrics, PROMETHEUS_CONTENT_TYPE, Registry } from "../src/api/mod.ts";
import { makeApi, post, SERVED_NAME, startEngine, waitFor } from "./api_helpers.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(text: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  assert.match(text, /^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/, `a number, got "${text}"`);
  return Number(text);
}

/** Label values: `"..."` with only \\, \" and \n escapes; returns the value and the rest. */
function parseLabels(text: string): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let rest = text.slice(1);
  while (!rest.startsWith("}")) {
    const eq = rest.indexOf("=");
    const name = rest.slice(0, eq);
    assert.match(name, LABEL);
    assert.ok(!(name in labels), `duplicate label ${name}`);
    assert.equal(rest[eq + 1], '"');
    let i = eq + 2;
    let value = "";
    while (rest[i] !== '"') {
      assert.ok(i < rest.length, "unterminated label value");
      if (rest[i] === "\\") {
        const next = rest[i + 1];
        assert.ok(next === "\\" || next === '"' || next === "n", `bad escape \\${next}`);
        value += next === "n" ? "\n" : next;
        i += 2;
      } else {
        assert.notEqual(rest[i], "\n");
        value += rest[i++];
      }
    }
    labels[name] = value;
    rest = rest.slice(i + 1);
    if (rest.startsWith(",")) rest = rest.slice(1);
    else assert.ok(rest.startsWith("}"), `expected , or } in ${text}`);
  }
  return [labels, rest.slice(1)];
}

/** A strict parser: every sample belongs to the family announced just before it. */
function parseExposition(text: string): Map<string, Family> {
  assert.ok(text.endsWith("\n"));
  const families = new Map<string, Family>();
  let current: Family | undefined;
  for (const line of text.slice(0, -1).split("\n")) {
    assert.notEqual(line, "", "no blank lines");
    if (line.startsWith("# HELP ")) {
      const [name, ...help] = line.slice(7).split(" ");
      assert.match(name, NAME);
      assert.ok(!families.has(name), `family ${name} twice`);
      current = { name, help: help.join(" "), type: "", samples: [] };
      families.set(name, current);
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const [name, type] = line.slice(7).split(" ");
      assert.equal(name, current?.name, "TYPE follows its HELP");
      assert.ok(["counter", "gauge", "histogram"].includes(type));
      assert.equal(current!.samples.length, 0, "TYPE before samples");
      current!.type = type;
      continue;
    }
    assert.ok(!line.startsWith("#"), `unexpected comment: ${line}`);
    assert.ok(current?.type, "a sample after HELP and TYPE");
    const nameEnd = line.search(/[{ ]/);
    const name = line.slice(0, nameEnd);
    let rest = line.slice(nameEnd);
    let labels: Record<string, string> = {};
    if (rest.startsWith("{")) [labels, rest] = parseLabels(rest);
    assert.ok(rest.startsWith(" "));
    const fields = rest.slice(1).split(" ");
    assert.equal(fields.length, 1, "no timestamps");
    const allowed = current!.type === "histogram"
      ? [`${current!.name}_bucket`, `${current!.name}_sum`, `${current!.name}_count`]
      : [current!.name];
    assert.ok(allowed.includes(name), `sample ${name} in family ${current!.name}`);
    current!.samples.push({ name, labels, value: parseValue(fields[0]) });
  }
  for (const family of families.values()) {
    if (family.type === "counter") assert.ok(family.name.endsWith("_total"), family.name);
    if (family.type === "histogram") checkHistogram(family);
  }
  return families;
}

/** Buckets ascend in le, counts are cumulative, +Inf equals _count, _sum is there. */
function checkHistogram(family: Family): void {
  const series = new Map<string, Sample[]>();
  for (const sample of family.samples) {
    const { le: _, ...rest } = sample.labels;
    const key = JSON.stringify(rest);
    if (!series.has(key)) series.set(key, []);
    series.get(key)!.push(sample);
  }
  for (const [key, samples] of series) {
    const buckets = samples.filter((s) => s.name.endsWith("_bucket"));
    const sums = samples.filter((s) => s.name.endsWith("_sum"));
    const counts = samples.filter((s) => s.name.endsWith("_count"));
    assert.equal(sums.length, 1, `${family.name}${key} _sum`);
    assert.equal(counts.length, 1, `${family.name}${key} _count`);
    assert.ok(buckets.length >= 2);
    assert.equal(buckets.at(-1)!.labels.le, "+Inf");
    let prevLe = -Infinity;
    let prevCount = 0;
    for (const b of buckets) {
      const le = parseValue(b.labels.le);
      assert.ok(le > prevLe, `${family.name} le ascending`);
      assert.ok(b.value >= prevCount, `${family.name} cumulative`);
      assert.ok(Number.isInteger(b.value));
      prevLe = le;
      prevCount = b.value;
    }
    assert.equal(prevCount, counts[0].value, `${family.name} +Inf bucket = _count`);
    if (counts[0].value === 0) assert.equal(sums[0].value, 0);
  }
}

Deno.test("metrics registry", async (t) => {
  await t.step("renders counters, gauges and histograms in format 0.0.4", () => {
    const r = new Registry();
    const c = r.counter({ name: "x_requests", help: "Requests.", labelNames: ["code", "path"] });
    c.inc(1, { code: "200", path: "/a" });
    c.inc(2, { code: "200", path: "/a" });
    c.inc(1, { code: "500", path: 'we"ird\\pa\nth' });
    const g = r.gauge({ name: "x_temp", help: "Back\\slash and\nnewline." });
    g.set(-1.5);
    const h = r.histogram({ name: "x_latency_seconds", help: "Latency.", buckets: [0.1, 1, 10] });
    for (const v of [0.05, 0.1, 0.5, 3, 30, 30]) h.observe(v);
    assert.equal(
      r.render(),
      [
        "# HELP x_requests_total Requests.",
        "# TYPE x_requests_total counter",
        'x_requests_total{code="200",path="/a"} 3',
        'x_requests_total{code="500",path="we\\"ird\\\\pa\\nth"} 1',
        "# HELP x_temp Back\\\\slash and\\nnewline.",
        "# TYPE x_temp gauge",
        "x_temp -1.5",
        "# HELP x_latency_seconds Latency.",
        "# TYPE x_latency_seconds histogram",
        'x_latency_seconds_bucket{le="0.1"} 2',
        'x_latency_seconds_bucket{le="1"} 3',
        'x_latency_seconds_bucket{le="10"} 4',
        'x_latency_seconds_bucket{le="+Inf"} 6',
        "x_latency_seconds_sum 63.65",
        "x_latency_seconds_count 6",
        "",
      ].join("\n"),
    );
    const parsed = parseExposition(r.render());
    const sample = parsed.get("x_requests_total")!.samples[1];
    assert.equal(sample.labels.path, 'we"ird\\pa\nth');
    assert.equal(parsed.get("x_temp")!.help, "Back\\\\slash and\\nnewline.");
  });

  await t.step("labelled histograms render one series per label set", () => {
    const r = new Registry();
    const h = r.histogram({ name: "y", help: "Y.", buckets: [1, 2], labelNames: ["kind"] });
    h.observe(1.5, { kind: "a" });
    h.observe(5, { kind: "b" });
    h.observe(0.5, { kind: "a" });
    const family = parseExposition(r.render()).get("y")!;
    assert.equal(family.samples.length, 10);
    assert.equal(h.count({ kind: "a" }), 2);
  });

  await t.step("rejects bad names, labels and values", () => {
    const r = new Registry();
    assert.throws(() => r.gauge({ name: "1bad", help: "" }), RangeError);
    assert.throws(() => r.gauge({ name: "ok", help: "", labelNames: ["__x"] }), RangeError);
    assert.throws(() => r.gauge({ name: "ok2", help: "", labelNames: ["a", "a"] }), RangeError);
    assert.throws(() => r.counter({ name: "c_total", help: "" }), RangeError);
    assert.throws(
      () => r.histogram({ name: "h", help: "", buckets: [1, 1] }),
      RangeError,
    );
    assert.throws(
      () => r.histogram({ name: "h2", help: "", buckets: [1], labelNames: ["le"] }),
      RangeError,
    );
    const c = r.counter({ name: "c", help: "", labelNames: ["k"] });
    assert.throws(() => c.inc(-1, { k: "x" }), RangeError);
    assert.throws(() => c.inc(1, {}), RangeError);
    assert.throws(() => c.inc(1, { k: "x", extra: "y" }), RangeError);
    assert.throws(() => r.counter({ name: "c", help: "" }), RangeError);
    const h = r.histogram({ name: "h3", help: "", buckets: [1] });
    assert.throws(() => h.observe(NaN), RangeError);
    h.observe(Infinity);
    assert.match(r.render(), /h3_sum \+Inf/);
  });

  await t.step("an empty Metrics parses", () => {
    const families = parseExposition(new Metrics().render());
    assert.ok(families.size >= 12);
    for (const name of families.keys()) assert.ok(name.startsWith("denollm_"), name);
  });
});

Deno.test("/metrics after real traffic", async () => {
  const engine = await startEngine();
  try {
    const { app, inflight } = await makeApi(engine);
    const requests = [
      post(app, "/v1/completions", { prompt: ["Once", "Lily"], n: 2, max_tokens: 6 }),
      post(app, "/v1/completions", { prompt: "Once", max_tokens: 5, stream: true }),
      post(app, "/v1/completions", { prompt: "Once", max_tokens: 5, stop_token_ids: [2, 3] }),
      post(app, "/v1/chat/completions", {
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 4,
      }),
      post(app, "/v1/completions", { prompt: "x", temperature: 9 }),
    ];
    for (const res of await Promise.all(requests)) await res.text();
    // A prompt of several KV blocks, twice: the second time its full blocks are cache hits.
    const story = { prompt: "Once upon a time there was a little girl. ".repeat(6), max_tokens: 2 };
    for (let i = 0; i < 2; i++) await (await post(app, "/v1/completions", story)).text();
    // Scrape while a request is running, so the gauges have something to show.
    const running = await post(app, "/v1/completions", {
      prompt: "Once upon a time",
      max_tokens: 200,
      ignore_eos: true,
      stream: true,
    });
    const reader = running.body!.getReader();
    await reader.read();
    const res = await app.request("/metrics");
    assert.equal(res.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
    const families = parseExposition(await res.text());
    const value = (name: string, labels: Record<string, string> = {}) => {
      const family = families.get(name) ?? families.get(name.replace(/_(sum|count)$/, ""))!;
      return family.samples.find((s) =>
        s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
      )!.value;
    };
    assert.equal(value("denollm_num_requests_running"), 1);
    assert.equal(value("denollm_num_requests_waiting"), 0);
    const usage = value("denollm_kv_cache_usage_ratio");
    assert.ok(usage > 0 && usage < 1);
    assert.ok(value("denollm_prefix_cache_queries_total") > 0);
    assert.ok(value("denollm_prefix_cache_hits_total") >= 32);
    assert.ok(value("denollm_prompt_tokens_total") > 5);
    assert.ok(value("denollm_generation_tokens_total") >= 24);
    assert.ok(value("denollm_requests_total", { finish_reason: "length" }) >= 7);
    assert.equal(value("denollm_http_responses_total", { status: "400" }), 1);
    const ttft = value("denollm_time_to_first_token_seconds_count");
    assert.ok(ttft >= 6, `ttft count ${ttft}`);
    assert.ok(value("denollm_inter_token_latency_seconds_count") > 20);
    assert.ok(value("denollm_e2e_request_latency_seconds_count") >= 6);
    assert.ok(value("denollm_request_queue_time_seconds_count") >= 6);
    // vLLM's dashboards select by model_name: every sample carries the served name.
    for (const family of families.values()) {
      for (const sample of family.samples) {
        assert.equal(sample.labels.model_name, SERVED_NAME, `${sample.name} has model_name`);
      }
    }
    await reader.cancel();
    await waitFor(() => inflight.count === 0 && engine.stats.numRunning === 0);
    const after = parseExposition(await (await app.request("/metrics")).text());
    const abort = after.get("denollm_requests_total")!.samples.find((s) =>
      s.labels.finish_reason === "abort"
    );
    assert.equal(abort?.value, 1);
    assert.equal(after.get("denollm_kv_cache_usage_ratio")!.samples[0].value, 0);
  } finally {
    await engine.shutdown();
  }
});
