// POST /v1/chat/completions: messages rendered with the model's chat template, n choices,
// streamed as chat.completion.chunk events or returned as one chat.completion.
import { runStatsFor } from "./request_log.ts";
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
  type ChatLogprob,
  chatLogprobs,
  type PromptLogprob,
  promptLogprobsList,
} from "./logprobs.ts";
import { checkPromptChars, requestParams, structuredOutput, truncatePrompt } from "./params.ts";
import { chatPrompt, numMessageChars } from "./prompt_ids.ts";
import { type ChatRequest, chatRequest, parseBody } from "./schemas.ts";
import {
  detectToolParser,
  newToolCallId,
  type ParsedToolCall,
  parseRequiredOutput,
  parseToolCalls,
  type ToolPlan,
  toolPlan,
} from "./tools.ts";

/** OpenAI's tool call object. */
interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** The assistant message a choice's text makes under `plan`: content, or tool calls. */
function assistantMessage(
  plan: ToolPlan,
  text: string,
): { content: string | null; calls: ParsedToolCall[] } {
  switch (plan.mode) {
    case "none":
      return { content: text, calls: [] };
    case "named":
      return { content: null, calls: [{ name: plan.name, arguments: text }] };
    case "required": {
      const calls = parseRequiredOutput(text);
      return calls === undefined ? { content: text, calls: [] } : { content: null, calls };
    }
    case "auto":
      return parseToolCalls(plan.parser, text);
  }
}

function toolCallObjects(calls: ParsedToolCall[]): ToolCall[] {
  return calls.map((call) => ({
    id: newToolCallId(),
    type: "function",
    function: { name: call.name, arguments: call.arguments },
  }));
}

