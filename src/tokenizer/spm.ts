// SentencePiece-style BPE as llama.cpp's llm_tokenizer_spm_session runs it: merge by highest score.

import { BinaryHeap } from "./heap.ts";

/** What the SPM merge loop needs to know about a vocabulary. */
export interface SpmVocab {
  tokenToId: ReadonlyMap<string, number>;
  scores: ArrayLike<number>;
  /** The id of the byte-fallback token for `byte` (`<0xXX>`); throws when there is none. */
  byteToToken(byte: number): number;
}

interface Bigram {
  left: number;
  right: number;
  score: number;
  size: number;
}

const encoder = new TextEncoder();

/**
 * Appends the tokens of `text` (already escaped: spaces as U+2581) to `output`.
 *
 * Starts from one symbol per code point, repeatedly merges the adjacent pair whose
 * concatenation is the highest-scoring vocabulary token (ties: leftmost first), and emits
 * the bytes of any final symbol that is not a token as byte-fallback tokens.
 */
export function spmTokenize(text: string, vocab: SpmVocab, output: number[]): void {
  const starts: number[] = [];
  const lengths: number[] = [];
  for (let offset = 0; offset < text.length;) {
    const cp = text.codePointAt(offset)!;
    const n = cp > 0xffff ? 2 : 1;
    starts.push(offset);
    lengths.push(n);
    offset += n;
  }
  const numSymbols = starts.length;
  if (numSymbols === 0) return;
  const prev = starts.map((_, i) => i - 1);
  const next = starts.map((_, i) => (i + 1 < numSymbols ? i + 1 : -1));

  const queue = new BinaryHeap<Bigram>((a, b) =>
    a.score > b.score || (a.score === b.score && a.left < b.left)
  );
  const tryAddBigram = (left: number, right: number) => {
    if (left === -1 || right === -1) return;
    const size = lengths[left] + lengths[right];
    const id = vocab.tokenToId.get(text.substr(starts[left], size));
    if (id === undefined) return;
    queue.push({ left, right, score: vocab.scores[id], size });
  };

  for (let i = 1; i < numSymbols; i++) tryAddBigram(i - 1, i);

  for (let bigram = queue.pop(); bigram !== undefined; bigram = queue.pop()) {
    const { left, right } = bigram;
    // Skip pairs where either side has changed since the pair was queued.
    if (lengths[left] === 0 || lengths[right] === 0) continue;
    if (lengths[left] + lengths[right] !== bigram.size) continue;
    lengths[left] += lengths[right];
    lengths[right] = 0;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    tryAddBigram(prev[left], left);
    tryAddBigram(left, next[left]);
  }

  for (let i = 0; i !== -1; i = next[i]) {
    const piece = text.substr(starts[i], lengths[i]);
    const id = vocab.tokenToId.get(piece);
    if (id !== undefined) {
      output.push(id);
      continue;
    }
    for (const byte of encoder.encode(piece)) output.push(vocab.byteToToken(byte));
  }
}
