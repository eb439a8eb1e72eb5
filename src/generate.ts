// Single-sequence generation over the paged KV cache: prefill the whole prompt in one forward pass,
// then decode one token per step until a stop condition.
import { BlockAllocator, SequenceBlocks } from "./kv/block_allocator.ts";
import type { KvCache } from "./kv/kv_cache.ts";
import type { ForwardBatch, LlamaModel } from "./model/llama.ts";
import { Sampler, type SamplingParams } from "./sampling.ts";
import { StopStringMatcher } from "./stop.ts";
import { IncrementalDetokenizer, type TextTokenizer } from "./tokenizer/tokenizer.ts";

/** The prompt plus the requested output does not fit the model's context or the KV cache. */
export class ContextLengthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ContextLengthError";
  }
}

export interface GenerationRequest {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stopStrings?: string[];
  stopTokenIds?: number[];
  /** Keep generating past EOS (benchmarks). */
  ignoreEos?: boolean;
}

export type FinishReason = "stop" | "length";

export interface GenerationChunk {
  /** The sampled token; null for the final chunk that flushes held-back text. */
  tokenId: number | null;
  /** Text that became final with this token; may be empty while bytes or stop prefixes wait. */
  text: string;
}

export interface GenerationResult {
  tokenIds: number[];
  text: string;
  finishReason: FinishReason;
  numPromptTokens: number;
  /** Timings in milliseconds: prompt forward pass, and all decode steps. */
  prefillMs: number;
  decodeMs: number;
}

export interface Generator {
  model: LlamaModel;
  tokenizer: TextTokenizer;
  kv: KvCache;
}

function checkRequest(g: Generator, r: GenerationRequest): void {
  const maxLen = g.model.config.maxPositionEmbeddings;
  if (r.promptIds.length === 0) throw new RangeError("The prompt must have at least one token");
  if (!Number.isInteger(r.maxTokens) || r.maxTokens < 1) {
    throw new RangeError(`max_tokens must be a positive integer, got ${r.maxTokens}`);
  }
  const vocab = g.model.config.vocabSize;
  const bad = r.promptIds.find((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
  if (bad !== undefined) {
    throw new RangeError(`Token id ${bad} is outside the vocabulary [0, ${vocab})`);
  }
  const total = r.promptIds.length + r.maxTokens;
  if (total > maxLen) {
    throw new ContextLengthError(
      `The prompt (${r.promptIds.length} tokens) plus max_tokens (${r.maxTokens}) is ${total} ` +
        `tokens, more than the model's context length of ${maxLen}`,
    );
  }
  if (total > g.kv.numSlots) {
    throw new ContextLengthError(
      `The prompt plus max_tokens needs ${total} KV slots; the cache has ${g.kv.numSlots}`,
    );
  }
}

/** One sequence's step input: `tokens` are new, appended after `seq`'s cached tokens. */
function singleSequenceBatch(seq: SequenceBlocks, tokens: number[]): ForwardBatch {
  const start = seq.numTokens;
  const slots = seq.append(tokens.length);
  const n = tokens.length;
  return {
    tokenIds: Int32Array.from(tokens),
    positions: Int32Array.from({ length: n }, (_, i) => start + i),
    slotMapping: Int32Array.from(slots),
    seqLens: Int32Array.of(seq.numTokens),
    queryStart: Int32Array.of(0, n),
    blockTables: Int32Array.from(seq.blockTable),
    maxBlocksPerSeq: seq.blockTable.length,
    logitRows: Int32Array.of(n - 1),
  };
}

/**
 * Generates for one request, yielding each token with the text it completes; returns the result.
 * The KV blocks are released when the generator finishes or is abandoned.
 */
export function* generate(
  g: Generator,
  request: GenerationRequest,
): globalThis.Generator<GenerationChunk, GenerationResult> {
  checkRequest(g, request);
  const sampler = new Sampler(request.sampling);
  const stopIds = new Set([...(request.stopTokenIds ?? [])]);
  if (!request.ignoreEos) { for (const id of g.tokenizer.eosIds) stopIds.add(id); }
  const stopper = new StopStringMatcher(request.stopStrings ?? []);
  const detok = new IncrementalDetokenizer(g.tokenizer, { continuesPrompt: true });
  const allocator = new BlockAllocator(g.kv.numBlocks);
  const seq = new SequenceBlocks(allocator, g.kv.blockSize);
  const tokenIds: number[] = [];
  // The penalties see the prompt and the output so far.
  const history = { tokenIds: [...request.promptIds], numPromptTokens: request.promptIds.length };
  let text = "";
  let finishReason: FinishReason = "length";
  let prefillMs = 0;
  let decodeMs = 0;
  let stoppedByString = false;
  try {
    let input = request.promptIds;
    while (tokenIds.length < request.maxTokens) {
      const started = performance.now();
      const logits = g.model.forward(singleSequenceBatch(seq, input), g.kv);
      const token = sampler.sample(logits, history);
      const elapsed = performance.now() - started;
      if (tokenIds.length === 0) prefillMs = elapsed;
      else decodeMs += elapsed;

      if (stopIds.has(token)) {
        finishReason = "stop";
        break;
      }
      tokenIds.push(token);
      history.tokenIds.push(token);
      const piece = stopper.push(detok.push(token));
      text += piece.text;
      yield { tokenId: token, text: piece.text };
      if (piece.stopped) {
        finishReason = "stop";
        stoppedByString = true;
        break;
      }
      input = [token];
    }
    if (!stoppedByString) {
      // Bytes of an unfinished character and a held-back stop prefix are final now.
      const rest = stopper.push(detok.flush());
      const tail = rest.stopped ? rest.text : rest.text + stopper.flush();
      if (rest.stopped) finishReason = "stop";
      if (tail) {
        text += tail;
        yield { tokenId: null, text: tail };
      }
    }
  } finally {
    seq.release();
  }
  return {
    tokenIds,
    text,
    finishReason,
    numPromptTokens: request.promptIds.length,
    prefillMs,
    decodeMs,
  };
}

/** Runs a request to the end without streaming and returns its result. */
export function generateAll(g: Generator, request: GenerationRequest): GenerationResult {
  const stream = generate(g, request);
  let step = stream.next();
  while (!step.done) step = stream.next();
  return step.value;
}
