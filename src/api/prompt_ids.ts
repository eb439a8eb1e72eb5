// Prompt text to token ids for the routes: short texts on the main thread, long ones on the
// tokenizer worker when the process has one, so a long prompt never stalls other streams.
import type { EncodeOptions } from "../tokenizer/tokenizer.ts";
import { chatPromptIds, type ChatPromptOptions, checkChatTemplate } from "./chat_prompt.ts";
import type { ApiDeps } from "./deps.ts";
import type { ChatMessageInput } from "./schemas.ts";

/**
 * Texts up to this many characters are tokenized inline. Measured on stories260K: the worker's
 * round trip costs 0.1-0.2 ms, while encoding 1 KiB inline blocks the loop for about 1 ms and
 * 4 KiB for about 4 ms; past 1 KiB the round trip is under a tenth of the stall it saves.
 */
export const MAX_INLINE_CHARS = 1024;

/** The number of characters of text in `messages`. */
export function numMessageChars(messages: readonly ChatMessageInput[]): number {
  return messages.reduce(
    (sum, m) =>
      sum +
      (m.content === null
        ? 0
        : typeof m.content === "string"
        ? m.content.length
        : m.content.reduce((n, part) => n + part.text.length, 0)) +
      (m.tool_calls ?? []).reduce((n, c) => n + c.function.arguments.length, 0),
    0,
  );
}

/** `deps.tokenizer.encode(text, opts)`, off the main thread when the text is long. */
export async function encodePrompt(
  deps: ApiDeps,
  text: string,
  opts: EncodeOptions = {},
): Promise<number[]> {
  if (deps.asyncTokenizer === undefined || text.length <= MAX_INLINE_CHARS) {
    return deps.tokenizer.encode(text, opts);
  }
  return await deps.asyncTokenizer.encode(text, opts);
}

/** The chat prompt ids of `messages`, off the main thread when the messages are long. */
export async function chatPrompt(
  deps: ApiDeps,
  messages: readonly ChatMessageInput[],
  opts: ChatPromptOptions = {},
): Promise<number[]> {
  if (deps.asyncTokenizer === undefined || numMessageChars(messages) <= MAX_INLINE_CHARS) {
    return chatPromptIds(deps.tokenizer, deps.chatTemplate, messages, opts);
  }
  // The worker holds the same template; checking here keeps the 400's code across the boundary.
  checkChatTemplate(deps.chatTemplate);
  return await deps.asyncTokenizer.chatPromptIds(messages, opts);
}
