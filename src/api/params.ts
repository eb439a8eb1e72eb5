// From a validated request body to the engine's RequestParams: defaults as OpenAI has them, token
// ids checked against the vocabulary, and the context-length check with both numbers.
import type { StructuredOutput } from "../engine/grammar.ts";
import type { RequestParams } from "../engine/request.ts";
import type { SamplingParams } from "../sampling.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { ApiError } from "./errors.ts";
import type { CompletionRequest } from "./schemas.ts";

/** The fields that both generation endpoints share. */
export type GenerationRequest = Omit<
  CompletionRequest,
  "prompt" | "echo" | "logprobs" | "prompt_logprobs" | "suffix" | "best_of"
>;

export interface ParamsOptions {
  numPromptTokens: number;
  maxModelLen: number;
  vocabSize: number;
  /** The `max_tokens` to use; undefined fills the rest of the context. */
  maxTokens?: number;
  /** Top alternatives per token, when logprobs are wanted. */
  logprobs?: number;
  /** Top alternatives per prompt token, when prompt logprobs are wanted. */
  promptLogprobs?: number;
  /** Whether `maxTokens` may be 0 (echo: the prompt alone is the answer). */
  allowZeroMaxTokens?: boolean;
  /** The name of the prompt's field, for error messages. */
  promptParam: "prompt" | "messages";
  /** The output format to enforce (see {@link structuredOutput}). */
  structured?: StructuredOutput;
  /** The seed when the request gives none (the server's --seed). */
  defaultSeed?: number;
}

/** Throws a 400 naming `param` unless every id is in the vocabulary. */
export function checkTokenIds(ids: readonly number[], vocabSize: number, param: string): void {
  const bad = ids.find((id) => id >= vocabSize);
  if (bad !== undefined) {
    throw new ApiError(
      400,
      `Invalid '${param}': token id ${bad} is outside the vocabulary [0, ${vocabSize})`,
      { param },
    );
  }
}

function samplingParams(req: GenerationRequest, vocabSize: number): SamplingParams {
  const logitBias: Record<number, number> = {};
  for (const [key, bias] of Object.entries(req.logit_bias ?? {})) {
    const id = Number(key);
    checkTokenIds([id], vocabSize, "logit_bias");
    logitBias[id] = bias;
  }
  return {
    temperature: req.temperature ?? 1,
    topK: Math.max(0, req.top_k ?? 0),
    topP: req.top_p ?? 1,
    minP: req.min_p ?? 0,
    ...(req.seed == null ? {} : { seed: req.seed }),
    presencePenalty: req.presence_penalty ?? 0,
    frequencyPenalty: req.frequency_penalty ?? 0,
    repetitionPenalty: req.repetition_penalty ?? 1,
    logitBias,
  };
}

/**
 * The output format `req` asks for: response_format's json_object or json_schema, or one of vLLM's
 * guided_* fields; a 400 when it asks for more than one.
 */
export function structuredOutput(req: GenerationRequest): StructuredOutput | undefined {
  const found: [string, StructuredOutput][] = [];
  const format = req.response_format;
  if (format?.type === "json_object") found.push(["response_format", { type: "json_object" }]);
  if (format?.type === "json_schema") {
    const spec = format.json_schema;
    const schema = spec.schema == null ? '{"type": "object"}' : JSON.stringify(spec.schema);
    found.push(["response_format", { type: "json_schema", schema, strict: spec.strict ?? false }]);
  }
  if (req.guided_json != null) {
    const schema = typeof req.guided_json === "string"
      ? req.guided_json
      : JSON.stringify(req.guided_json);
    found.push(["guided_json", { type: "json_schema", schema }]);
  }
  if (req.guided_regex != null) {
    found.push(["guided_regex", { type: "regex", pattern: req.guided_regex }]);
  }
  if (req.guided_choice != null) {
    found.push(["guided_choice", { type: "choice", choices: req.guided_choice }]);
  }
  if (req.guided_grammar != null) {
    found.push(["guided_grammar", { type: "grammar", grammar: req.guided_grammar }]);
  }
  if (found.length > 1) {
    throw new ApiError(
      400,
      `Expected at most one output constraint, got ${found.map(([k]) => k).join(" and ")}`,
      { param: found[1][0] },
    );
  }
  return found[0]?.[1];
}

