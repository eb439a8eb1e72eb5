// The serving load generator's parts: metrics on synthetic timings, arrivals, workloads, the SSE
// client against a fake server, and the SVG writer. Nothing here asserts on wall-clock time.
import assert from "node:assert/strict";
import { arrivalTimesMs, Rng, sampleGamma } from "../bench/serve/arrivals.ts";
import { requestBody, sendRequest, SseParser } from "../bench/serve/client.ts";
import {
  computeMetrics,
  maxConcurrency,
  parseSlo,
  percentile,
  type RequestResult,
  summarize,
  tpotMs,
} from "../bench/serve/metrics.ts";
import { escapeXml, lineChartSvg, niceTicks, sweepChart } from "../bench/serve/report.ts";
import { runLoad } from "../bench/serve/runner.ts";
import {
  parseJsonlWorkload,
  parseLengthDist,
  sampleLength,
  syntheticWorkload,
  WorkloadFileError,
} from "../bench/serve/workload.ts";

function result(partial: Partial<RequestResult>): RequestResult {
  return {
    success: true,
    startMs: 0,
    ttftMs: 0,
    itlMs: [],
    e2elMs: 0,
    promptTokens: 0,
    outputTokens: 0,
    ...partial,
  };
}

Deno.test("metrics", async (t) => {
  await t.step("percentile interpolates linearly between ranks like numpy", () => {
    const xs = [15, 20, 35, 40, 50];
    assert.equal(percentile(xs, 0), 15);
    assert.equal(percentile(xs, 50), 35);
    assert.equal(percentile(xs, 100), 50);
    // rank 0.4 * 4 = 1.6 -> 20 + 0.6 * 15
    assert.equal(percentile(xs, 40), 29);
    // rank 0.99 * 4 = 3.96 -> 40 + 0.96 * 10
    assert.ok(Math.abs(percentile(xs, 99) - 49.6) < 1e-12);
    assert.equal(percentile([7], 90), 7);
    assert.equal(percentile([], 50), 0);
    assert.equal(percentile([3, 1, 2], 50), 2, "input order does not matter");
    assert.throws(() => percentile(xs, 101), RangeError);
  });

  await t.step("summarize gives mean, median and population std", () => {
    const s = summarize([2, 4, 4, 4, 5, 5, 7, 9], [50, 90]);
    assert.equal(s.mean, 5);
    assert.equal(s.std, 2);
    assert.equal(s.median, 4.5);
    assert.equal(s.percentiles["50"], 4.5);
    // rank 0.9 * 7 = 6.3 -> 7 + 0.3 * 2
    assert.ok(Math.abs(s.percentiles["90"] - 7.6) < 1e-12);
    assert.deepEqual(summarize([], [99]), { mean: 0, median: 0, std: 0, percentiles: { 99: 0 } });
  });

  await t.step("TPOT excludes the first token; one-token outputs have none", () => {
    assert.equal(tpotMs(result({ ttftMs: 100, e2elMs: 400, outputTokens: 4 })), 100);
    assert.equal(tpotMs(result({ ttftMs: 100, e2elMs: 100, outputTokens: 1 })), undefined);
  });

  // Three requests over a 2 s benchmark; the third failed.
  const results = [
    result({
      startMs: 0,
      ttftMs: 100,
      itlMs: [20, 30, 50],
      e2elMs: 200,
      promptTokens: 10,
      outputTokens: 4,
    }),
    result({
      startMs: 150,
      ttftMs: 300,
      itlMs: [100],
      e2elMs: 500,
      promptTokens: 30,
      outputTokens: 3, // one chunk carried two tokens: TPOT uses tokens, ITL uses chunks
    }),
    result({ success: false, startMs: 160, error: "HTTP 500" }),
  ];

  await t.step("throughputs, totals, TTFT/TPOT/ITL/E2EL are exact", () => {
    const m = computeMetrics(results, 2000, { percentiles: [50, 99] });
    assert.equal(m.completed, 2);
    assert.equal(m.failed, 1);
    assert.equal(m.totalInputTokens, 40);
    assert.equal(m.totalOutputTokens, 7);
    assert.equal(m.durationS, 2);
    assert.equal(m.requestThroughput, 1);
    assert.equal(m.outputThroughput, 3.5);
    assert.equal(m.totalTokenThroughput, 23.5);
    assert.equal(m.requestGoodput, undefined);
    assert.equal(m.ttftMs.mean, 200);
    assert.equal(m.ttftMs.median, 200);
    // TPOTs: (200 - 100) / 3 and (500 - 300) / 2
    assert.ok(Math.abs(m.tpotMs.mean - (100 / 3 + 100) / 2) < 1e-9);
    assert.equal(m.itlMs.mean, 50);
    assert.equal(m.itlMs.median, 40);
    assert.equal(m.e2elMs.median, 350);
    assert.equal(m.maxConcurrency, 2);
  });

  await t.step("goodput counts requests that meet every SLO", () => {
    assert.equal(computeMetrics(results, 2000, { slo: { ttftMs: 100 } }).requestGoodput, 0.5);
    assert.equal(computeMetrics(results, 2000, { slo: { ttftMs: 300 } }).requestGoodput, 1);
    assert.equal(
      computeMetrics(results, 2000, { slo: { ttftMs: 300, tpotMs: 50 } }).requestGoodput,
      0.5,
    );
    assert.equal(computeMetrics(results, 2000, { slo: { e2elMs: 199 } }).requestGoodput, 0);
    // A one-token output counts as TPOT 0, as in vLLM.
    const single = [result({ ttftMs: 10, e2elMs: 10, outputTokens: 1 })];
    assert.equal(computeMetrics(single, 1000, { slo: { tpotMs: 1 } }).requestGoodput, 1);
    assert.deepEqual(parseSlo("ttft:500,tpot:50"), { ttftMs: 500, tpotMs: 50 });
    assert.deepEqual(parseSlo("e2el:2000"), { e2elMs: 2000 });
    assert.throws(() => parseSlo("ttft:0"), RangeError);
    assert.throws(() => parseSlo("itl:5"), /ttft, tpot or e2el/);
  });

  await t.step("max concurrency treats intervals as half-open", () => {
    const back = [result({ startMs: 0, e2elMs: 100 }), result({ startMs: 100, e2elMs: 100 })];
    assert.equal(maxConcurrency(back), 1);
    assert.equal(maxConcurrency([...back, result({ startMs: 50, e2elMs: 100 })]), 2);
    assert.throws(() => computeMetrics(back, 0), RangeError);
  });
});

