// Renders a model's Jinja chat template (tokenizer_config.json or GGUF tokenizer.chat_template).

import { Template } from "@huggingface/jinja";
import { DenollmError } from "../errors.ts";

/** One chat turn. */
export interface ChatMessage {
  role: string;
  content: string;
  /** An assistant turn's calls, `{type, function: {name, arguments}}` with arguments as objects. */
  tool_calls?: unknown[];
  /** The call a `tool` message answers. */
  tool_call_id?: string;
  name?: string;
}

/** A template as tokenizer_config.json stores it: one string, or a list of named ones. */
export type ChatTemplateSource = string | readonly { name: string; template: string }[];

/** Options for {@link renderChat}. */
export interface RenderChatOptions {
  /** End with the header that opens the assistant's turn. Default true. */
  addGenerationPrompt?: boolean;
  bosToken?: string;
  eosToken?: string;
  /** Which named template to use when the source is a list. Default "default". */
  templateName?: string;
  /** More variables for the template (for example `tools`). */
  extra?: Record<string, unknown>;
}

/** The chat template is missing, malformed, or rejected the messages. */
export class ChatTemplateError extends DenollmError {
  constructor(message: string, options?: ErrorOptions) {
    super("chat_template", message, options);
    this.name = "ChatTemplateError";
  }
}

/** Picks the template string: the source itself, or the entry named `name` from a list. */
export function selectChatTemplate(
  source: ChatTemplateSource | undefined,
  name = "default",
): string {
  if (source === undefined || source === "" || (Array.isArray(source) && source.length === 0)) {
    // No silent fallback: a guessed format makes instruction-tuned models produce garbage.
    throw new ChatTemplateError(
      "The model has no chat template (tokenizer_config.json chat_template or GGUF " +
        "tokenizer.chat_template); use plain completion or supply a template",
    );
  }
  if (typeof source === "string") return source;
  if (!Array.isArray(source)) {
    throw new TypeError(`Expected a chat template string or list, got ${typeof source}`);
  }
  const entry = source.find((t) => t.name === name);
  if (entry === undefined || typeof entry.template !== "string") {
    const names = source.map((t) => JSON.stringify(t.name)).join(", ");
    throw new ChatTemplateError(`No chat template named "${name}"; the model has ${names}`);
  }
  return entry.template;
}

// Parsed templates by source text; a model has one or two, so a small cap is plenty.
const compiled = new Map<string, Template>();
const MAX_COMPILED = 16;

/** Renders `messages` with `source` (see {@link selectChatTemplate}) into the prompt text. */
export function renderChat(
  source: ChatTemplateSource | undefined,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions = {},
): string {
  if (!Array.isArray(messages)) throw new TypeError("Expected messages to be an array");
  for (const [i, m] of messages.entries()) {
    if (typeof m?.role !== "string" || typeof m?.content !== "string") {
      throw new TypeError(`Expected messages[${i}] to have string role and content`);
    }
  }
  const text = selectChatTemplate(source, opts.templateName);
  let template = compiled.get(text);
  if (template === undefined) {
    try {
      template = new Template(text);
    } catch (error) {
      throw new ChatTemplateError(`Invalid chat template: ${(error as Error).message}`, {
        cause: error,
      });
    }
    if (compiled.size >= MAX_COMPILED) compiled.delete(compiled.keys().next().value!);
    compiled.set(text, template);
  }
  try {
    return template.render({
      ...opts.extra,
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: opts.bosToken ?? "",
      eos_token: opts.eosToken ?? "",
    });
  } catch (error) {
    throw new ChatTemplateError(`Chat template failed: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
