// best_of: best_of samples per prompt are generated and the n with the highest cumulative logprob
// are returned, as vLLM did (and OpenAI's legacy completions). Not with streaming: which samples
// win is known only when all have ended.
import type { RequestOutput } from "../engine/request.ts";
import { ApiError } from "./errors.ts";
import type { ResponseShape, RunEvent } from "./generation.ts";

/** The number of samples to generate for `n` choices; a 400 for a best_of that cannot be served. */
export function numSamples(
  req: { n?: number | null; best_of?: number | null; stream?: boolean | null },
): number {
  const n = req.n ?? 1;
  const bestOf = req.best_of ?? n;
  if (bestOf < n) {
    throw new ApiError(400, `best_of must be at least n (${n}), got ${bestOf}`, {
      param: "best_of",
    });
  }
  if (bestOf > n && req.stream) {
    throw new ApiError(400, "best_of greater than n cannot be streamed", { param: "best_of" });
  }
  return bestOf;
}

/**
 * Waits for every sample and yields, per prompt, the outputs of the `n` samples with the highest
 * cumulative logprob (ties: the lower index), renumbered 0 … n-1 in that order. The engine must
 * have been asked for logprobs; `keepLogprobs: false` drops them again.
 */
export async function* bestOfEvents(
  events: AsyncIterable<RunEvent>,
  opts: { n: number; keepLogprobs: boolean },
): AsyncGenerator<RunEvent> {
  const samples = new Map<number, Map<number, { outputs: RequestOutput[]; sum: number }>>();
  for await (const event of events) {
    const byIndex = samples.get(event.prompt) ?? new Map();
    samples.set(event.prompt, byIndex);
    const sample = byIndex.get(event.output.index) ?? { outputs: [], sum: 0 };
    byIndex.set(event.output.index, sample);
    sample.outputs.push(event.output);
    for (const lp of event.output.logprobs ?? []) sample.sum += lp.logprob;
  }
  for (const prompt of [...samples.keys()].sort((a, b) => a - b)) {
    const ranked = [...samples.get(prompt)!.entries()]
      .sort(([ia, a], [ib, b]) => b.sum - a.sum || ia - ib)
      .slice(0, opts.n);
    for (const [rank, [, sample]] of ranked.entries()) {
      for (const output of sample.outputs) {
        const { logprobs, ...rest } = output;
        const kept = opts.keepLogprobs && logprobs !== undefined ? { logprobs } : {};
        yield { prompt, output: { ...rest, ...kept, index: rank } };
      }
    }
  }
}

/** `shape` over the best `n` samples of each prompt (see {@link bestOfEvents}). */
export function bestOfShape(
  shape: ResponseShape,
  opts: { n: number; keepLogprobs: boolean },
): ResponseShape {
  return {
    chunks: () => {
      throw new RangeError("best_of greater than n cannot be streamed");
    },
    collect: (events) => shape.collect(bestOfEvents(events, opts)),
  };
}