Deno.test("arrivals", async (t) => {
  await t.step("are seeded and nondecreasing", () => {
    const a = arrivalTimesMs(100, { ratePerS: 4, seed: 7 });
    assert.deepEqual(a, arrivalTimesMs(100, { ratePerS: 4, seed: 7 }));
    assert.notDeepEqual(a, arrivalTimesMs(100, { ratePerS: 4, seed: 8 }));
    for (let i = 1; i < a.length; i++) assert.ok(a[i] >= a[i - 1]);
  });

  await t.step("normalized: the last arrival is at n / rate, as vLLM rescales", () => {
    const a = arrivalTimesMs(50, { ratePerS: 5, seed: 1 });
    assert.ok(Math.abs(a[49] - 10_000) < 1e-6);
  });

  // Unnormalized gaps: n = 20000 draws, the sample mean's standard error is std / sqrt(n), that
  // is 0.71% of the mean for Poisson (std = mean) and 1.0% for burstiness 0.5 (std = 1.41 mean).
  // A 5% bound is 5 or more standard errors: a seeded false failure is practically impossible.
  for (const burstiness of [1, 0.5, 4]) {
    await t.step(`mean gap is 1/rate within 5% (burstiness ${burstiness})`, () => {
      const n = 20_000;
      const a = arrivalTimesMs(n, { ratePerS: 8, burstiness, seed: 3, normalize: false });
      const meanGapMs = a[n - 1] / n;
      assert.ok(Math.abs(meanGapMs - 125) / 125 < 0.05, `mean gap ${meanGapMs} ms`);
    });
  }

  await t.step("burstiness sets the gaps' spread: gamma variance is shape × scale²", () => {
    const rng = new Rng(11);
    const n = 20_000;
    const xs = Array.from({ length: n }, () => sampleGamma(rng, 0.5, 2));
    const mean = xs.reduce((a, b) => a + b, 0) / n;
    const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / n;
    assert.ok(Math.abs(mean - 1) < 0.05, `mean ${mean}`);
    assert.ok(Math.abs(variance - 2) < 0.3, `variance ${variance}`);
  });

  await t.step("infinite rate sends all at once; infinite burstiness is a fixed gap", () => {
    assert.deepEqual(arrivalTimesMs(3, { ratePerS: Infinity }), [0, 0, 0]);
    assert.deepEqual(arrivalTimesMs(3, { ratePerS: 2, burstiness: Infinity }), [500, 1000, 1500]);
    assert.throws(() => arrivalTimesMs(3, { ratePerS: 0 }), RangeError);
    assert.throws(() => arrivalTimesMs(3, { ratePerS: 1, burstiness: -1 }), RangeError);
  });
});

