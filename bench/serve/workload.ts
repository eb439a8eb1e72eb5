// What the load generator sends: prompt and output lengths drawn from distributions, prompts that
// may share a long prefix, or requests read from a JSONL file.
import { Rng, sampleNormal } from "./arrivals.ts";

/** One request to send: text or token ids, and the number of tokens to ask for. */
export interface WorkItem {
  prompt: string | number[];
  maxTokens: number;
  /** The client's estimate of the prompt's length in tokens (the server's usage wins). */
  promptTokens: number;
}

export type LengthDist =
  | { kind: "fixed"; value: number }
  | { kind: "uniform"; min: number; max: number }
  | { kind: "lognormal"; median: number; sigma: number; min: number; max: number };

/**
 * "128" or "fixed:128"; "uniform:MIN:MAX" (inclusive); "lognormal:MEDIAN:SIGMA[:MIN:MAX]"
 * (clipped to [MIN, MAX], default [1, 8 × MEDIAN]).
 */
export function parseLengthDist(text: string): LengthDist {
  const parts = text.trim().split(":");
  const nums = parts.slice(1).map(Number);
  const bad = () =>
    new RangeError(
      `Expected a length like "128", "uniform:64:256" or "lognormal:128:0.5[:MIN:MAX]", got "${text}"`,
    );
  const posInt = (n: number) => Number.isSafeInteger(n) && n >= 1;
  if (parts.length === 1) parts.unshift("fixed"), nums.unshift(Number(text));
  if (parts[0] === "fixed" && nums.length === 1 && posInt(nums[0])) {
    return { kind: "fixed", value: nums[0] };
  }
  if (parts[0] === "uniform" && nums.length === 2 && nums.every(posInt) && nums[0] <= nums[1]) {
    return { kind: "uniform", min: nums[0], max: nums[1] };
  }
  if (parts[0] === "lognormal" && (nums.length === 2 || nums.length === 4)) {
    const [median, sigma, min = 1, max = 8 * median] = nums;
    if (median > 0 && sigma >= 0 && posInt(min) && posInt(max) && min <= max) {
      return { kind: "lognormal", median, sigma, min, max };
    }
  }
  throw bad();
}

export function sampleLength(dist: LengthDist, rng: Rng): number {
  switch (dist.kind) {
    case "fixed":
      return dist.value;
    case "uniform":
      return dist.min + Math.floor(rng.next() * (dist.max - dist.min + 1));
    case "lognormal": {
      const x = Math.round(dist.median * Math.exp(dist.sigma * sampleNormal(rng)));
      return Math.min(dist.max, Math.max(dist.min, x));
    }
  }
}

// Common words that byte-level BPE vocabularies (the synthetic ones included) hold as one token
// each with their leading space, so a text prompt of N words is close to N tokens.
const WORDS = (
  "the a little girl named she loved to play outside in park one day saw big red ball under " +
  "tree can I with it asked her mom yes you said they played together until sun went down and " +
  "were happy quick brown fox jumps over lazy dog what we see time there was"
).split(" ");

export type PromptFormat = "text" | "ids";

export interface PromptOptions {
  format: PromptFormat;
  /** Token ids are drawn from [idMin, idMax); pick a range without special tokens. */
  idRange?: [number, number];
}

/** A pseudo-random prompt of about `numTokens` tokens (exactly, for token ids). */
export function randomPrompt(
  numTokens: number,
  rng: Rng,
  options: PromptOptions,
): WorkItem["prompt"] {
  if (options.format === "ids") {
    const [lo, hi] = options.idRange ?? [1000, 10000];
    return Array.from({ length: numTokens }, () => lo + Math.floor(rng.next() * (hi - lo)));
  }
  const words: string[] = [];
  for (let i = 0; i < numTokens; i++) words.push(WORDS[Math.floor(rng.next() * WORDS.length)]);
  return words.join(" ");
}

function joinPrompts(a: WorkItem["prompt"], b: WorkItem["prompt"]): WorkItem["prompt"] {
  if (typeof a === "string" && typeof b === "string") return `${a} ${b}`;
  if (Array.isArray(a) && Array.isArray(b)) return [...a, ...b];
  throw new TypeError("Expected both prompt parts in the same format");
}

