// Request bodies of the OpenAI-compatible endpoints as zod schemas, bounded so that no field can
// make the server do unbounded work, and the mapping of a zod failure to a 400 naming the field.
import { z } from "zod";
import { ApiError } from "./errors.ts";

/** Most prompts per completion request, and most choices (prompts × n) per request. */
export const MAX_PROMPTS = 32;
export const MAX_CHOICES = 64;
export const MAX_N = 16;
export const MAX_TOP_LOGPROBS = 20;
const MAX_TEXT_CHARS = 4 << 20;
const MAX_PROMPT_TOKENS = 1 << 20;
const MAX_SHORT_CHARS = 256;
const MAX_INT32 = 2 ** 31 - 1;

const MAX_SCHEMA_CHARS = 64 << 10;

const tokenId = z.int().min(0).max(MAX_INT32);

/** A JSON Schema as an object, bounded by the size of its JSON text. */
const jsonSchema = noProtoKeyDeep().pipe(z.record(z.string(), z.unknown())).refine(
  (schema) => JSON.stringify(schema).length <= MAX_SCHEMA_CHARS,
  `Expected a schema of at most ${MAX_SCHEMA_CHARS} characters of JSON`,
);
const shortString = z.string().max(MAX_SHORT_CHARS);
const stopString = z.string().min(1).max(MAX_SHORT_CHARS);

// zod drops a "__proto__" key from a record silently; a token-id map must not have one at all.
const noProtoKey = z.unknown().refine(
  (value) => typeof value !== "object" || value === null || !Object.hasOwn(value, "__proto__"),
  'Expected token ids as keys, got "__proto__"',
);

/** Refuses a "__proto__" key at any depth (zod would drop it, changing the schema's meaning). */
function noProtoKeyDeep() {
  const hasProto = (value: unknown, depth: number): boolean => {
    if (typeof value !== "object" || value === null || depth > 64) return depth > 64;
    if (Object.hasOwn(value, "__proto__")) return true;
    return Object.values(value).some((v) => hasProto(v, depth + 1));
  };
  return z.unknown().refine((value) => !hasProto(value, 0), {
    error: 'Expected no "__proto__" key and at most 64 levels of nesting',
  });
}

/** Fields both generation endpoints share (sampling, stopping, streaming). */
const generationFields = {
  model: shortString.nullish(),
  max_tokens: z.int().min(1).max(MAX_INT32).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.int().min(-1).max(MAX_INT32).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  seed: z.int().nullish(),
  stop: z.union([stopString, z.array(stopString).max(16)], {
    error: "Expected a non-empty string or a list of at most 16 non-empty strings",
  }).nullish(),
  stop_token_ids: z.array(tokenId).max(64).nullish(),
  n: z.int().min(1).max(MAX_N).nullish(),
  logit_bias: noProtoKey.pipe(
    z.record(z.string().regex(/^\d{1,10}$/), z.number().min(-100).max(100))
      .refine((bias) => Object.keys(bias).length <= 1024, "Expected at most 1024 entries"),
  ).nullish(),
  ignore_eos: z.boolean().nullish(),
  user: shortString.nullish(),
  priority: z.int().min(-MAX_INT32 - 1).max(MAX_INT32).nullish(),
  cache_salt: z.string().min(1).max(MAX_SHORT_CHARS).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().nullish() }).nullish(),
  skip_special_tokens: z.boolean().nullish(),
  /** vLLM's: no stop token or stop string ends the output before this many tokens. */
  min_tokens: z.int().min(0).max(MAX_INT32).nullish(),
  include_stop_str_in_output: z.boolean().nullish(),
  /** vLLM's: keep only the last N prompt tokens. */
  truncate_prompt_tokens: z.int().min(1).max(MAX_INT32).nullish(),
  /** OpenAI's output format; json_object and json_schema constrain decoding (grammar.ts). */
  response_format: z.discriminatedUnion("type", [
    z.strictObject({ type: z.literal("text") }),
    z.strictObject({ type: z.literal("json_object") }),
    z.strictObject({
      type: z.literal("json_schema"),
      json_schema: z.strictObject({
        name: z.string().min(1).max(64).regex(/^[\w-]+$/, "Expected letters, digits, _ or -"),
        description: z.string().max(MAX_SCHEMA_CHARS).nullish(),
        schema: jsonSchema.nullish(),
        strict: z.boolean().nullish(),
      }),
    }),
  ], { error: 'Expected {"type": "text"}, {"type": "json_object"} or {"type": "json_schema"}' })
    .nullish(),
  /** vLLM's constraints; at most one of them and response_format's json types per request. */
  guided_json: z.union([jsonSchema, z.string().max(MAX_SCHEMA_CHARS)]).nullish(),
  guided_regex: z.string().min(1).max(MAX_SCHEMA_CHARS).nullish(),
  guided_choice: z.array(z.string().min(1).max(MAX_SCHEMA_CHARS)).min(1).max(256).nullish(),
  guided_grammar: z.string().min(1).max(MAX_SCHEMA_CHARS).nullish(),
  // Accepted because it changes nothing here: nothing is stored.
  store: z.boolean().nullish(),
  metadata: noProtoKey.pipe(
    z.record(z.string().max(64), z.string().max(512))
      .refine((m) => Object.keys(m).length <= 16, "Expected at most 16 entries"),
  ).nullish(),
};

