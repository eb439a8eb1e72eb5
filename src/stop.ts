// Stop strings over streamed text: hold back any tail that could still become a stop string, so no
// part of a stop string is ever emitted, and cut the text where one appears.

export class StopStringMatcher {
  readonly stops: string[];
  #pending = "";
  #maxStopLength: number;

  constructor(stops: string[]) {
    for (const stop of stops) {
      if (typeof stop !== "string" || stop.length === 0) {
        throw new RangeError(`Stop strings must be non-empty strings, got ${JSON.stringify(stop)}`);
      }
    }
    this.stops = stops;
    this.#maxStopLength = Math.max(0, ...stops.map((s) => s.length));
  }

  /**
   * Adds decoded text. Returns the text that is now safe to emit and whether a stop string
   * matched (then the returned text ends just before it and nothing more should be fed).
   */
  push(text: string): { text: string; stopped: boolean; stop?: string } {
    if (this.stops.length === 0) return { text, stopped: false };
    this.#pending += text;
    let cut = -1;
    let matched: string | undefined;
    for (const stop of this.stops) {
      const at = this.#pending.indexOf(stop);
      if (at !== -1 && (cut === -1 || at < cut)) {
        cut = at;
        matched = stop;
      }
    }
    if (cut !== -1) {
      const out = this.#pending.slice(0, cut);
      this.#pending = "";
      return { text: out, stopped: true, stop: matched };
    }
    // Keep the longest suffix that is a prefix of some stop string.
    let hold = 0;
    const maxHold = Math.min(this.#maxStopLength - 1, this.#pending.length);
    for (let len = maxHold; len > 0; len--) {
      const tail = this.#pending.slice(this.#pending.length - len);
      if (this.stops.some((stop) => stop.startsWith(tail))) {
        hold = len;
        break;
      }
    }
    const out = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return { text: out, stopped: false };
  }

  /** Text still held back at the end of generation (no stop string came). */
  flush(): string {
    const out = this.#pending;
    this.#pending = "";
    return out;
  }
}