export interface SyntheticOptions {
  numRequests: number;
  inputLen: LengthDist;
  outputLen: LengthDist;
  prompt: PromptOptions;
  /** Every prompt starts with one of `numPrefixes` shared prefixes of this many tokens. */
  prefixTokens?: number;
  numPrefixes?: number;
  seed?: number;
  /**
   * Which draw of the per-request parts (lengths, prompts, the suffixes after a shared prefix).
   * Give each load level and each repeat its own index: a server with prefix caching would
   * otherwise serve a later level's prompts from the KV an earlier level left. The shared
   * prefixes depend on `seed` alone, so they stay shared across draws. Default 0.
   */
  drawIndex?: number;
}

/**
 * A 32-bit seed for draw `drawIndex` of `seed`: distinct for distinct indices (an odd multiply
 * and murmur3's finalizer are both bijections), and far apart, unlike `seed + drawIndex`, whose
 * streams from the counter-based Rng would overlap.
 */
export function drawSeed(seed: number, drawIndex: number): number {
  if (!Number.isSafeInteger(drawIndex) || drawIndex < 0) {
    throw new RangeError(`Expected a non-negative integer draw index, got ${drawIndex}`);
  }
  let h = (seed ^ Math.imul(drawIndex + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The draw index of a sweep's level `levelIndex` in repeat `repeat`; 0 is the warm-up's. */
export function levelDrawIndex(levelIndex: number, repeat: number, numLevels: number): number {
  return 1 + repeat * numLevels + levelIndex;
}

/**
 * Requests with drawn lengths. With a shared prefix, request i uses prefix i mod numPrefixes and
 * inputLen sets the length of its own suffix.
 */
export function syntheticWorkload(options: SyntheticOptions): WorkItem[] {
  const seed = options.seed ?? 0;
  const prefixRng = new Rng(seed);
  const rng = new Rng(drawSeed(seed, options.drawIndex ?? 0));
  const prefixTokens = options.prefixTokens ?? 0;
  const numPrefixes = options.numPrefixes ?? 1;
  if (!Number.isSafeInteger(numPrefixes) || numPrefixes < 1) {
    throw new RangeError(`Expected a positive number of prefixes, got ${numPrefixes}`);
  }
  const prefixes = prefixTokens > 0
    ? Array.from(
      { length: numPrefixes },
      () => randomPrompt(prefixTokens, prefixRng, options.prompt),
    )
    : [];
  return Array.from({ length: options.numRequests }, (_, i) => {
    const inputLen = sampleLength(options.inputLen, rng);
    const own = randomPrompt(inputLen, rng, options.prompt);
    return {
      prompt: prefixes.length ? joinPrompts(prefixes[i % prefixes.length], own) : own,
      maxTokens: sampleLength(options.outputLen, rng),
      promptTokens: prefixTokens + inputLen,
    };
  });
}

/** A JSONL workload line that is not `{"prompt": string | int[], "max_tokens": int >= 1}`. */
export class WorkloadFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WorkloadFileError";
  }
}

/**
 * Parses JSONL: one `{"prompt": "..." | [ids], "max_tokens": N}` per line; blank lines are
 * skipped. `source` names the file in error messages, which give the 1-based line number.
 */
export function parseJsonlWorkload(text: string, source = "workload"): WorkItem[] {
  const items: WorkItem[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const where = `${source}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new WorkloadFileError(
        `${where}: expected a JSON object, found invalid JSON (${
          error instanceof Error ? error.message : error
        })`,
      );
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new WorkloadFileError(`${where}: expected a JSON object, found ${line.slice(0, 80)}`);
    }
    const { prompt, max_tokens: maxTokens } = value as Record<string, unknown>;
    const isIds = Array.isArray(prompt) && prompt.length > 0 &&
      prompt.every((t) => Number.isSafeInteger(t) && t >= 0);
    if (!(typeof prompt === "string" && prompt !== "") && !isIds) {
      throw new WorkloadFileError(
        `${where}: expected "prompt" to be a non-empty string or list of token ids, found ${
          JSON.stringify(prompt) ?? "nothing"
        }`.slice(0, 200),
      );
    }
    if (!Number.isSafeInteger(maxTokens) || (maxTokens as number) < 1) {
      throw new WorkloadFileError(
        `${where}: expected "max_tokens" to be a positive integer, found ${
          JSON.stringify(maxTokens) ?? "nothing"
        }`,
      );
    }
    items.push({
      prompt: prompt as WorkItem["prompt"],
      maxTokens: maxTokens as number,
      // Without a tokenizer a word is the best guess; the server's usage replaces it.
      promptTokens: typeof prompt === "string" ? prompt.split(/\s+/).length : prompt.length,
    });
  }
  if (items.length === 0) throw new WorkloadFileError(`${source}: expected at least one request`);
  return items;
}
