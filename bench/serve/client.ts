// One streamed request to an OpenAI-compatible server, timed chunk by chunk the way vLLM's
// benchmark client does (vllm/benchmarks/lib/endpoint_request_func.py).
import type { RequestResult } from "./metrics.ts";
import type { WorkItem } from "./workload.ts";

/** Splits a server-sent-event stream into the `data:` payloads of complete events. */
export class SseParser {
  #buffer = "";

  /** Feeds decoded text; returns the payloads of the events it completed. */
  push(text: string): string[] {
    this.#buffer += text.replaceAll("\r\n", "\n");
    const payloads: string[] = [];
    let end: number;
    while ((end = this.#buffer.indexOf("\n\n")) !== -1) {
      const event = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      // Comment lines (":" first, used as pings) and other fields carry no data.
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) payloads.push(data.join("\n"));
    }
    return payloads;
  }
}

export type Api = "completions" | "chat";

export interface ClientOptions {
  /** Base URL, for example http://127.0.0.1:8000 (the /v1/... path is added). */
  baseUrl: string;
  api: Api;
  model: string;
  ignoreEos: boolean;
  apiKey?: string;
  /** Extra JSON fields for every request body. */
  extraBody?: Record<string, unknown>;
  /** The fetch to use; tests pass a handler here instead of opening a socket. */
  fetch?: typeof fetch;
}

/** The JSON body of a streamed request with usage in the last chunk. */
export function requestBody(item: WorkItem, options: ClientOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {
    model: options.model,
    stream: true,
    stream_options: { include_usage: true },
    temperature: 0,
  };
  if (options.api === "chat") {
    if (typeof item.prompt !== "string") {
      throw new TypeError("The chat API takes text prompts; use --api completions for token ids");
    }
    body.messages = [{ role: "user", content: item.prompt }];
    body.max_completion_tokens = item.maxTokens;
  } else {
    body.prompt = item.prompt;
    body.max_tokens = item.maxTokens;
  }
  if (options.ignoreEos) body.ignore_eos = true;
  return { ...body, ...options.extraBody };
}

/**
 * The text a chunk carries, or undefined for a chunk with no token: usage-only, the chat API's
 * role-only first chunk, or an empty closing chunk that only carries finish_reason (vLLM's client
 * would time those as tokens; a server that sends them would get a TTFT or ITL that is no token's).
 * An empty text without finish_reason still counts: a token whose bytes end mid-character.
 */
function chunkText(data: Record<string, unknown>, api: Api): string | undefined {
  const choices = data.choices as Record<string, unknown>[] | undefined;
  if (!choices?.length) return undefined;
  const choice = choices[0];
  const delta = choice.delta as Record<string, unknown> | undefined;
  const text = api === "completions" ? choice.text : delta?.content;
  if (typeof text !== "string") return undefined;
  if (text === "" && choice.finish_reason != null) return undefined;
  return text;
}

/**
 * Sends one streamed request; never throws: failures come back with `success: false` and the
 * error. `clockZeroMs` is the benchmark's start on performance.now()'s clock.
 */
export async function sendRequest(
  item: WorkItem,
  options: ClientOptions,
  clockZeroMs = 0,
): Promise<RequestResult & { text: string }> {
  const path = options.api === "chat" ? "/v1/chat/completions" : "/v1/completions";
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
  const start = performance.now();
  const result = {
    success: false,
    startMs: start - clockZeroMs,
    ttftMs: 0,
    itlMs: [] as number[],
    e2elMs: 0,
    promptTokens: item.promptTokens,
    outputTokens: 0,
    text: "",
    error: undefined as string | undefined,
  };
  let numTokenChunks = 0;
  let last = start;
  let usageTokens: number | undefined;
  try {
    const response = await (options.fetch ?? fetch)(new URL(path, options.baseUrl), {
      method: "POST",
      headers,
      body: JSON.stringify(requestBody(item, options)),
    });
    if (!response.ok || response.body === null) {
      const detail = await response.text().catch(() => "");
      result.error = `HTTP ${response.status}: ${detail.slice(0, 300)}`;
      return result;
    }
    const parser = new SseParser();
    const stream = response.body.pipeThrough(new TextDecoderStream());
    for await (const text of stream) {
      for (const payload of parser.push(text)) {
        if (payload === "[DONE]") continue;
        const data = JSON.parse(payload) as Record<string, unknown>;
        if (data.error) throw new Error(`Error event: ${JSON.stringify(data.error)}`);
        const piece = chunkText(data, options.api);
        if (piece !== undefined) {
          const now = performance.now();
          if (numTokenChunks === 0) result.ttftMs = now - start;
          else result.itlMs.push(now - last);
          last = now;
          numTokenChunks++;
          result.text += piece;
        }
        const usage = data.usage as Record<string, number> | undefined | null;
        if (usage) {
          usageTokens = usage.completion_tokens;
          if (usage.prompt_tokens !== undefined) result.promptTokens = usage.prompt_tokens;
        }
      }
    }
    if (numTokenChunks === 0) {
      result.error = "Never received a chunk with a token to time TTFT";
      return result;
    }
    result.e2elMs = last - start;
    result.outputTokens = usageTokens ?? numTokenChunks;
    result.success = true;
  } catch (error) {
    result.error = error instanceof Error ? error.message : String(error);
  }
  return result;
}

/** The first model id the server lists at /v1/models. */
export async function firstModel(baseUrl: string, apiKey?: string): Promise<string> {
  const response = await fetch(new URL("/v1/models", baseUrl), {
    headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
  });
  if (!response.ok) {
    throw new Error(`GET /v1/models failed with HTTP ${response.status}; pass --model NAME`);
  }
  const body = await response.json() as { data?: { id: string }[] };
  const id = body.data?.[0]?.id;
  if (id === undefined) throw new Error("The server lists no models at /v1/models");
  return id;
}
