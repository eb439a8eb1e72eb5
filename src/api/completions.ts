// POST /v1/completions: prompts as text or token ids, one block of n choices per prompt (choice
// index = prompt index × n + sample index, as OpenAI lays them out), streamed or not.
import { runStatsFor } from "./request_log.ts";
import type { RequestOutput } from "../engine/request.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { bestOfShape, numSamples as samplesFor } from "./best_of.ts";
import { readJsonObject } from "./body.ts";
import {
  type ApiDeps,
  checkModel,
  checkQueue,
  checkStreamOptions,
  DEFAULT_MAX_BODY_BYTES,
  newId,
  nowSeconds,
  requireEngine,
} from "./deps.ts";
import { ApiError, toApiError } from "./errors.ts";
import { GenerationRun, respondWithRun, type RunEvent } from "./generation.ts";
import type { InflightTracker } from "./inflight.ts";
import {
  type CompletionLogprobs,
  CompletionLogprobsBuilder,
  type PromptLogprob,
  promptLogprobsList,
} from "./logprobs.ts";
import {
  checkPromptChars,
  checkTokenIds,
  requestParams,
  structuredOutput,
  truncatePrompt,
} from "./params.ts";
import { encodePrompt } from "./prompt_ids.ts";
import { type CompletionRequest, completionRequest, MAX_CHOICES, parseBody } from "./schemas.ts";