/** The engine parameters of one prompt of `req`; throws a 400 when it cannot fit the context. */
export function requestParams(req: GenerationRequest, opts: ParamsOptions): RequestParams {
  const { numPromptTokens, maxModelLen } = opts;
  if (numPromptTokens === 0) {
    throw new ApiError(400, `The ${opts.promptParam} must have at least one token`, {
      param: opts.promptParam,
    });
  }
  if (opts.maxTokens === 0 && !opts.allowZeroMaxTokens) {
    throw new ApiError(400, "Invalid 'max_tokens': expected at least 1 (0 only with echo)", {
      param: "max_tokens",
    });
  }
  const maxTokens = opts.maxTokens ?? maxModelLen - numPromptTokens;
  const minTokens = opts.maxTokens === 0 ? 0 : 1;
  if (maxTokens < minTokens || numPromptTokens + maxTokens > maxModelLen) {
    const message = opts.maxTokens === undefined
      ? `This model's maximum context length is ${maxModelLen} tokens. However, the ` +
        `${opts.promptParam} has ${numPromptTokens} tokens, which leaves no room for a ` +
        `completion. Please reduce the length of the ${opts.promptParam}.`
      : `This model's maximum context length is ${maxModelLen} tokens. However, you requested ` +
        `${numPromptTokens + maxTokens} tokens (${numPromptTokens} in the ${opts.promptParam}, ` +
        `${maxTokens} in the completion). Please reduce the length of the ` +
        `${opts.promptParam} or the completion.`;
    throw new ApiError(400, message, {
      param: opts.maxTokens === undefined ? opts.promptParam : "max_tokens",
      code: "context_length_exceeded",
    });
  }
  const numMinTokens = req.min_tokens ?? 0;
  if (numMinTokens > maxTokens) {
    throw new ApiError(
      400,
      `Invalid 'min_tokens': expected at most max_tokens (${maxTokens}), got ${numMinTokens}`,
      { param: "min_tokens" },
    );
  }
  const stop = req.stop ?? [];
  const stopTokenIds = req.stop_token_ids ?? [];
  checkTokenIds(stopTokenIds, opts.vocabSize, "stop_token_ids");
  return {
    maxTokens,
    sampling: samplingParams(
      req.seed == null && opts.defaultSeed !== undefined ? { ...req, seed: opts.defaultSeed } : req,
      opts.vocabSize,
    ),
    stopStrings: typeof stop === "string" ? [stop] : stop,
    stopTokenIds,
    ignoreEos: req.ignore_eos ?? false,
    priority: req.priority ?? 0,
    n: req.n ?? 1,
    ...(opts.logprobs === undefined ? {} : { logprobs: opts.logprobs }),
    ...(opts.promptLogprobs === undefined ? {} : { promptLogprobs: opts.promptLogprobs }),
    ...(req.cache_salt == null ? {} : { cacheSalt: req.cache_salt }),
    skipSpecialTokens: req.skip_special_tokens ?? true,
    ...(opts.structured === undefined ? {} : { structured: opts.structured }),
    ...(numMinTokens === 0 ? {} : { minTokens: numMinTokens }),
    ...(req.include_stop_str_in_output ? { includeStopStrInOutput: true } : {}),
  };
}

/**
 * The last `truncate_prompt_tokens` of `ids` (all of them when unset or when there are fewer);
 * a 400 when it is more than the context holds, as vLLM answers it.
 */
export function truncatePrompt(
  ids: number[],
  numKeep: number | null | undefined,
  maxModelLen: number,
): number[] {
  if (numKeep == null) return ids;
  if (numKeep > maxModelLen) {
    throw new ApiError(
      400,
      `Invalid 'truncate_prompt_tokens': expected at most the model's maximum context length ` +
        `(${maxModelLen}), got ${numKeep}`,
      { param: "truncate_prompt_tokens" },
    );
  }
  return ids.length > numKeep ? ids.slice(ids.length - numKeep) : ids;
}

const maxTokenBytes = new WeakMap<TextTokenizer, number>();

/**
 * Throws a 400 for text far too long to fit `maxModelLen` tokens, before the tokenizer spends
 * seconds of the event loop on it: no token covers more than the longest token's bytes, and a
 * factor of 4 leaves room for normalization that shortens text.
 */
export function checkPromptChars(
  tokenizer: TextTokenizer,
  numChars: number,
  opts: { maxModelLen: number; promptParam: "prompt" | "messages" },
): void {
  let longest = maxTokenBytes.get(tokenizer);
  if (longest === undefined) {
    longest = 1;
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      longest = Math.max(longest, tokenizer.tokenBytes(id).length);
    }
    maxTokenBytes.set(tokenizer, longest);
  }
  const limit = 4 * longest * opts.maxModelLen;
  if (numChars > limit) {
    throw new ApiError(
      400,
      `The ${opts.promptParam} has ${numChars} characters, more than the model's maximum ` +
        `context length of ${opts.maxModelLen} tokens can hold. Please reduce its length.`,
      { param: opts.promptParam, code: "context_length_exceeded" },
    );
  }
}