Deno.test("workloads", async (t) => {
  await t.step("length distributions parse and stay in range", () => {
    assert.deepEqual(parseLengthDist("128"), { kind: "fixed", value: 128 });
    assert.deepEqual(parseLengthDist("uniform:4:8"), { kind: "uniform", min: 4, max: 8 });
    const ln = parseLengthDist("lognormal:32:1:4:384");
    assert.deepEqual(ln, { kind: "lognormal", median: 32, sigma: 1, min: 4, max: 384 });
    const rng = new Rng(1);
    const u = Array.from({ length: 500 }, () => sampleLength(parseLengthDist("uniform:4:8"), rng));
    assert.deepEqual([...new Set(u)].sort(), [4, 5, 6, 7, 8]);
    for (let i = 0; i < 500; i++) {
      const x = sampleLength(ln, rng);
      assert.ok(Number.isInteger(x) && x >= 4 && x <= 384);
    }
    for (const bad of ["0", "uniform:8:4", "lognormal:32", "zipf:1", "x"]) {
      assert.throws(() => parseLengthDist(bad), RangeError, bad);
    }
  });

  await t.step("shared prefixes: request i starts with prefix i mod K", () => {
    const items = syntheticWorkload({
      numRequests: 6,
      inputLen: parseLengthDist("5"),
      outputLen: parseLengthDist("7"),
      prompt: { format: "ids", idRange: [100, 200] },
      prefixTokens: 20,
      numPrefixes: 2,
      seed: 3,
    });
    const prefix = (i: number) => (items[i].prompt as number[]).slice(0, 20).join();
    assert.equal(prefix(0), prefix(2));
    assert.equal(prefix(1), prefix(5));
    assert.notEqual(prefix(0), prefix(1));
    for (const item of items) {
      assert.equal((item.prompt as number[]).length, 25);
      assert.equal(item.promptTokens, 25);
      assert.equal(item.maxTokens, 7);
      assert.ok((item.prompt as number[]).every((id) => id >= 100 && id < 200));
    }
    const text = syntheticWorkload({
      numRequests: 2,
      inputLen: parseLengthDist("10"),
      outputLen: parseLengthDist("1"),
      prompt: { format: "text" },
      seed: 1,
    });
    assert.equal((text[0].prompt as string).split(" ").length, 10);
  });

  await t.step("JSONL: reads prompts and max_tokens, skips blank lines", () => {
    const items = parseJsonlWorkload(
      '{"prompt": "hello there", "max_tokens": 8}\n\n{"prompt": [1, 2, 3], "max_tokens": 2}\n',
    );
    assert.deepEqual(items, [
      { prompt: "hello there", maxTokens: 8, promptTokens: 2 },
      { prompt: [1, 2, 3], maxTokens: 2, promptTokens: 3 },
    ]);
  });

  await t.step("JSONL: a bad line is a clear error naming the file and line", () => {
    const cases: [string, RegExp][] = [
      [
        '{"prompt": "a", "max_tokens": 1}\n{"prompt": "b", max_tokens: 1}',
        /w\.jsonl:2: .*invalid JSON/,
      ],
      ["[1, 2]", /w\.jsonl:1: expected a JSON object/],
      ['{"max_tokens": 3}', /w\.jsonl:1: expected "prompt" .* found nothing/],
      ['{"prompt": "", "max_tokens": 3}', /"prompt" to be a non-empty string/],
      ['{"prompt": [1, -2], "max_tokens": 3}', /list of token ids/],
      ['{"prompt": "x", "max_tokens": 0}', /w\.jsonl:1: expected "max_tokens" .* found 0/],
      ['{"prompt": "x", "max_tokens": "5"}', /"max_tokens" to be a positive integer, found "5"/],
      ["\n\n", /w\.jsonl: expected at least one request/],
    ];
    for (const [text, message] of cases) {
      assert.throws(() => parseJsonlWorkload(text, "w.jsonl"), (e: unknown) => {
        assert.ok(e instanceof WorkloadFileError);
        assert.match(e.message, message);
        return true;
      });
    }
  });
});

// --- the client against a fake OpenAI-compatible server

/**
 * A fetch that answers like a streaming OpenAI server, without a socket: n tokens come in n - 1
 * chunks (two in the last), then a finish-only chunk, usage and [DONE].
 */
