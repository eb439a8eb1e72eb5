// Server-sent events for OpenAI-style streams: `data: {json}` per chunk, then `data: [DONE]`.
import { DenollmError } from "../errors.ts";
import type { ErrorBody } from "./errors.ts";

export interface SseOptions {
  /** The client went away (the response body was cancelled): stop the work behind the stream. */
  onCancel(): void;
  /** The stream ended, whichever way; runs exactly once. */
  onClose(): void;
  /** The error event to send when `chunks` throws mid-stream (the status is already sent). */
  onError(error: unknown): ErrorBody;
}

const HEADERS = {
  "Content-Type": "text/event-stream; charset=utf-8",
  "Cache-Control": "no-cache",
  // Proxies such as nginx would otherwise buffer the whole stream.
  "X-Accel-Buffering": "no",
};

/**
 * A streaming response that writes each chunk as one event; the stream closes in `finally`. A
 * failure mid-stream is sent as an error event; when it is the engine's death (the worker failed,
 * so every open stream ends this way) `[DONE]` follows, so a client reading to `[DONE]` sees why.
 */
export function sseResponse(
  chunks: AsyncGenerator<unknown>,
  opts: SseOptions,
  headers: Record<string, string> = {},
): Response {
  const encoder = new TextEncoder();
  let isCancelled = false;
  const event = (data: string) => encoder.encode(`data: ${data}\n\n`);

  async function pump(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of chunks) {
        if (isCancelled) break;
        controller.enqueue(event(JSON.stringify(chunk)));
      }
      if (!isCancelled) controller.enqueue(event("[DONE]"));
    } catch (error) {
      if (!isCancelled) {
        controller.enqueue(event(JSON.stringify(opts.onError(error))));
        if (error instanceof DenollmError && error.code === "worker_failed") {
          controller.enqueue(event("[DONE]"));
        }
      }
    } finally {
      if (!isCancelled) controller.close();
      opts.onClose();
    }
  }

  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      pump(controller);
    },
    cancel() {
      isCancelled = true;
      opts.onCancel();
    },
  });
  return new Response(body, { status: 200, headers: { ...HEADERS, ...headers } });
}
