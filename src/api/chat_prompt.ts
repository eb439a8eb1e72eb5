// Chat messages to prompt token ids: the model's template rendered, then encoded with control
// tokens parsed and without a second BOS when the template already wrote one.
import { type ChatMessage, renderChat } from "../tokenizer/chat_template.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { ApiError } from "./errors.ts";
import type { ChatMessageInput } from "./schemas.ts";

export interface ChatPromptOptions {
  addGenerationPrompt?: boolean;
  /** Force adding (or not) the tokenizer's special tokens; default: add unless the text has BOS. */
  addSpecial?: boolean;
  /** The request's tools, `{type: "function", function: {...}}`, for templates that render them. */
  tools?: unknown[];
}

function messageText(content: ChatMessageInput["content"]): string {
  if (content === null) return "";
  return typeof content === "string" ? content : content.map((part) => part.text).join("\n");
}

/**
 * A message as HF templates take it. Templates write a call's arguments with `tojson`, so they
 * get the object OpenAI's JSON text stands for (as vLLM does); text that is not JSON stays text.
 */
function templateMessage(m: ChatMessageInput): ChatMessage {
  const out: ChatMessage = {
    // Templates know "system"; OpenAI's newer "developer" role means the same to them.
    role: m.role === "developer" ? "system" : m.role,
    content: messageText(m.content),
  };
  if (m.name != null) out.name = m.name;
  if (m.tool_call_id != null) out.tool_call_id = m.tool_call_id;
  if (m.tool_calls != null) {
    out.tool_calls = m.tool_calls.map((call) => {
      let args: unknown = call.function.arguments;
      try {
        args = JSON.parse(call.function.arguments);
      } catch {
        // Kept as the text the client sent.
      }
      return {
        id: call.id,
        type: call.type,
        function: { name: call.function.name, arguments: args },
      };
    });
  }
  return out;
}

/** A 400 when the model has no chat template. */
export function checkChatTemplate(template: string | null): asserts template is string {
  if (template === null) {
    throw new ApiError(
      400,
      "This model has no chat template, so it cannot serve chat completions; use " +
        "/v1/completions with a plain prompt instead",
      { param: "messages", code: "chat_template_missing" },
    );
  }
}

/** The prompt ids of `messages` under `template`; a 400 when the model has no template. */
export function chatPromptIds(
  tokenizer: TextTokenizer,
  template: string | null,
  messages: readonly ChatMessageInput[],
  opts: ChatPromptOptions = {},
): number[] {
  checkChatTemplate(template);
  const bosText = tokenizer.bosId === undefined ? undefined : tokenizer.tokenText(tokenizer.bosId);
  const eosText = tokenizer.eosIds.length > 0
    ? tokenizer.tokenText(tokenizer.eosIds[0])
    : undefined;
  const text = renderChat(
    template,
    messages.map(templateMessage),
    {
      addGenerationPrompt: opts.addGenerationPrompt ?? true,
      bosToken: bosText,
      eosToken: eosText,
      ...(opts.tools === undefined || opts.tools.length === 0
        ? {}
        : { extra: { tools: opts.tools } }),
    },
  );
  const hasBos = bosText !== undefined && bosText !== "" && text.startsWith(bosText);
  return tokenizer.encode(text, { addSpecial: opts.addSpecial ?? !hasBos, parseSpecial: true });
}
