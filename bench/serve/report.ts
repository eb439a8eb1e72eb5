// Reports of a load sweep: a vLLM-style text summary, a Markdown table, and a hand-written SVG line
// chart (latency and throughput against offered load) that opens in any browser.
import type { BenchmarkMetrics } from "./metrics.ts";

/** One sweep: the same workload at several loads, against one server configuration. */
export interface SweepRun {
  label: string;
  /** "rate": x is requests/s offered; "concurrency": x is the cap on requests in flight. */
  loadKind: "rate" | "concurrency";
  /** machineLoad: the 1-minute load average when the point finished (noisy shared machines). */
  points: { load: number; metrics: BenchmarkMetrics; machineLoad?: number }[];
  /** The command line that produced it. */
  command?: string;
}

const f = (x: number | undefined, digits = 1) =>
  x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits);
const loadText = (x: number) => (x === Infinity ? "inf" : String(x));

/** The block `vllm bench serve` prints, for one point. */
export function textSummary(m: BenchmarkMetrics, pcts: readonly number[] = [50, 90, 99]): string {
  const line = (k: string, v: string) => `${k.padEnd(40)}${v}`;
  const out = [
    line("Successful requests:", String(m.completed)),
    line("Failed requests:", String(m.failed)),
    line("Benchmark duration (s):", f(m.durationS, 2)),
    line("Total input tokens:", String(m.totalInputTokens)),
    line("Total generated tokens:", String(m.totalOutputTokens)),
    line("Request throughput (req/s):", f(m.requestThroughput, 2)),
  ];
  if (m.requestGoodput !== undefined) {
    out.push(line("Request goodput (req/s):", f(m.requestGoodput, 2)));
  }
  out.push(
    line("Output token throughput (tok/s):", f(m.outputThroughput, 2)),
    line("Total token throughput (tok/s):", f(m.totalTokenThroughput, 2)),
    line("Max concurrent requests:", String(m.maxConcurrency)),
  );
  const block = (title: string, name: string, s: BenchmarkMetrics["ttftMs"]) => {
    out.push(
      title,
      line(`Mean ${name} (ms):`, f(s.mean, 2)),
      line(`Median ${name} (ms):`, f(s.median, 2)),
    );
    for (const p of pcts) out.push(line(`P${p} ${name} (ms):`, f(s.percentiles[String(p)], 2)));
  };
  block("---------------Time to First Token----------------", "TTFT", m.ttftMs);
  block("-----Time per Output Token (excl. 1st token)------", "TPOT", m.tpotMs);
  block("---------------Inter-token Latency----------------", "ITL", m.itlMs);
  block("----------------End-to-end Latency----------------", "E2EL", m.e2elMs);
  return out.join("\n");
}

/** One row per run and load: throughput and latency percentiles. */
export function markdownTable(runs: readonly SweepRun[]): string {
  const rows = [
    "| run | load | req/s | goodput req/s | output tok/s | total tok/s | TTFT median ms | " +
    "TTFT p99 ms | TPOT median ms | TPOT p99 ms | ITL p99 ms | E2EL median ms | failed | " +
    "machine load |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const run of runs) {
    for (const { load, metrics: m, machineLoad } of run.points) {
      const what = run.loadKind === "rate" ? `${loadText(load)} req/s` : `${load} in flight`;
      rows.push(
        `| ${run.label} | ${what} | ${f(m.requestThroughput, 2)} | ${f(m.requestGoodput, 2)} | ${
          f(m.outputThroughput)
        } | ${f(m.totalTokenThroughput)} | ${f(m.ttftMs.median)} | ${
          f(m.ttftMs.percentiles["99"])
        } | ${f(m.tpotMs.median)} | ${f(m.tpotMs.percentiles["99"])} | ${
          f(m.itlMs.percentiles["99"])
        } | ${f(m.e2elMs.median)} | ${m.failed} | ${f(machineLoad, 2)} |`,
      );
    }
  }
  return rows.join("\n");
}

