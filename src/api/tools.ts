// Tool calling: which constraint a tool_choice puts on decoding, the call formats models write
// (Hermes/Qwen2.5 `<tool_call>`, Llama 3.1 JSON, Mistral `[TOOL_CALLS]`), and OpenAI's tool_calls.
import type { StructuredOutput } from "../engine/grammar.ts";
import { ApiError } from "./errors.ts";
import type { ChatRequest, ToolInput } from "./schemas.ts";

export const TOOL_CALL_PARSERS = ["hermes", "llama3_json", "mistral"] as const;
export type ToolCallParser = (typeof TOOL_CALL_PARSERS)[number];

/** One call as the model wrote it: the function's name and its arguments as JSON text. */
export interface ParsedToolCall {
  name: string;
  arguments: string;
}

/**
 * How a chat request uses its tools. `named` and `required` constrain the whole output to JSON
 * (the arguments, or a list of `{"name", "parameters"}`), as vLLM does, so whatever the parser,
 * the arguments are valid for the schema; `auto` lets the model choose and parses its text.
 */
export type ToolPlan =
  | { mode: "none" }
  | { mode: "auto"; parser: ToolCallParser }
  | { mode: "required"; structured: StructuredOutput }
  | { mode: "named"; name: string; structured: StructuredOutput };

/** The parser a chat template's call format implies; Hermes (Qwen2.5's) when it shows none. */
export function detectToolParser(template: string | null): ToolCallParser {
  if (template?.includes("[TOOL_CALLS]")) return "mistral";
  if (template?.includes("<tool_call>")) return "hermes";
  if (template?.includes("<|python_tag|>") || template?.includes("ipython")) return "llama3_json";
  return "hermes";
}

function parametersOf(tool: ToolInput): Record<string, unknown> {
  return tool.function.parameters ?? { type: "object", properties: {} };
}

/** The plan for `req`; a 400 for a tool_choice that names no tool, or needs tools without any. */
export function toolPlan(req: ChatRequest, parser: ToolCallParser): ToolPlan {
  const tools = req.tools ?? [];
  const choice = req.tool_choice ?? (tools.length > 0 ? "auto" : "none");
  if (choice === "none" || (choice === "auto" && tools.length === 0)) return { mode: "none" };
  if (tools.length === 0) {
    throw new ApiError(400, "tool_choice requires tools: the request has none", {
      param: "tool_choice",
    });
  }
  if (choice === "auto") return { mode: "auto", parser };
  if (choice === "required") {
    const items = {
      anyOf: tools.map((t) => ({
        type: "object",
        properties: { name: { const: t.function.name }, parameters: parametersOf(t) },
        required: ["name", "parameters"],
        additionalProperties: false,
      })),
    };
    const schema = {
      type: "array",
      items,
      minItems: 1,
      ...(req.parallel_tool_calls === false ? { maxItems: 1 } : {}),
    };
    return { mode: "required", structured: jsonSchemaOutput(schema, true) };
  }
  const tool = tools.find((t) => t.function.name === choice.function.name);
  if (tool === undefined) {
    throw new ApiError(400, `tool_choice names "${choice.function.name}", which is not in tools`, {
      param: "tool_choice",
    });
  }
  return {
    mode: "named",
    name: tool.function.name,
    structured: jsonSchemaOutput(parametersOf(tool), tool.function.strict ?? false),
  };
}

function jsonSchemaOutput(schema: unknown, strict: boolean): StructuredOutput {
  return { type: "json_schema", schema: JSON.stringify(schema), strict };
}

/** The calls in a `required` output: `[{"name", "parameters"}, …]`. */
export function parseRequiredOutput(text: string): ParsedToolCall[] | undefined {
  try {
    const list = JSON.parse(text);
    if (!Array.isArray(list)) return undefined;
    return list.map((call) => ({
      name: String(call.name),
      arguments: JSON.stringify(call.parameters ?? {}),
    }));
  } catch {
    return undefined;
  }
}

/** A parsed call object: `{"name", "arguments"|"parameters"}`, or undefined. */
function callOf(value: unknown): ParsedToolCall | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { name, arguments: args, parameters } = value as Record<string, unknown>;
  if (typeof name !== "string") return undefined;
  const argsValue = args ?? parameters ?? {};
  return {
    name,
    arguments: typeof argsValue === "string" ? argsValue : JSON.stringify(argsValue),
  };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * The content and calls in text a model wrote with tool_choice "auto". Text that does not parse
 * as calls stays content, so a malformed call is never lost.
 */
export function parseToolCalls(
  parser: ToolCallParser,
  text: string,
): { content: string | null; calls: ParsedToolCall[] } {
  const none = { content: text, calls: [] };
  switch (parser) {
    case "hermes": {
      const start = text.indexOf("<tool_call>");
      if (start < 0) return none;
      const calls: ParsedToolCall[] = [];
      // The last call may lack its closing tag when generation stopped at the stop token.
      const pattern = /<tool_call>\s*([\s\S]*?)\s*(?:<\/tool_call>|$)/g;
      for (const match of text.slice(start).matchAll(pattern)) {
        const call = callOf(parseJson(match[1]));
        if (call === undefined) return none;
        calls.push(call);
      }
      const content = text.slice(0, start).trim();
      return { content: content === "" ? null : content, calls };
    }
    case "llama3_json": {
      const body = text.replace(/^\s*<\|python_tag\|>/, "").trim();
      if (!body.startsWith("{")) return none;
      const calls: ParsedToolCall[] = [];
      for (const part of body.split(/;\s*(?=\{)/)) {
        const call = callOf(parseJson(part));
        if (call === undefined) return none;
        calls.push(call);
      }
      return { content: null, calls };
    }
    case "mistral": {
      const marker = text.indexOf("[TOOL_CALLS]");
      // The marker is a control token, dropped from the text unless special tokens are shown.
      const body = marker >= 0 ? text.slice(marker + "[TOOL_CALLS]".length).trim() : text.trim();
      if (marker < 0 && !body.startsWith("[{")) return none;
      const list = parseJson(body);
      const items = Array.isArray(list) ? list : [list];
      const calls = items.map(callOf);
      if (calls.length === 0 || calls.some((c) => c === undefined)) return none;
      const content = marker > 0 ? text.slice(0, marker).trim() : "";
      return { content: content === "" ? null : content, calls: calls as ParsedToolCall[] };
    }
  }
}

/** A new call id as OpenAI writes them. */
export function newToolCallId(): string {
  return `call_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}
