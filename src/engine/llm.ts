// The serving engine stepped in this thread, for the CLI, tests and benchmarks: the same
// scheduler, KV manager and executor the daemon serves with, without the worker and HTTP around it.
import type { NativeBackend } from "../../ffi/native.ts";
import type { LoadedModel } from "../model/load.ts";
import type { LLMEngine } from "./engine.ts";
import {
  createLocalEngine,
  type EngineOptions,
  type LocalEngine,
  type LocalEngineOptions,
  startLocalEngine,
} from "./local_engine.ts";
import type { FinishReason, RequestOutput, RequestParams } from "./request.ts";

/** One request for `LLM.generate`. */
export interface GenerationRequest extends RequestParams {
  promptIds: readonly number[];
}

/** A finished sample: its tokens and text, why it ended, and when its tokens came. */
export interface GenerationResult {
  tokenIds: number[];
  text: string;
  finishReason: FinishReason;
  numPromptTokens: number;
  /** From the first step that scheduled it to its first token (prefill), then to its end. */
  prefillMs: number;
  decodeMs: number;
}

export class LLM {
  readonly engine: LLMEngine;
  readonly local: LocalEngine;
  #nextId = 0;
  #release: () => void;

  private constructor(local: LocalEngine, release: () => void) {
    this.local = local;
    this.engine = local.engine;
    this.#release = release;
  }

  /** Opens the backend and loads the model; `release()` frees all of it. */
  static async load(options: EngineOptions, load: { showProgress?: boolean } = {}): Promise<LLM> {
    const started = await startLocalEngine(options, load);
    return new LLM(started, started.release);
  }

  /** An engine over a model loaded by the caller, who keeps owning it. */
  static over(
    backend: NativeBackend,
    loaded: Pick<LoadedModel, "config" | "model" | "tokenizer">,
    options: LocalEngineOptions,
    parts: Parameters<typeof createLocalEngine>[3] = {},
  ): LLM {
    const local = createLocalEngine(backend, loaded, options, parts);
    return new LLM(local, local.release);
  }

  /**
   * Submits a request and yields its outputs as the engine steps; other requests already in the
   * engine run in the same steps. Abandoning the iterator cancels the request.
   */
  *stream(promptIds: readonly number[], params: RequestParams): Generator<RequestOutput> {
    const id = `llm-${this.#nextId++}`;
    this.engine.addRequest(id, promptIds, params);
    let remaining = params.n ?? 1;
    try {
      while (remaining > 0) {
        if (!this.engine.hasWork) throw new Error(`The engine stopped before request ${id} ended`);
        for (const output of this.engine.step()) {
          if (output.requestId !== id) continue;
          if (output.finished) remaining--;
          yield output;
        }
      }
    } finally {
      if (remaining > 0) this.engine.abort(id);
    }
  }

  /** Runs one request (sample 0 of it) to the end. */
  generate(request: GenerationRequest): GenerationResult {
    return this.generateBatch([request])[0];
  }

  /** Runs requests together, with in-flight batching, to the end; results in request order. */
  generateBatch(requests: readonly GenerationRequest[]): GenerationResult[] {
    const started = performance.now();
    const results = requests.map((r, i) => {
      const { promptIds, ...params } = r;
      this.engine.addRequest(`batch-${this.#nextId}-${i}`, promptIds, params);
      return {
        tokenIds: [] as number[],
        text: "",
        finishReason: "length" as FinishReason,
        numPromptTokens: promptIds.length,
        firstTokenAt: undefined as number | undefined,
        endedAt: started,
        queueMs: 0,
      };
    });
    const prefix = `batch-${this.#nextId++}-`;
    let numOpen = requests.length;
    while (numOpen > 0 && this.engine.hasWork) {
      const outputs = this.engine.step();
      const now = performance.now();
      for (const out of outputs) {
        if (!out.requestId.startsWith(prefix) || out.index !== 0) continue;
        const r = results[Number(out.requestId.slice(prefix.length))];
        r.tokenIds.push(...out.newTokenIds);
        r.text += out.textDelta;
        r.queueMs = out.queueMs ?? r.queueMs;
        if (out.newTokenIds.length > 0) r.firstTokenAt ??= now;
        if (out.finished) {
          r.finishReason = out.finishReason!;
          r.endedAt = now;
          numOpen--;
        }
      }
    }
    if (numOpen > 0) throw new Error("The engine stopped before every request ended");
    return results.map((r) => {
      const scheduledAt = started + r.queueMs;
      const firstAt = r.firstTokenAt ?? r.endedAt;
      return {
        tokenIds: r.tokenIds,
        text: r.text,
        finishReason: r.finishReason,
        numPromptTokens: r.numPromptTokens,
        prefillMs: firstAt - scheduledAt,
        decodeMs: r.endedAt - firstAt,
      };
    });
  }

  release(): void {
    this.#release();
  }
}