export const completionRequest = z.strictObject({
  ...generationFields,
  prompt: z.union([
    z.string().max(MAX_TEXT_CHARS),
    z.array(z.string().max(MAX_TEXT_CHARS)).min(1).max(MAX_PROMPTS),
    z.array(tokenId).min(1).max(MAX_PROMPT_TOKENS),
    z.array(z.array(tokenId).min(1).max(MAX_PROMPT_TOKENS)).min(1).max(MAX_PROMPTS),
  ], {
    error: `Expected a string, a list of at most ${MAX_PROMPTS} strings, a non-empty list of ` +
      `token ids, or a list of at most ${MAX_PROMPTS} non-empty token id lists`,
  }),
  // 0 only computes the prompt, which echo with logprobs needs (checked by the route).
  max_tokens: z.int().min(0).max(MAX_INT32).nullish(),
  echo: z.boolean().nullish(),
  logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  /** vLLM's: logprobs of the prompt tokens with this many alternatives, without echo. */
  prompt_logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  suffix: z.literal("", { error: "suffix is not supported" }).nullish(),
  best_of: z.int().min(1).max(MAX_N).nullish(),
});
export type CompletionRequest = z.infer<typeof completionRequest>;

const textPart = z.strictObject({ type: z.literal("text"), text: z.string().max(MAX_TEXT_CHARS) });

const toolCall = z.strictObject({
  id: shortString,
  type: z.literal("function"),
  function: z.strictObject({ name: shortString, arguments: z.string().max(MAX_TEXT_CHARS) }),
});
export type ToolCallInput = z.infer<typeof toolCall>;

const chatMessage = z.strictObject({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  // null only for an assistant turn that made tool calls (checked by the route).
  content: z.union([z.string().max(MAX_TEXT_CHARS), z.array(textPart).max(256), z.null()], {
    error: 'Expected a string or a list of {"type": "text", "text": ...} parts',
  }),
  name: shortString.nullish(),
  tool_calls: z.array(toolCall).max(64).nullish(),
  tool_call_id: shortString.nullish(),
}).refine((m) => m.content !== null || (m.tool_calls?.length ?? 0) > 0, {
  error: "Expected content, or tool_calls on an assistant message",
  path: ["content"],
}).refine((m) => m.tool_calls == null || m.role === "assistant", {
  error: "Only assistant messages have tool_calls",
  path: ["tool_calls"],
});
export type ChatMessageInput = z.infer<typeof chatMessage>;

const chatMessages = z.array(chatMessage).min(1).max(1024);

const tool = z.strictObject({
  type: z.literal("function"),
  function: z.strictObject({
    name: z.string().min(1).max(64).regex(/^[\w.-]+$/, "Expected letters, digits, _, . or -"),
    description: z.string().max(MAX_SCHEMA_CHARS).nullish(),
    parameters: jsonSchema.nullish(),
    strict: z.boolean().nullish(),
  }),
});
export type ToolInput = z.infer<typeof tool>;

