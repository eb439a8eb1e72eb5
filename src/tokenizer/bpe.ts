// Byte-level BPE merging as llama.cpp's llm_tokenizer_bpe_session does it: lowest merge rank first.

import { BinaryHeap } from "./heap.ts";

/** What the BPE merge loop needs to know about a vocabulary. */
export interface BpeVocab {
  tokenToId: ReadonlyMap<string, number>;
  /** Merge rank by `${left} ${right}`; lower merges first. */
  ranks: ReadonlyMap<string, number>;
  /** Emit a whole word that is itself a token without merging (Llama 3's `ignore_merges`). */
  ignoreMerges: boolean;
}

interface Bigram {
  left: number;
  right: number;
  text: string;
  rank: number;
}

/** Parses GGUF/tokenizer.json merges ("a b" strings or [a, b] pairs) into a rank map. */
export function mergeRanks(merges: readonly (string | readonly string[])[]): Map<string, number> {
  const ranks = new Map<string, number>();
  merges.forEach((merge, rank) => {
    let key: string;
    if (typeof merge === "string") {
      // llama.cpp splits at the first space after the first byte.
      const pos = merge.indexOf(" ", 1);
      key = pos === -1 ? " " : `${merge.slice(0, pos)} ${merge.slice(pos + 1)}`;
    } else {
      key = `${merge[0]} ${merge[1]}`;
    }
    if (!ranks.has(key)) ranks.set(key, rank);
  });
  return ranks;
}

/** Appends the tokens of one pre-tokenized, byte-level-encoded `word` to `output`. */
export function bpeTokenizeWord(word: string, vocab: BpeVocab, output: number[]): void {
  if (word.length === 0) return;
  if (vocab.ignoreMerges) {
    const id = vocab.tokenToId.get(word);
    if (id !== undefined) {
      output.push(id);
      return;
    }
  }
  const symbols = Array.from(word);
  const prev = symbols.map((_, i) => i - 1);
  const next = symbols.map((_, i) => (i + 1 < symbols.length ? i + 1 : -1));
  const queue = new BinaryHeap<Bigram>((a, b) =>
    a.rank < b.rank || (a.rank === b.rank && a.left < b.left)
  );
  const addBigram = (left: number, right: number) => {
    if (left === -1 || right === -1) return;
    const rank = vocab.ranks.get(`${symbols[left]} ${symbols[right]}`);
    if (rank === undefined) return;
    queue.push({ left, right, text: symbols[left] + symbols[right], rank });
  };
  for (let i = 1; i < symbols.length; i++) addBigram(i - 1, i);

  for (let bigram = queue.pop(); bigram !== undefined; bigram = queue.pop()) {
    const { left, right } = bigram;
    if (symbols[left] === "" || symbols[right] === "") continue;
    // Skip pairs where either side has changed since the pair was queued.
    if (symbols[left] + symbols[right] !== bigram.text) continue;
    symbols[left] = bigram.text;
    symbols[right] = "";
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    addBigram(prev[left], left);
    addBigram(left, next[left]);
  }

  for (let i = 0; i !== -1; i = next[i]) {
    const id = vocab.tokenToId.get(symbols[i]);
    if (id !== undefined) {
      output.push(id);
      continue;
    }
    // llama.cpp then looks up each UTF-8 byte of the piece as a one-byte token and drops misses.
    for (const b of new TextEncoder().encode(symbols[i])) {
      const byteId = b < 0x80 ? vocab.tokenToId.get(String.fromCharCode(b)) : undefined;
      if (byteId !== undefined) output.push(byteId);
    }
  }
}
