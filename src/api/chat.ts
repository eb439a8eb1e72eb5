// POST /v1/chat/completions: messages rendered with the model's chat template, n choices,
// streamed as chat.completion.chunk events or returned as one chat.completion.
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
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
  type ChatLogprob,
  chatLogprobs,
  type PromptLogprob,
  promptLogprobsList,
} from "./logprobs.ts";
import { checkPromptChars, requestParams } from "./params.ts";
import { chatPrompt, numMessageChars } from "./prompt_ids.ts";
import { type ChatRequest, chatRequest, parseBody } from "./schemas.ts";

export async function handleChat(
  request: Request,
  deps: ApiDeps,
  inflight: InflightTracker,
): Promise<Response> {
  const engine = requireEngine(deps);
  const body = await readJsonObject(request, deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  const req = parseBody(chatRequest, body, {
    onIgnored: (fields) =>
      deps.log?.("warn", "ignoring unknown request fields", {
        route: "/v1/chat/completions",
        fields,
      }),
  });
  checkModel(deps, req.model);
  checkStreamOptions(req);
  if (req.top_logprobs != null && !req.logprobs) {
    throw new ApiError(400, "top_logprobs can only be set when logprobs is true", {
      param: "top_logprobs",
    });
  }
  checkQueue(deps, engine);
  checkPromptChars(deps.tokenizer, numMessageChars(req.messages), {
    maxModelLen: engine.maxModelLen,
    promptParam: "messages",
  });
  const promptIds = await chatPrompt(deps, req.messages);
  const params = requestParams(req, {
    numPromptTokens: promptIds.length,
    maxModelLen: engine.maxModelLen,
    vocabSize: deps.tokenizer.vocabSize,
    maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined,
    logprobs: req.logprobs ? req.top_logprobs ?? 0 : undefined,
    promptLogprobs: req.prompt_logprobs ?? undefined,
    promptParam: "messages",
  });
  const id = newId("chatcmpl");
  const run = new GenerationRun(engine, [{ promptIds, params }], {
    id,
    metrics: deps.metrics,
    signal: request.signal,
  });
  const shape = new ChatShape(req, promptIds.length, { id, model: deps.servedModelName }, deps);
  return await respondWithRun(run, shape, {
    id,
    stream: req.stream === true,
    inflight,
    toErrorBody: (error) => toApiError(error, deps.log).body,
  });
}

/** Turns engine outputs into chat chunks or one chat completion. */
class ChatShape {
  #req: ChatRequest;
  #numPromptTokens: number;
  #base: { id: string; object: string; created: number; model: string };
  #tokenizer: TextTokenizer;
  #n: number;

  constructor(
    req: ChatRequest,
    numPromptTokens: number,
    meta: { id: string; model: string },
    deps: ApiDeps,
  ) {
    this.#req = req;
    this.#numPromptTokens = numPromptTokens;
    this.#base = {
      id: meta.id,
      object: "chat.completion",
      created: nowSeconds(),
      model: meta.model,
    };
    this.#tokenizer = deps.tokenizer;
    this.#n = req.n ?? 1;
  }

  #usage(numCompletionTokens: number) {
    return {
      prompt_tokens: this.#numPromptTokens,
      completion_tokens: numCompletionTokens,
      total_tokens: this.#numPromptTokens + numCompletionTokens,
    };
  }

  async collect(events: AsyncIterable<RunEvent>) {
    const choices = Array.from({ length: this.#n }, () => ({
      content: "",
      logprobs: [] as ChatLogprob[],
      finishReason: null as string | null,
      numOutputTokens: 0,
    }));
    let promptLogprobs: (PromptLogprob | null)[] | undefined;
    for await (const { output } of events) {
      const choice = choices[output.index];
      if (this.#req.prompt_logprobs != null && output.promptLogprobs && !promptLogprobs) {
        const entries = output.promptLogprobs;
        promptLogprobs = promptLogprobsList(this.#tokenizer, entries, this.#req.prompt_logprobs);
      }
      choice.content += output.textDelta;
      if (output.logprobs) choice.logprobs.push(...chatLogprobs(this.#tokenizer, output.logprobs));
      if (output.finished) {
        choice.finishReason = output.finishReason ?? "stop";
        choice.numOutputTokens = output.numOutputTokens;
      }
    }
    return {
      ...this.#base,
      choices: choices.map((choice, index) => ({
        index,
        message: { role: "assistant", content: choice.content },
        logprobs: this.#req.logprobs ? { content: choice.logprobs } : null,
        finish_reason: choice.finishReason,
      })),
      usage: this.#usage(choices.reduce((sum, c) => sum + c.numOutputTokens, 0)),
      // vLLM's field, beside the choices since they share the prompt.
      ...(this.#req.prompt_logprobs == null ? {} : { prompt_logprobs: promptLogprobs ?? [null] }),
    };
  }

  async *chunks(events: AsyncIterable<RunEvent>): AsyncGenerator<unknown> {
    const base = { ...this.#base, object: "chat.completion.chunk" };
    const includeUsage = this.#req.stream_options?.include_usage ?? false;
    // OpenAI: with include_usage, every chunk has a usage field, null until the last one.
    const usageField = includeUsage ? { usage: null } : {};
    const chunk = (
      index: number,
      delta: { role?: string; content?: string },
      logprobs: ChatLogprob[] | null,
      finishReason: string | null,
    ) => ({
      ...base,
      choices: [{
        index,
        delta,
        logprobs: logprobs === null ? null : { content: logprobs },
        finish_reason: finishReason,
      }],
      ...usageField,
    });
    for (let index = 0; index < this.#n; index++) {
      yield chunk(index, { role: "assistant", content: "" }, null, null);
    }
    let numCompletionTokens = 0;
    for await (const { output } of events) {
      if (output.finished) numCompletionTokens += output.numOutputTokens;
      const logprobs = this.#req.logprobs
        ? chatLogprobs(this.#tokenizer, output.logprobs ?? [])
        : null;
      // Tokens whose text is held back (a partial character) matter only for their logprobs.
      const hasNews = output.textDelta !== "" || (logprobs !== null && logprobs.length > 0);
      if (!hasNews && !output.finished) continue;
      const delta = output.textDelta === "" && output.finished ? {} : { content: output.textDelta };
      yield chunk(
        output.index,
        delta,
        logprobs,
        output.finished ? output.finishReason ?? "stop" : null,
      );
    }
    if (includeUsage) {
      yield { ...base, choices: [], usage: this.#usage(numCompletionTokens) };
    }
  }
}