interface Prompt {
  /** What echo repeats: the text as sent, or the decoded token ids. */
  text: string;
  ids: number[];
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

async function toPrompts(prompt: CompletionRequest["prompt"], deps: ApiDeps): Promise<Prompt[]> {
  const tokenizer = deps.tokenizer;
  const encode = async (text: string): Promise<Prompt> => ({
    text,
    ids: await encodePrompt(deps, text),
  });
  const fromIds = (ids: number[]): Prompt => {
    checkTokenIds(ids, tokenizer.vocabSize, "prompt");
    // Like vLLM, echo shows the text without control tokens such as BOS.
    return { text: tokenizer.decode(ids, { skipSpecial: true }), ids };
  };
  if (typeof prompt === "string") return [await encode(prompt)];
  if (prompt.every((p) => typeof p === "string")) return await Promise.all(prompt.map(encode));
  if (prompt.every((p) => typeof p === "number")) return [fromIds(prompt)];
  return (prompt as number[][]).map(fromIds);
}

function usage(numPromptTokens: number, numCompletionTokens: number): Usage {
  return {
    prompt_tokens: numPromptTokens,
    completion_tokens: numCompletionTokens,
    total_tokens: numPromptTokens + numCompletionTokens,
  };
}

export async function handleCompletion(
  request: Request,
  deps: ApiDeps,
  inflight: InflightTracker,
): Promise<Response> {
  const engine = requireEngine(deps);
  const body = await readJsonObject(request, deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  const req = parseBody(completionRequest, body, {
    onIgnored: (fields) =>
      deps.log?.("warn", "ignoring unknown request fields", { route: "/v1/completions", fields }),
  });
  checkModel(deps, req.model);
  checkStreamOptions(req);
  const numSamples = samplesFor(req);
  checkQueue(deps, engine);
  const texts = typeof req.prompt === "string" ? [req.prompt] : req.prompt;
  for (const text of texts) {
    if (typeof text !== "string") break;
    checkPromptChars(deps.tokenizer, text.length, {
      maxModelLen: engine.maxModelLen,
      promptParam: "prompt",
    });
  }
  const prompts = (await toPrompts(req.prompt, deps)).map((p) => {
    const ids = truncatePrompt(p.ids, req.truncate_prompt_tokens, engine.maxModelLen);
    // Echo repeats what the model saw.
    return ids === p.ids ? p : { ids, text: deps.tokenizer.decode(ids, { skipSpecial: true }) };
  });
  const n = req.n ?? 1;
  if (prompts.length * numSamples > MAX_CHOICES) {
    const what = numSamples > n ? `best_of = ${numSamples}` : `n = ${n}`;
    throw new ApiError(
      400,
      `${prompts.length} prompts × ${what} asks for more than ${MAX_CHOICES} choices`,
      { param: numSamples > n ? "best_of" : "n" },
    );
  }
  // Echo with logprobs needs the prompt's own logprobs; vLLM's prompt_logprobs asks for them alone.
  const numPromptTop = Math.max(
    req.echo && req.logprobs != null ? req.logprobs : -1,
    req.prompt_logprobs ?? -1,
  );
  const structured = structuredOutput(req);
  const isBestOf = numSamples > n;
  const submissions = prompts.map((p) => ({
    promptIds: p.ids,
    params: requestParams(isBestOf ? { ...req, n: numSamples } : req, {
      numPromptTokens: p.ids.length,
      maxModelLen: engine.maxModelLen,
      vocabSize: deps.tokenizer.vocabSize,
      maxTokens: req.max_tokens ?? undefined,
      allowZeroMaxTokens: req.echo === true,
      // best_of ranks samples by their cumulative logprob.
      logprobs: req.logprobs ?? (isBestOf ? 0 : undefined),
      promptLogprobs: numPromptTop < 0 ? undefined : numPromptTop,
      promptParam: "prompt",
      structured,
      defaultSeed: deps.defaultSeed,
    }),
  }));
  const id = newId("cmpl");
  const run = new GenerationRun(engine, submissions, {
    id,
    metrics: deps.metrics,
    signal: request.signal,
    stats: deps.requestLog === undefined ? undefined : runStatsFor(request),
  });
  const shape = new CompletionShape(req, prompts, { id, model: deps.servedModelName }, deps);
  const best = isBestOf ? bestOfShape(shape, { n, keepLogprobs: req.logprobs != null }) : shape;
  return await respondWithRun(run, best, {
    id,
    stream: req.stream === true,
    inflight,
    toErrorBody: (error) => toApiError(error, deps.log).body,
  });
}

/** Turns engine outputs into completion chunks or one completion. */
class CompletionShape {
  #req: CompletionRequest;
  #prompts: Prompt[];
  #base: { id: string; object: "text_completion"; created: number; model: string };
  #tokenizer: TextTokenizer;
  #n: number;

  constructor(
    req: CompletionRequest,
    prompts: Prompt[],
    meta: { id: string; model: string },
    deps: ApiDeps,
  ) {
    this.#req = req;
    this.#prompts = prompts;
    this.#base = {
      id: meta.id,
      object: "text_completion",
      created: nowSeconds(),
      model: meta.model,
    };
    this.#tokenizer = deps.tokenizer;
    this.#n = req.n ?? 1;
  }

  get #numChoices(): number {
    return this.#prompts.length * this.#n;
  }