function fakeServer(): { fetch: typeof fetch; bodies: unknown[] } {
  const bodies: unknown[] = [];
  const handler = async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname;
    if (path === "/v1/models") return Response.json({ data: [{ id: "fake" }] });
    const body = await req.json();
    bodies.push(body);
    if (body.max_tokens === 13) {
      return Response.json({ error: { message: "too long" } }, { status: 400 });
    }
    const isChat = path === "/v1/chat/completions";
    const n = (isChat ? body.max_completion_tokens : body.max_tokens) as number;
    const enc = new TextEncoder();
    const event = (data: unknown) => enc.encode(`data: ${JSON.stringify(data)}\n\n`);
    const choice = (text: string, finish: string | null = null) =>
      isChat
        ? { index: 0, delta: { content: text }, finish_reason: finish }
        : { index: 0, text, finish_reason: finish };
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        if (isChat) {
          controller.enqueue(event({ choices: [{ index: 0, delta: { role: "assistant" } }] }));
        }
        controller.enqueue(enc.encode(": ping\n\n"));
        // n tokens in n - 1 chunks: the last chunk carries two.
        for (let i = 0; i < n - 1; i++) {
          const bytes = event({ choices: [choice(i === n - 2 ? "ab" : "a")] });
          // Split an event across writes to exercise the parser's buffering.
          controller.enqueue(bytes.subarray(0, 7));
          await new Promise((r) => setTimeout(r, 1));
          controller.enqueue(bytes.subarray(7));
        }
        controller.enqueue(event({ choices: [choice("", "length")] }));
        controller.enqueue(
          event({ choices: [], usage: { prompt_tokens: 42, completion_tokens: n } }),
        );
        controller.enqueue(enc.encode("data: [DONE]\n\n"));
        controller.close();
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  };
  return {
    fetch: (input, init) => handler(new Request(input, init)),
    bodies,
  };
}

Deno.test("client and runner against a fake server", async (t) => {
  const server = fakeServer();
  const client = {
    baseUrl: "http://fake.invalid",
    api: "completions" as const,
    model: "fake",
    ignoreEos: true,
    fetch: server.fetch,
  };
  await t.step("SSE parser joins split events and skips comments", () => {
    const p = new SseParser();
    assert.deepEqual(p.push('data: {"a"'), []);
    assert.deepEqual(p.push(": 1}\n\n: ping\n\ndata: [DONE]\r\n\r\n"), ['{"a": 1}', "[DONE]"]);
  });

  await t.step("request body streams with usage and ignore_eos", () => {
    const item = { prompt: [1, 2], maxTokens: 3, promptTokens: 2 };
    assert.deepEqual(requestBody(item, client), {
      model: "fake",
      stream: true,
      stream_options: { include_usage: true },
      temperature: 0,
      prompt: [1, 2],
      max_tokens: 3,
      ignore_eos: true,
    });
    assert.throws(() => requestBody(item, { ...client, api: "chat" }), TypeError);
  });

  await t.step("completions: one ITL per chunk gap, tokens from usage", async () => {
    const r = await sendRequest({ prompt: "hi", maxTokens: 5, promptTokens: 1 }, client);
    assert.equal(r.success, true, r.error);
    assert.equal(r.outputTokens, 5);
    assert.equal(r.promptTokens, 42);
    assert.equal(r.itlMs.length, 3, "4 token chunks; the finish-only chunk is not a token");
    assert.equal(r.text, "aaaab");
    assert.ok(r.e2elMs >= r.ttftMs);
  });

  await t.step("chat: the role-only chunk is not the first token", async () => {
    const r = await sendRequest({ prompt: "hi", maxTokens: 3, promptTokens: 1 }, {
      ...client,
      api: "chat",
    });
    assert.equal(r.success, true, r.error);
    assert.equal(r.itlMs.length, 1);
    assert.equal(r.text, "aab");
    assert.deepEqual((server.bodies.at(-1) as { messages: unknown }).messages, [
      { role: "user", content: "hi" },
    ]);
  });

  await t.step("an HTTP error is a failed request with the server's message", async () => {
    const r = await sendRequest({ prompt: "hi", maxTokens: 13, promptTokens: 1 }, client);
    assert.equal(r.success, false);
    assert.match(r.error!, /HTTP 400: .*too long/);
  });

  await t.step("runLoad at a fixed concurrency completes every request", async () => {
    const items = syntheticWorkload({
      numRequests: 8,
      inputLen: parseLengthDist("4"),
      outputLen: parseLengthDist("uniform:2:6"),
      prompt: { format: "text" },
      seed: 2,
    });
    const point = await runLoad(items, client, { maxConcurrency: 3, slo: { ttftMs: 1e9 } });
    const m = point.metrics;
    assert.equal(m.completed, 8);
    assert.equal(m.failed, 0);
    assert.equal(m.totalOutputTokens, items.reduce((n, i) => n + i.maxTokens, 0));
    assert.equal(m.totalInputTokens, 8 * 42);
    assert.ok(m.maxConcurrency <= 3);
    assert.equal(m.requestGoodput, m.requestThroughput);
    assert.equal(point.errors.length, 0);
  });
});

