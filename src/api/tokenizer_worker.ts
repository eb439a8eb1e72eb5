// The tokenizer's own thread: encodes prompt text and renders chat prompts for the HTTP API, so a
// long prompt (our tokenizers run at about 1 MB/s) never stalls the main event loop.
/// <reference lib="deno.worker" />
import { type ErrorInfo, errorInfo } from "../errors.ts";
import { type LoadFormat, openModelSource } from "../model/load.ts";
import type { EncodeOptions, TextTokenizer } from "../tokenizer/tokenizer.ts";
import { chatPromptIds, type ChatPromptOptions } from "./chat_prompt.ts";
import type { ChatMessageInput } from "./schemas.ts";

export type ToTokenizerWorker =
  | { type: "init"; modelPath: string; chatTemplate?: string; loadFormat?: LoadFormat }
  | { type: "encode"; id: number; text: string; opts: EncodeOptions }
  | { type: "chat"; id: number; messages: ChatMessageInput[]; opts: ChatPromptOptions }
  | { type: "close" };

export type FromTokenizerWorker =
  | { type: "ready" }
  | { type: "fatal"; error: ErrorInfo }
  /** Token ids as a transferred buffer: cheaper to hand over than a cloned number[]. */
  | { type: "ids"; id: number; ids: Uint32Array<ArrayBuffer> }
  | { type: "error"; id: number; error: ErrorInfo }
  | { type: "closed" };

let source: { tokenizer: TextTokenizer; chatTemplate: string | null } | undefined;

function send(message: FromTokenizerWorker, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

function answer(id: number, tokenize: () => number[]): void {
  let ids: Uint32Array<ArrayBuffer>;
  try {
    ids = Uint32Array.from(tokenize());
  } catch (error) {
    send({ type: "error", id, error: errorInfo(error) });
    return;
  }
  send({ type: "ids", id, ids }, [ids.buffer]);
}

self.onmessage = async (event: MessageEvent<ToTokenizerWorker>) => {
  const message = event.data;
  switch (message.type) {
    case "init":
      try {
        const opened = await openModelSource(message.modelPath, { loadFormat: message.loadFormat });
        source = {
          tokenizer: opened.tokenizer,
          chatTemplate: message.chatTemplate ?? opened.chatTemplate,
        };
        send({ type: "ready" });
      } catch (error) {
        send({ type: "fatal", error: errorInfo(error) });
      }
      return;
    case "encode":
      answer(message.id, () => source!.tokenizer.encode(message.text, message.opts));
      return;
    case "chat":
      answer(
        message.id,
        () =>
          chatPromptIds(source!.tokenizer, source!.chatTemplate, message.messages, message.opts),
      );
      return;
    case "close":
      source = undefined;
      send({ type: "closed" });
      self.close();
      return;
  }
};
