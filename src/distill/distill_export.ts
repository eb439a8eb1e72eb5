// A teacher's soft targets for distillation: for every position of every text, the top-K next
// tokens and their logprobs, from the prefill pass that computes the text (prompt logprobs), many
// texts per step, optionally chosen layers' hidden states from the same pass, and the safetensors
// layout they are written in (docs/distill.md).
import type { LLMEngine } from "../engine/engine.ts";
import type { RequestParams } from "../engine/request.ts";
import type { TensorData } from "../formats/safetensors.ts";

/** One text's targets. Row p is the teacher's distribution of token p + 1 given tokens 0..p. */
export interface TeacherTargets {
  /** [n] the text's tokens. */
  tokenIds: Int32Array;
  /** [n, K] the K most likely next tokens at each position, most likely first. */
  topkIds: Int32Array;
  /** [n, K] their log-probabilities (log softmax over the whole vocabulary). */
  topkLogprobs: Float32Array;
  /** Per exported layer (TeacherOptions.hiddenLayers' order): [n, hidden] its output at each position. */
  hidden?: Float32Array[];
}

export interface TeacherOptions {
  topK: number;
  /** Texts in the engine at once; the scheduler batches their prefills. */
  maxInFlight: number;
  /**
   * Also export these decoder layers' outputs; they must be the engine's `captureLayers`, in
   * its order (each sequence's rows come out of the same prefill pass as its logits).
   */
  hiddenLayers?: readonly number[];
  onDone?: (numDone: number) => void;
}

/**
 * The engine parameters that return every position's top K in one pass over the text: prompt
 * logprobs give rows 0..n-2 (each prompt row keeps its logits), and one greedy sampled token's
 * logprobs give row n-1 from the same last row, in the same step. `ignoreEos` keeps the sample
 * (a stop token would not be appended, and would carry no logprobs).
 */
export function teacherParams(topK: number, hiddenStates = false): RequestParams {
  return {
    maxTokens: 1,
    sampling: { temperature: 0, topK: 0, topP: 1, minP: 0 },
    ignoreEos: true,
    logprobs: topK,
    promptLogprobs: topK,
    ...(hiddenStates ? { promptHiddenStates: true } : {}),
  };
}

/** Runs every text through `engine` and returns their targets in input order. */
export function teacherTopK(
  engine: LLMEngine,
  texts: readonly (readonly number[])[],
  options: TeacherOptions,
): TeacherTargets[] {
  const { topK } = options;
  const numHidden = options.hiddenLayers?.length ?? 0;
  const params = teacherParams(topK, numHidden > 0);
  const results: TeacherTargets[] = new Array(texts.length);
  const prefix = `distill-${crypto.randomUUID()}-`;
  let next = 0;
  let numOpen = 0;
  let numDone = 0;
  while (numDone < texts.length) {
    while (numOpen < options.maxInFlight && next < texts.length) {
      engine.addRequest(`${prefix}${next}`, texts[next], params);
      next++;
      numOpen++;
    }
    if (!engine.hasWork) throw new Error("The engine stopped before every text was computed");
    for (const out of engine.step()) {
      if (!out.requestId.startsWith(prefix) || !out.finished) continue;
      const i = Number(out.requestId.slice(prefix.length));
      const rows = [...(out.promptLogprobs ?? []), ...(out.logprobs ?? [])];
      const n = texts[i].length;
      if (rows.length !== n) {
        throw new Error(`Text ${i} has ${n} tokens but the engine returned ${rows.length} rows`);
      }
      const target: TeacherTargets = {
        tokenIds: Int32Array.from(texts[i]),
        topkIds: new Int32Array(n * topK),
        topkLogprobs: new Float32Array(n * topK),
      };
      rows.forEach((row, p) => {
        row.top.forEach((t, k) => {
          target.topkIds[p * topK + k] = t.tokenId;
          target.topkLogprobs[p * topK + k] = t.logprob;
        });
      });
      if (numHidden > 0) {
        const hidden = out.promptHiddenStates;
        if (hidden === undefined || hidden.length !== numHidden) {
          throw new Error(
            `Text ${i}: the engine returned ${hidden?.length ?? 0} hidden-state layers, ` +
              `expected ${numHidden}`,
          );
        }
        target.hidden = hidden;
      }
      results[i] = target;
      numOpen--;
      numDone++;
      options.onDone?.(numDone);
    }
  }
  return results;
}

/** Metadata every export carries (all values are strings, as safetensors requires). */
export interface DistillMetadata {
  model: string;
  topK: number;
  /** The exported layers (0-based decoder layer indices) and the model's hidden size. */
  hiddenLayers?: readonly number[];
  hiddenSize?: number;
  /** Each text's id from the input (its `id` field, or its 1-based line number). */
  ids: string[];
}

/** The tensors and `__metadata__` of an export (layout in docs/distill.md). */
export function distillTensors(
  targets: readonly TeacherTargets[],
  meta: DistillMetadata,
): { tensors: TensorData[]; metadata: Record<string, string> } {
  const bytes = (a: Int32Array | Float32Array) =>
    new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const tensors: TensorData[] = [];
  targets.forEach((t, i) => {
    const n = t.tokenIds.length;
    tensors.push(
      { name: `t${i}.token_ids`, dtype: "I32", shape: [n], data: bytes(t.tokenIds) },
      { name: `t${i}.topk_ids`, dtype: "I32", shape: [n, meta.topK], data: bytes(t.topkIds) },
      {
        name: `t${i}.topk_logprobs`,
        dtype: "F32",
        shape: [n, meta.topK],
        data: bytes(t.topkLogprobs),
      },
    );
    (meta.hiddenLayers ?? []).forEach((layer, k) => {
      const rows = t.hidden?.[k];
      if (rows === undefined || rows.length !== n * meta.hiddenSize!) {
        throw new RangeError(`Text ${i} lacks layer ${layer}'s [${n}, ${meta.hiddenSize}] rows`);
      }
      tensors.push({
        name: `t${i}.hidden.${layer}`,
        dtype: "F32",
        shape: [n, meta.hiddenSize!],
        data: bytes(rows),
      });
    });
  });
  const metadata = {
    format: "denollm-distill-topk/1",
    model: meta.model,
    top_k: String(meta.topK),
    num_texts: String(targets.length),
    ids: JSON.stringify(meta.ids),
    num_tokens: JSON.stringify(targets.map((t) => t.tokenIds.length)),
    positions: "row p of t{i}.topk_* is the distribution of token p+1 given tokens 0..p",
    ...(meta.hiddenLayers?.length
      ? {
        hidden_layers: JSON.stringify(meta.hiddenLayers),
        hidden_size: String(meta.hiddenSize),
        hidden: "row p of t{i}.hidden.{l} is decoder layer l's output (the residual stream, " +
          "before the final norm) at token p",
      }
      : {}),
  };
  return { tensors, metadata };
}