// --- SVG

export interface Series {
  name: string;
  points: [number, number][];
  color?: string;
  dashed?: boolean;
}

export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Log-scale x (base 2 ticks) suits rates or concurrencies that double. Default linear. */
  xLog?: boolean;
}

export interface ChartSpec {
  title: string;
  /** Lines under the panels: the command, the machine, what was measured. */
  caption?: string[];
  panels: Panel[];
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];

export function escapeXml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => `&${{ "&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos" }[c]};`,
  );
}

/** Round tick values covering [0, max]: steps of 1, 2 or 5 × 10^k. */
export function niceTicks(max: number, target = 5): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return [0, 1];
  const raw = max / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((s) => s * mag).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let t = 0; t < max + step * 0.999; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

const num = (x: number) => Number(x.toFixed(1)).toString();
const tickText = (x: number) =>
  Math.abs(x) >= 10000 ? `${num(x / 1000)}k` : Number(x.toPrecision(4)).toString();

function panelSvg(panel: Panel, x0: number, y0: number, w: number, h: number): string[] {
  const left = x0 + 58;
  const right = x0 + w - 12;
  const top = y0 + 30;
  const bottom = y0 + h - 44;
  const all = panel.series.flatMap((s) => s.points).filter(([x, y]) =>
    Number.isFinite(x) && Number.isFinite(y)
  );
  const xs = all.map(([x]) => x);
  const yTicks = niceTicks(Math.max(0, ...all.map(([, y]) => y)));
  const yMax = yTicks[yTicks.length - 1];
  const xLog = panel.xLog === true && xs.length > 0 && Math.min(...xs) > 0;
  const tx = (x: number) => (xLog ? Math.log2(x) : x);
  const xMin = xs.length ? tx(Math.min(...xs)) : 0;
  const xMaxRaw = xs.length ? tx(Math.max(...xs)) : 1;
  const xMax = xMaxRaw > xMin ? xMaxRaw : xMin + 1;
  const px = (x: number) => left + ((tx(x) - xMin) / (xMax - xMin)) * (right - left);
  const py = (y: number) => bottom - (y / yMax) * (bottom - top);
  const out: string[] = [
    `<text x="${num((left + right) / 2)}" y="${y0 + 18}" text-anchor="middle" font-weight="bold">${
      escapeXml(panel.title)
    }</text>`,
    `<rect x="${left}" y="${top}" width="${num(right - left)}" height="${
      num(bottom - top)
    }" fill="none" stroke="#999"/>`,
  ];
  for (const t of yTicks) {
    const y = num(py(t));
    out.push(
      `<line x1="${left}" y1="${y}" x2="${right}" y2="${y}" stroke="#e5e5e5"/>`,
      `<text x="${left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${
        tickText(t)
      }</text>`,
    );
  }
  for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
    out.push(
      `<line x1="${num(px(x))}" y1="${bottom}" x2="${num(px(x))}" y2="${
        bottom + 4
      }" stroke="#999"/>`,
      `<text x="${num(px(x))}" y="${bottom + 16}" text-anchor="middle">${tickText(x)}</text>`,
    );
  }
  out.push(
    `<text x="${num((left + right) / 2)}" y="${bottom + 34}" text-anchor="middle">${
      escapeXml(panel.xLabel)
    }</text>`,
    `<text x="${x0 + 14}" y="${
      num((top + bottom) / 2)
    }" text-anchor="middle" transform="rotate(-90 ${x0 + 14} ${num((top + bottom) / 2)})">${
      escapeXml(panel.yLabel)
    }</text>`,
  );
  panel.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
      .sort((a, b) => a[0] - b[0]);
    const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    if (pts.length > 1) {
      out.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${
          pts.map(([x, y]) => `${num(px(x))},${num(py(y))}`).join(" ")
        }"/>`,
      );
    }
    for (const [x, y] of pts) {
      out.push(`<circle cx="${num(px(x))}" cy="${num(py(y))}" r="3" fill="${color}"/>`);
    }
    // Legend, top left inside the plot.
    const ly = top + 14 + 16 * i;
    out.push(
      `<line x1="${left + 8}" y1="${ly}" x2="${
        left + 30
      }" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${left + 36}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`,
    );
  });
  return out;
}