  get #numPromptTokens(): number {
    return this.#prompts.reduce((sum, p) => sum + p.ids.length, 0);
  }

  #promptOf(index: number): Prompt {
    return this.#prompts[Math.floor(index / this.#n)];
  }

  /** One logprobs builder per choice, when logprobs are wanted. */
  #builders(): CompletionLogprobsBuilder[] | undefined {
    if (this.#req.logprobs == null) return undefined;
    return Array.from(
      { length: this.#numChoices },
      () => new CompletionLogprobsBuilder(this.#tokenizer),
    );
  }

  /** On a choice's first output: the echoed prompt's tokens and logprobs go first. */
  #startChoice(index: number, output: RequestOutput, builder?: CompletionLogprobsBuilder): void {
    if (!this.#req.echo || builder === undefined) return;
    const prompt = this.#promptOf(index);
    builder.addPrompt(prompt.ids, prompt.text, {
      logprobs: output.promptLogprobs,
      numTop: this.#req.logprobs ?? 0,
    });
  }

  /** vLLM's prompt_logprobs field of a choice, when asked for. */
  #promptLogprobsField(output: RequestOutput): { prompt_logprobs?: (PromptLogprob | null)[] } {
    if (this.#req.prompt_logprobs == null) return {};
    const list = promptLogprobsList(
      this.#tokenizer,
      output.promptLogprobs ?? [],
      this.#req.prompt_logprobs,
    );
    return { prompt_logprobs: list };
  }

  async collect(events: AsyncIterable<RunEvent>) {
    const builders = this.#builders();
    const choices = Array.from({ length: this.#numChoices }, (_, index) => ({
      text: this.#req.echo ? this.#promptOf(index).text : "",
      finishReason: null as string | null,
      numOutputTokens: 0,
      promptLogprobs: undefined as { prompt_logprobs?: (PromptLogprob | null)[] } | undefined,
    }));
    for await (const { prompt, output } of events) {
      const index = prompt * this.#n + output.index;
      const choice = choices[index];
      if (choice.promptLogprobs === undefined) {
        this.#startChoice(index, output, builders?.[index]);
        choice.promptLogprobs = this.#promptLogprobsField(output);
      }
      choice.text += output.textDelta;
      builders?.[index].add(output.logprobs ?? []);
      if (output.finished) {
        choice.finishReason = output.finishReason ?? "stop";
        choice.numOutputTokens = output.numOutputTokens;
      }
    }
    return {
      ...this.#base,
      choices: choices.map((choice, index) => ({
        text: choice.text,
        index,
        logprobs: builders?.[index].value ?? null,
        finish_reason: choice.finishReason,
        ...choice.promptLogprobs,
      })),
      usage: usage(
        this.#numPromptTokens,
        choices.reduce((sum, c) => sum + c.numOutputTokens, 0),
      ),
    };
  }

  async *chunks(events: AsyncIterable<RunEvent>): AsyncGenerator<unknown> {
    const includeUsage = this.#req.stream_options?.include_usage ?? false;
    // OpenAI: with include_usage, every chunk has a usage field, null until the last one.
    const usageField = includeUsage ? { usage: null } : {};
    const builders = this.#builders();
    const chunk = (
      index: number,
      text: string,
      logprobs: CompletionLogprobs | null,
      finishReason: string | null,
      extra: { prompt_logprobs?: (PromptLogprob | null)[] } = {},
    ) => ({
      ...this.#base,
      choices: [{ text, index, logprobs, finish_reason: finishReason, ...extra }],
      ...usageField,
    });
    // Without logprobs the echo needs nothing from the engine; with them it waits for the
    // prompt's logprobs, which come with the choice's first output.
    const echoFirst = this.#req.echo && builders === undefined;
    if (echoFirst) {
      for (let index = 0; index < this.#numChoices; index++) {
        yield chunk(index, this.#promptOf(index).text, null, null);
      }
    }
    const started = new Set<number>();
    let numCompletionTokens = 0;
    for await (const { prompt, output } of events) {
      const index = prompt * this.#n + output.index;
      if (!started.has(index)) {
        started.add(index);
        const extra = this.#promptLogprobsField(output);
        if (this.#req.echo && !echoFirst) {
          this.#startChoice(index, output, builders?.[index]);
          yield chunk(index, this.#promptOf(index).text, builders![index].take(), null, extra);
        } else if (extra.prompt_logprobs !== undefined) {
          yield chunk(index, "", null, null, extra);
        }
      }
      if (output.finished) numCompletionTokens += output.numOutputTokens;
      // Tokens whose text is held back (a partial character) matter only for their logprobs.
      const hasNews = output.textDelta !== "" ||
        (builders !== undefined && output.newTokenIds.length > 0);
      if (!hasNews && !output.finished) continue;
      builders?.[index].add(output.logprobs ?? []);
      yield chunk(
        index,
        output.textDelta,
        builders?.[index].take() ?? null,
        output.finished ? output.finishReason ?? "stop" : null,
      );
    }
    if (includeUsage) {
      yield {
        ...this.#base,
        choices: [],
        usage: usage(this.#numPromptTokens, numCompletionTokens),
      };
    }
  }
}
