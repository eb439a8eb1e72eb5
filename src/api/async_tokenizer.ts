// The main thread's handle on the tokenizer worker (tokenizer_worker.ts): prompt text and chat
// messages go in, token ids come back as promises, and the event loop keeps serving meanwhile.
import type { LoadFormat } from "../model/load.ts";
import { type ErrorInfo, RemoteError } from "../errors.ts";
import type { EncodeOptions } from "../tokenizer/tokenizer.ts";
import type { ChatPromptOptions } from "./chat_prompt.ts";
import type { ChatMessageInput } from "./schemas.ts";
import type { FromTokenizerWorker, ToTokenizerWorker } from "./tokenizer_worker.ts";

/** An error raised inside the tokenizer worker, re-raised here with its original code and name. */
export class TokenizerWorkerError extends RemoteError {}

export class AsyncTokenizer {
  #worker: Worker;
  #pending = new Map<number, PromiseWithResolvers<number[]>>();
  #nextId = 0;
  #fatal?: Error;
  #failed = Promise.withResolvers<Error>();
  #closed?: () => void;

  private constructor(worker: Worker) {
    this.#worker = worker;
    worker.onmessage = (event: MessageEvent<FromTokenizerWorker>) => this.#receive(event.data);
    worker.onerror = (event) => {
      // An uncaught error in the worker: every pending and later request fails with it.
      event.preventDefault();
      this.#fail({ code: "worker_failed", name: "TokenizerWorkerError", message: event.message });
    };
  }

  /** Starts the worker and waits until it has loaded the tokenizer and chat template. */
  static start(
    modelPath: string,
    opts: { chatTemplate?: string; loadFormat?: LoadFormat } = {},
  ): Promise<AsyncTokenizer> {
    const worker = new Worker(new URL("./tokenizer_worker.ts", import.meta.url).href, {
      type: "module",
    });
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<FromTokenizerWorker>) => {
        const message = event.data;
        if (message.type === "ready") {
          resolve(new AsyncTokenizer(worker));
        } else if (message.type === "fatal") {
          worker.terminate();
          reject(new TokenizerWorkerError(message.error));
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        worker.terminate();
        reject(new Error(`The tokenizer worker failed to start: ${event.message}`));
      };
      worker.postMessage(
        {
          type: "init",
          modelPath,
          chatTemplate: opts.chatTemplate,
          loadFormat: opts.loadFormat,
        } satisfies ToTokenizerWorker,
      );
    });
  }

  /** `tokenizer.encode(text, opts)`, run in the worker. */
  encode(text: string, opts: EncodeOptions = {}): Promise<number[]> {
    return this.#request((id) => ({ type: "encode", id, text, opts }));
  }

  /** `chatPromptIds(tokenizer, chatTemplate, messages, opts)`, run in the worker. */
  chatPromptIds(
    messages: readonly ChatMessageInput[],
    opts: ChatPromptOptions = {},
  ): Promise<number[]> {
    return this.#request((id) => ({ type: "chat", id, messages: [...messages], opts }));
  }

  /** Stops the worker; requests still pending are rejected. */
  async close(): Promise<void> {
    if (this.#fatal) {
      this.#worker.terminate();
      return;
    }
    const closed = new Promise<void>((resolve) => (this.#closed = resolve));
    this.#worker.postMessage({ type: "close" } satisfies ToTokenizerWorker);
    await closed;
    this.#worker.terminate();
  }

  #request(message: (id: number) => ToTokenizerWorker): Promise<number[]> {
    if (this.#fatal) return Promise.reject(this.#fatal);
    const id = this.#nextId++;
    const pending = Promise.withResolvers<number[]>();
    this.#pending.set(id, pending);
    this.#worker.postMessage(message(id));
    return pending.promise;
  }

  #receive(message: FromTokenizerWorker): void {
    switch (message.type) {
      case "ids":
        this.#pending.get(message.id)?.resolve(Array.from(message.ids));
        this.#pending.delete(message.id);
        return;
      case "error":
        this.#pending.get(message.id)?.reject(new TokenizerWorkerError(message.error));
        this.#pending.delete(message.id);
        return;
      case "fatal":
        this.#fail(message.error);
        return;
      case "closed":
        this.#fail({
          code: "worker_failed",
          name: "TokenizerWorkerError",
          message: "The tokenizer worker was closed",
        });
        this.#closed?.();
        return;
      case "ready":
        return;
    }
  }

  #fail(info: ErrorInfo): void {
    this.#fatal = new TokenizerWorkerError(info);
    for (const pending of this.#pending.values()) pending.reject(this.#fatal);
    this.#pending.clear();
    this.#failed.resolve(this.#fatal);
  }

  /** Settles with the error if the worker dies; the server then exits non-zero to be restarted. */
  get failed(): Promise<Error> {
    return this.#failed.promise;
  }
}