/** Breaks a line at spaces into pieces of at most `width` characters (longer words stay whole). */
export function wrapText(line: string, width: number): string[] {
  const out: string[] = [];
  let current = "";
  for (const word of line.split(" ")) {
    if (current !== "" && current.length + 1 + word.length > width) {
      out.push(current);
      current = "  " + word;
    } else current = current === "" ? word : `${current} ${word}`;
  }
  out.push(current);
  return out;
}

/** A row of line-chart panels with a title and a caption, as a standalone SVG document. */
export function lineChartSvg(spec: ChartSpec): string {
  const panelW = 380;
  const panelH = 320;
  const width = panelW * spec.panels.length + 20;
  // About 6.2 px per character at font-size 11.
  const caption = (spec.caption ?? []).flatMap((l) => wrapText(l, Math.floor((width - 28) / 6.2)));
  const height = 36 + panelH + 18 * caption.length + 16;
  const body: string[] = [
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${
      escapeXml(spec.title)
    }</text>`,
  ];
  spec.panels.forEach((p, i) => body.push(...panelSvg(p, 10 + i * panelW, 32, panelW, panelH)));
  caption.forEach((line, i) => {
    body.push(
      `<text x="14" y="${36 + panelH + 14 + 18 * i}" font-size="11" fill="#444">${
        escapeXml(line)
      }</text>`,
    );
  });
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    ...body.map((l) => `  ${l}`),
    `</svg>`,
    "",
  ].join("\n");
}

/** The standard sweep chart: TTFT, TPOT (median solid, p99 dashed) and output tok/s by load. */
export function sweepChart(runs: readonly SweepRun[], title: string, caption: string[]): string {
  const kind = runs[0]?.loadKind ?? "rate";
  const xLabel = kind === "rate" ? "offered load (requests/s)" : "max requests in flight";
  const finite = (run: SweepRun) => run.points.filter((p) => Number.isFinite(p.load));
  const latency = (pick: (m: BenchmarkMetrics) => BenchmarkMetrics["ttftMs"]): Series[] =>
    runs.flatMap((run, i) => [
      {
        name: `${run.label} median`,
        color: PALETTE[i % PALETTE.length],
        points: finite(run).map((p) => [p.load, pick(p.metrics).median] as [number, number]),
      },
      {
        name: `${run.label} p99`,
        color: PALETTE[i % PALETTE.length],
        dashed: true,
        points: finite(run).map((p) =>
          [p.load, pick(p.metrics).percentiles["99"]] as [number, number]
        ),
      },
    ]);
  const xLog = runs.some((run) => {
    const xs = finite(run).map((p) => p.load);
    return xs.length > 2 && Math.min(...xs) > 0 && Math.max(...xs) / Math.min(...xs) >= 8;
  });
  return lineChartSvg({
    title,
    caption,
    panels: [
      {
        title: "Time to first token",
        xLabel,
        yLabel: "ms",
        xLog,
        series: latency((m) => m.ttftMs),
      },
      {
        title: "Time per output token",
        xLabel,
        yLabel: "ms",
        xLog,
        series: latency((m) => m.tpotMs),
      },
      {
        title: "Output throughput",
        xLabel,
        yLabel: "tokens/s",
        xLog,
        series: runs.map((run, i) => ({
          name: run.label,
          color: PALETTE[i % PALETTE.length],
          points: finite(run).map((p) => [p.load, p.metrics.outputThroughput] as [number, number]),
        })),
      },
    ],
  });
}
