// Progress of long CLI work on stderr: one redrawn line on a terminal, a line every few seconds
// in logs (a redrawn line would be one endless line in a journal).
const encoder = new TextEncoder();

export interface ProgressOptions {
  /** What is counted, e.g. "lines" or "texts". */
  unit: string;
  /** Where it goes; default stderr. */
  out?: { writeSync(bytes: Uint8Array): number; isTerminal(): boolean };
  /** Seconds between lines when not on a terminal. Default 5. */
  logEverySeconds?: number;
}

export class Progress {
  readonly #total: number;
  readonly #unit: string;
  readonly #out: NonNullable<ProgressOptions["out"]>;
  readonly #isTty: boolean;
  readonly #everyMs: number;
  readonly #startMs = performance.now();
  #lastDrawMs = -Infinity;
  #done = 0;
  #note = "";

  /** `total` counts what this run has to do (lines done before a resume left out). */
  constructor(total: number, options: ProgressOptions) {
    this.#total = total;
    this.#unit = options.unit;
    this.#out = options.out ?? Deno.stderr;
    this.#isTty = this.#out.isTerminal();
    this.#everyMs = (options.logEverySeconds ?? 5) * 1000;
  }

  /** Sets the count done so far and an optional note (e.g. "3 errors"); redraws when due. */
  update(done: number, note = ""): void {
    this.#done = done;
    this.#note = note;
    const now = performance.now();
    if (now - this.#lastDrawMs < (this.#isTty ? 100 : this.#everyMs)) return;
    this.#lastDrawMs = now;
    this.#draw(now);
  }

  /** The final line; on a terminal it also ends the redrawn one. */
  finish(): void {
    this.#draw(performance.now());
    if (this.#isTty) this.#out.writeSync(encoder.encode("\n"));
  }

  #draw(now: number): void {
    const seconds = (now - this.#startMs) / 1000;
    const rate = seconds > 0 ? this.#done / seconds : 0;
    const left = rate > 0 ? (this.#total - this.#done) / rate : NaN;
    const percent = this.#total > 0 ? (100 * this.#done) / this.#total : 100;
    const text = `${this.#done}/${this.#total} ${this.#unit} (${percent.toFixed(1)}%), ` +
      `${rate.toFixed(1)} ${this.#unit}/s, ${seconds.toFixed(0)} s elapsed` +
      (Number.isFinite(left) && this.#done < this.#total ? `, ~${left.toFixed(0)} s left` : "") +
      (this.#note ? `, ${this.#note}` : "");
    this.#out.writeSync(encoder.encode(this.#isTty ? `\r\x1b[2K${text}` : `${text}\n`));
  }
}