// --- SVG

/** A minimal XML well-formedness check: balanced tags, quoted attributes, escaped text. */
function parseXml(xml: string): { root: string; numElements: number; texts: string[] } {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, "");
  const stack: string[] = [];
  const texts: string[] = [];
  let root = "";
  let numElements = 0;
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|([^<]+)/y;
  let m: RegExpExecArray | null;
  let pos = 0;
  while (pos < body.length) {
    tag.lastIndex = pos;
    m = tag.exec(body);
    if (m === null) throw new SyntaxError(`Malformed XML at ${pos}: ${body.slice(pos, pos + 40)}`);
    pos = tag.lastIndex;
    const [, close, name, , selfClose, text] = m;
    if (text !== undefined) {
      if (/&(?!(amp|lt|gt|quot|apos);)/.test(text)) throw new SyntaxError(`Bad entity: ${text}`);
      if (stack.length === 0 && text.trim() !== "") throw new SyntaxError("Text outside root");
      if (text.trim()) texts.push(text);
      continue;
    }
    if (close) {
      if (stack.pop() !== name) throw new SyntaxError(`Unbalanced </${name}>`);
      continue;
    }
    if (stack.length === 0) {
      if (root) throw new SyntaxError("Two root elements");
      root = name;
    }
    numElements++;
    if (!selfClose) stack.push(name);
  }
  if (stack.length) throw new SyntaxError(`Unclosed <${stack.join("><")}>`);
  return { root, numElements, texts };
}

Deno.test("svg chart", async (t) => {
  await t.step("nice ticks cover the maximum in 1/2/5 steps", () => {
    assert.deepEqual(niceTicks(9.3), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(niceTicks(0.42), [0, 0.1, 0.2, 0.3, 0.4, 0.5]);
    assert.deepEqual(niceTicks(0), [0, 1]);
  });

  await t.step("is well-formed XML and escapes labels", () => {
    const svg = lineChartSvg({
      title: 'TTFT <in-flight> & "static"',
      caption: ["deno task bench:serve --url http://x --rates 1,2 --goodput 'ttft:5'"],
      panels: [{
        title: "a < b",
        xLabel: "req/s",
        yLabel: "ms",
        xLog: true,
        series: [
          { name: "one & two", points: [[1, 5], [2, 7], [4, NaN], [8, 3]] },
          { name: "p99", dashed: true, points: [[1, 9]] },
          { name: "empty", points: [] },
        ],
      }, { title: "empty panel", xLabel: "x", yLabel: "y", series: [] }],
    });
    const doc = parseXml(svg);
    assert.equal(doc.root, "svg");
    assert.ok(doc.numElements > 20);
    assert.ok(doc.texts.includes("TTFT &lt;in-flight&gt; &amp; &quot;static&quot;"));
    assert.ok(!svg.includes("NaN"));
    assert.equal(escapeXml(`<&>"'`), "&lt;&amp;&gt;&quot;&apos;");
  });

  await t.step("a sweep chart of two runs parses and has one line per series", () => {
    const metrics = (x: number) =>
      computeMetrics([result({ ttftMs: x, e2elMs: 3 * x, outputTokens: 3, itlMs: [x, x] })], 1000);
    const runs = ["in-flight", "static"].map((label, i) => ({
      label,
      loadKind: "rate" as const,
      points: [1, 2, 4, 8, Infinity].map((load) => ({ load, metrics: metrics(load * (i + 1)) })),
    }));
    const svg = sweepChart(runs, "sweep", ["cmd"]);
    parseXml(svg);
    // TTFT and TPOT: median + p99 per run; throughput: one per run.
    assert.equal(svg.match(/<polyline/g)?.length, 2 * 2 + 2 * 2 + 2);
  });
});