/** "tool_calls" when a choice that ended at a stop made calls, as OpenAI reports it. */
function finishWithCalls(reason: string, numCalls: number): string {
  return numCalls > 0 && reason === "stop" ? "tool_calls" : reason;
}

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
  const numSamples = samplesFor(req);
  const isBestOf = numSamples > (req.n ?? 1);
  checkQueue(deps, engine);
  checkPromptChars(deps.tokenizer, numMessageChars(req.messages), {
    maxModelLen: engine.maxModelLen,
    promptParam: "messages",
  });
  const parser = deps.toolCallParser ?? detectToolParser(deps.chatTemplate);
  const plan = toolPlan(req, parser);
  let structured = structuredOutput(req);
  if (plan.mode === "named" || plan.mode === "required") {
    if (structured !== undefined) {
      throw new ApiError(400, `tool_choice "${plan.mode}" constrains the output itself`, {
        param: "response_format",
      });
    }
    structured = plan.structured;
  }
  const tools = req.tools ?? [];
  const promptIds = truncatePrompt(
    await chatPrompt(deps, req.messages, tools.length > 0 ? { tools } : {}),
    req.truncate_prompt_tokens,
    engine.maxModelLen,
  );
  // Mistral's [TOOL_CALLS] is a control token: the parser needs to see it in the text.
  const showSpecial = plan.mode === "auto" && plan.parser === "mistral" &&
    req.skip_special_tokens == null;
  const sent = { ...req, ...(isBestOf ? { n: numSamples } : {}) };
  const params = requestParams(showSpecial ? { ...sent, skip_special_tokens: false } : sent, {
    numPromptTokens: promptIds.length,
    maxModelLen: engine.maxModelLen,
    vocabSize: deps.tokenizer.vocabSize,
    maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined,
    // best_of ranks samples by their cumulative logprob.
    logprobs: req.logprobs ? req.top_logprobs ?? 0 : isBestOf ? 0 : undefined,
    promptLogprobs: req.prompt_logprobs ?? undefined,
    promptParam: "messages",
    structured,
    defaultSeed: deps.defaultSeed,
  });
  const id = newId("chatcmpl");
  const run = new GenerationRun(engine, [{ promptIds, params }], {
    id,
    metrics: deps.metrics,
    signal: request.signal,
    stats: deps.requestLog === undefined ? undefined : runStatsFor(request),
  });
  const shape = new ChatShape(req, promptIds.length, {
    id,
    model: deps.servedModelName,
    plan,
  }, deps);
  const n = req.n ?? 1;
  const best = isBestOf ? bestOfShape(shape, { n, keepLogprobs: req.logprobs === true }) : shape;
  return await respondWithRun(run, best, {
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
  #plan: ToolPlan;

  constructor(
    req: ChatRequest,
    numPromptTokens: number,
    meta: { id: string; model: string; plan: ToolPlan },
    deps: ApiDeps,
  ) {
    this.#plan = meta.plan;
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
      choices: choices.map((choice, index) => {
        const { content, calls } = assistantMessage(this.#plan, choice.content);
        return {
          index,
          message: {
            role: "assistant",
            content,
            ...(calls.length > 0 ? { tool_calls: toolCallObjects(calls) } : {}),
          },
          logprobs: this.#req.logprobs ? { content: choice.logprobs } : null,
          finish_reason: choice.finishReason === null
            ? null
            : finishWithCalls(choice.finishReason, calls.length),
        };
      }),
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
      delta: { role?: string; content?: string | null; tool_calls?: unknown[] },
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
    const plan = this.#plan;
    // A named call streams its arguments as they come; "auto" and "required" output is only
    // known to be calls once complete, so it goes out whole at the end of the choice.
    const callIds = Array.from({ length: this.#n }, () => newToolCallId());
    if (plan.mode === "named") {
      for (let index = 0; index < this.#n; index++) {
        const call = { index: 0, id: callIds[index], type: "function" };
        yield chunk(
          index,
          {
            tool_calls: [{ ...call, function: { name: plan.name, arguments: "" } }],
          },
          null,
          null,
        );
      }
    }
    const held = Array.from(
      { length: this.#n },
      () => ({ text: "", logprobs: [] as ChatLogprob[] }),
    );
    for await (const { output } of events) {
      if (output.finished) numCompletionTokens += output.numOutputTokens;
      if (plan.mode === "auto" || plan.mode === "required") {
        const h = held[output.index];
        h.text += output.textDelta;
        if (this.#req.logprobs) {
          h.logprobs.push(...chatLogprobs(this.#tokenizer, output.logprobs ?? []));
        }
        if (!output.finished) continue;
        const { content, calls } = assistantMessage(plan, h.text);
        const logprobs = this.#req.logprobs ? h.logprobs : null;
        const delta = calls.length > 0
          ? {
            tool_calls: toolCallObjects(calls).map((call, i) => ({ index: i, ...call })),
          }
          : { content: content ?? "" };
        yield chunk(output.index, delta, logprobs, null);
        const reason = finishWithCalls(output.finishReason ?? "stop", calls.length);
        yield chunk(output.index, {}, null, reason);
        continue;
      }
      const logprobs = this.#req.logprobs
        ? chatLogprobs(this.#tokenizer, output.logprobs ?? [])
        : null;
      // Tokens whose text is held back (a partial character) matter only for their logprobs.
      const hasNews = output.textDelta !== "" || (logprobs !== null && logprobs.length > 0);
      if (!hasNews && !output.finished) continue;
      const delta = output.textDelta === "" && output.finished
        ? {}
        : plan.mode === "named"
        ? { tool_calls: [{ index: 0, function: { arguments: output.textDelta } }] }
        : { content: output.textDelta };
      const reason = output.finishReason ?? "stop";
      yield chunk(
        output.index,
        delta,
        logprobs,
        output.finished ? finishWithCalls(reason, plan.mode === "named" ? 1 : 0) : null,
      );
    }
    if (includeUsage) {
      yield { ...base, choices: [], usage: this.#usage(numCompletionTokens) };
    }
  }
}