export const chatRequest = z.strictObject({
  ...generationFields,
  messages: chatMessages,
  max_completion_tokens: z.int().min(1).max(MAX_INT32).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  prompt_logprobs: z.int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  tools: z.array(tool).max(128).nullish(),
  tool_choice: z.union([
    z.enum(["none", "auto", "required"]),
    z.strictObject({
      type: z.literal("function"),
      function: z.strictObject({ name: shortString }),
    }),
  ], {
    error: 'Expected "none", "auto", "required" or {"type": "function", "function": {"name"}}',
  }).nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  /** vLLM's: generate this many samples and return the n most likely. */
  best_of: z.int().min(1).max(MAX_N).nullish(),
});
export type ChatRequest = z.infer<typeof chatRequest>;

export const tokenizePromptRequest = z.strictObject({
  model: shortString.nullish(),
  prompt: z.string().max(MAX_TEXT_CHARS),
  add_special_tokens: z.boolean().nullish(),
});

export const tokenizeChatRequest = z.strictObject({
  model: shortString.nullish(),
  messages: chatMessages,
  add_generation_prompt: z.boolean().nullish(),
  add_special_tokens: z.boolean().nullish(),
});

export const detokenizeRequest = z.strictObject({
  model: shortString.nullish(),
  tokens: z.array(tokenId).max(MAX_PROMPT_TOKENS),
});

/** `messages[0].content` from zod's path. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    out += typeof key === "number" ? `[${key}]` : `${out === "" ? "" : "."}${String(key)}`;
  }
  return out;
}

type Issue = z.core.$ZodIssue;

/**
 * The issue to report for a failed union: the deepest one from a branch that got past the type
 * check (the branch the client evidently meant), or the union itself when none did.
 */
function explainUnion(
  issue: Issue & { code: "invalid_union" },
): { issue: Issue; path: PropertyKey[] } {
  let best: { issue: Issue; path: PropertyKey[] } | undefined;
  for (const branch of issue.errors) {
    const first = branch[0];
    if (first === undefined || (first.code === "invalid_type" && first.path.length === 0)) continue;
    const nested = first.code === "invalid_union"
      ? explainUnion(first)
      : { issue: first, path: [...first.path] };
    if (best === undefined || nested.path.length > best.path.length) best = nested;
  }
  if (best === undefined) return { issue, path: [] };
  return { issue: best.issue, path: best.path };
}

/** Keys never ignored: a client sending them is probing for prototype pollution. */
const RESERVED_KEYS = new Set(["__proto__", "constructor", "prototype"]);

export interface ParseOptions {
  /**
   * Called with the unknown top-level fields of a body that is otherwise valid; they are then
   * ignored, as vLLM does, instead of refused. Without it, an unknown field is a 400.
   */
  onIgnored?: (keys: string[]) => void;
}

/** Parses `body` with `schema`, or throws a 400 naming the first offending field. */
export function parseBody<S extends z.ZodType>(
  schema: S,
  body: unknown,
  opts: ParseOptions = {},
): z.infer<S> {
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issues = result.error.issues;
  // Unknown fields first: a misspelt parameter explains the other complaints, if any.
  const unknown = issues.find((i) => i.code === "unrecognized_keys" && i.path.length === 0);
  if (unknown?.code === "unrecognized_keys") {
    const reserved = unknown.keys.find((key) => RESERVED_KEYS.has(key));
    if (opts.onIgnored === undefined || reserved !== undefined) {
      return unsupported(reserved ?? unknown.keys[0]);
    }
    const known = Object.fromEntries(
      Object.entries(body as Record<string, unknown>).filter(([k]) => !unknown.keys.includes(k)),
    );
    const parsed = parseBody(schema, known, { onIgnored: undefined });
    opts.onIgnored(unknown.keys);
    return parsed;
  }
  const first = issues[0];
  let path = [...first.path];
  let issue: Issue = first;
  if (first.code === "invalid_union") {
    const explained = explainUnion(first);
    issue = explained.issue;
    path = [...path, ...explained.path];
  }
  const param = formatPath(path);
  const detail = issue.message.replace(/^Invalid input: /, "");
  throw new ApiError(400, param === "" ? detail : `Invalid '${param}': ${detail}`, {
    param: param === "" ? null : param,
  });
}

function unsupported(key: string): never {
  throw new ApiError(400, `Unrecognized request argument supplied: ${key}`, { param: key });
}
