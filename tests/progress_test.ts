// The CLI's progress reporter (batch, distill-export): whole lines in logs, one redrawn line on a
// terminal. The log interval is set to 0 so every update draws, with no dependence on the clock.
import assert from "node:assert/strict";
import { Progress } from "../src/cli/progress.ts";

function sink(isTty: boolean) {
  const written: string[] = [];
  const decoder = new TextDecoder();
  return {
    written,
    out: {
      writeSync(bytes: Uint8Array) {
        written.push(decoder.decode(bytes));
        return bytes.length;
      },
      isTerminal: () => isTty,
    },
  };
}

Deno.test("progress in logs: one whole line per draw, counts, percent, note", () => {
  const { written, out } = sink(false);
  const progress = new Progress(200, { unit: "lines", out, logEverySeconds: 0 });
  progress.update(50, "1 errors");
  progress.update(200, "2 errors");
  progress.finish();
  assert.equal(written.length, 3);
  for (const line of written) {
    assert.ok(line.endsWith("\n") && !line.includes("\r"), JSON.stringify(line));
    assert.equal(line.indexOf("\n"), line.length - 1, "one line per write");
  }
  assert.match(
    written[0],
    /^50\/200 lines \(25\.0%\), [\d.]+ lines\/s, \d+ s elapsed.*, 1 errors\n$/,
  );
  assert.match(written[2], /^200\/200 lines \(100\.0%\), .*, 2 errors\n$/);
  // Nothing is left to do: no time-left estimate on the last line.
  assert.ok(!written[2].includes("left"), written[2]);
});

Deno.test("progress in logs waits for the interval between lines", () => {
  const { written, out } = sink(false);
  // An interval far longer than the test: only the first update and finish() draw.
  const progress = new Progress(10, { unit: "texts", out, logEverySeconds: 3600 });
  for (let i = 1; i <= 10; i++) progress.update(i);
  progress.finish();
  assert.equal(written.length, 2);
  assert.match(written[0], /^1\/10 texts \(10\.0%\)/);
  assert.match(written[1], /^10\/10 texts \(100\.0%\)/);
});

Deno.test("progress on a terminal: a redrawn line, ended by finish()", () => {
  const { written, out } = sink(true);
  const progress = new Progress(0, { unit: "lines", out });
  progress.update(0);
  progress.finish();
  assert.ok(written.slice(0, -1).every((w) => w.startsWith("\r\x1b[2K") && !w.includes("\n")));
  assert.equal(written.at(-1), "\n");
  // Nothing to do (a resumed batch with every line done) reads as complete, not as NaN.
  assert.match(written[0], /0\/0 lines \(100\.0%\)/);
});
