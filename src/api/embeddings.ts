// POST /v1/embeddings: each input (text or token ids) is one engine request that samples nothing
// and returns its prompt's pooled, L2-normalized final hidden state, in the input's order.
import { z } from "zod";
import type { Pooling } from "../engine/request.ts";
import { readJsonObject } from "./body.ts";
import {
  type ApiDeps,
  checkModel,
  checkQueue,
  DEFAULT_MAX_BODY_BYTES,
  newId,
  requireEngine,
} from "./deps.ts";
import { ApiError } from "./errors.ts";
import { GenerationRun, startRun } from "./generation.ts";
import type { InflightTracker } from "./inflight.ts";
import { checkPromptChars, checkTokenIds, truncatePrompt } from "./params.ts";
import { encodePrompt } from "./prompt_ids.ts";
import { MAX_PROMPTS, parseBody } from "./schemas.ts";

const MAX_TEXT_CHARS = 4 << 20;
const MAX_PROMPT_TOKENS = 1 << 20;
const tokenId = z.int().min(0).max(2 ** 31 - 1);

export const embeddingRequest = z.strictObject({
  model: z.string().max(256).nullish(),
  input: z.union([
    z.string().max(MAX_TEXT_CHARS),
    z.array(z.string().max(MAX_TEXT_CHARS)).min(1).max(MAX_PROMPTS),
    z.array(tokenId).min(1).max(MAX_PROMPT_TOKENS),
    z.array(z.array(tokenId).min(1).max(MAX_PROMPT_TOKENS)).min(1).max(MAX_PROMPTS),
  ], {
    error: `Expected a string, a list of at most ${MAX_PROMPTS} strings, a non-empty list of ` +
      `token ids, or a list of at most ${MAX_PROMPTS} non-empty token id lists`,
  }),
  encoding_format: z.enum(["float", "base64"]).nullish(),
  /** An extension: "last" (the last token's state, the default for decoder models) or "mean". */
  pooling: z.enum(["last", "mean"]).nullish(),
  truncate_prompt_tokens: z.int().min(1).max(2 ** 31 - 1).nullish(),
  user: z.string().max(256).nullish(),
});
export type EmbeddingRequest = z.infer<typeof embeddingRequest>;

/** Little-endian float32 bytes in base64, as OpenAI's encoding_format "base64" sends them. */
function toBase64(embedding: Float32Array): string {
  const bytes = new Uint8Array(embedding.length * 4);
  const view = new DataView(bytes.buffer);
  embedding.forEach((x, i) => view.setFloat32(i * 4, x, true));
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export async function handleEmbeddings(
  request: Request,
  deps: ApiDeps,
  inflight: InflightTracker,
): Promise<Response> {
  const engine = requireEngine(deps);
  const body = await readJsonObject(request, deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  const req = parseBody(embeddingRequest, body, {
    onIgnored: (fields) =>
      deps.log?.("warn", "ignoring unknown request fields", { route: "/v1/embeddings", fields }),
  });
  checkModel(deps, req.model);
  checkQueue(deps, engine);
  const input = req.input;
  let idLists: number[][];
  if (typeof input === "string" || input.every((x) => typeof x === "string")) {
    const texts = typeof input === "string" ? [input] : input as string[];
    for (const text of texts) {
      checkPromptChars(deps.tokenizer, text.length, {
        maxModelLen: engine.maxModelLen,
        promptParam: "prompt",
      });
    }
    idLists = await Promise.all(texts.map((text) => encodePrompt(deps, text)));
  } else {
    idLists = input.every((x) => typeof x === "number") ? [input as number[]] : input as number[][];
    for (const ids of idLists) checkTokenIds(ids, deps.tokenizer.vocabSize, "input");
  }
  const pooling: Pooling = req.pooling ?? "last";
  const submissions = idLists.map((raw) => {
    const promptIds = truncatePrompt(raw, req.truncate_prompt_tokens, engine.maxModelLen);
    if (promptIds.length === 0) {
      throw new ApiError(400, "Each input must have at least one token", { param: "input" });
    }
    if (promptIds.length > engine.maxModelLen) {
      throw new ApiError(
        400,
        `This model's maximum context length is ${engine.maxModelLen} tokens. However, an ` +
          `input has ${promptIds.length} tokens. Please reduce the length of the input.`,
        { param: "input", code: "context_length_exceeded" },
      );
    }
    return {
      promptIds,
      params: {
        maxTokens: 0,
        sampling: {
          temperature: 1,
          topK: 0,
          topP: 1,
          minP: 0,
          presencePenalty: 0,
          frequencyPenalty: 0,
          repetitionPenalty: 1,
          logitBias: {},
        },
        n: 1,
        pooling,
      },
    };
  });
  const id = newId("embd");
  const run = new GenerationRun(engine, submissions, {
    id,
    metrics: deps.metrics,
    signal: request.signal,
  });
  const started = await startRun(run, inflight);
  const embeddings: (Float32Array | undefined)[] = submissions.map(() => undefined);
  try {
    for await (const { prompt, output } of started.events) {
      if (output.finished && output.finishReason === "abort") {
        throw new ApiError(503, "The embedding request was aborted", { code: "aborted" });
      }
      if (output.embedding !== undefined) embeddings[prompt] = output.embedding;
    }
  } finally {
    started.done();
  }
  const base64 = req.encoding_format === "base64";
  const numPromptTokens = submissions.reduce((n, s) => n + s.promptIds.length, 0);
  return Response.json({
    object: "list",
    data: embeddings.map((embedding, index) => ({
      object: "embedding",
      index,
      embedding: base64 ? toBase64(embedding!) : Array.from(embedding!),
    })),
    model: deps.servedModelName,
    usage: { prompt_tokens: numPromptTokens, total_tokens: numPromptTokens },
  }, { headers: { "X-Request-Id": id } });
}
