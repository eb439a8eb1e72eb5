// Property tests of speculative KV rollback: thousands of random accept/reject patterns, on the
// real scheduler, KV manager and engine over a scripted model, end with every block free and
// every reference count at zero; no prefix-cache entry ever holds a token that was rejected; and
// the output is the same as without speculation.
import assert from "node:assert/strict";
import { BlockPool } from "../src/engine/block_pool.ts";
import { LLMEngine } from "../src/engine/engine.ts";
import type { Executor } from "../src/engine/executor.ts";
import type { ForwardBatch } from "../src/engine/forward_batch.ts";
import { KvCacheManager } from "../src/engine/kv_cache_manager.ts";
import type { EngineRequest } from "../src/engine/request.ts";
import type { DraftProposal, Proposer } from "../src/engine/spec/proposer.ts";
import { GREEDY, Rng } from "../src/sampling.ts";
import type { TextTokenizer } from "../src/tokenizer/tokenizer.ts";

const VOCAB = 37;
const EOS = 1;
const BLOCK = 4;

/** The scripted model's next token after `token` at `position`: a fixed, position-mixed hash. */
function nextToken(token: number, position: number): number {
  let h = Math.imul(token + 1, 0x9e3779b1) ^ Math.imul(position + 7, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 15), 0xc2b2ae35);
  const t = 2 + ((h >>> 0) % (VOCAB - 2));
  return (h >>> 0) % 97 === 0 ? EOS : t; // an EOS now and then
}

/** An executor whose logits put the scripted next token first; it records nothing on a device. */
class ScriptedExecutor implements Executor {
  readonly vocabSize = VOCAB;
  readonly blockSize = BLOCK;
  readonly reservedBytes = 0;
  readonly hiddenSize = 1;
  readonly numKvBlocks: number;
  readonly capacity;
  #logits: Float32Array;

  constructor(numKvBlocks: number, maxRows: number) {
    this.numKvBlocks = numKvBlocks;
    this.capacity = {
      maxNumTokens: 4096,
      maxNumSeqs: 64,
      maxNumLogitRows: maxRows,
      maxBlocksPerSeq: 1024,
      blockSize: BLOCK,
    };
    this.#logits = new Float32Array(maxRows * VOCAB);
  }

  execute(batch: ForwardBatch): Float32Array {
    const rows = batch.logitRows.length;
    this.#logits.fill(0, 0, rows * VOCAB);
    for (let r = 0; r < rows; r++) {
      const i = batch.logitRows[r];
      this.#logits[r * VOCAB + nextToken(batch.tokenIds[i], batch.positions[i])] = 10;
    }
    return this.#logits.subarray(0, rows * VOCAB);
  }

  hiddenRows(): Float32Array {
    throw new Error("no pooling here");
  }

  release(): void {}
}

/** Proposes 0..k tokens: the scripted continuation, each replaced by a random token at random. */
class RandomProposer implements Proposer {
  readonly method = "ngram";
  #rng: Rng;
  #pWrong: number;
  constructor(seed: number, pWrong: number) {
    this.#rng = new Rng(seed);
    this.#pWrong = pWrong;
  }
  propose(
    requests: readonly EngineRequest[],
    numTokens: (r: EngineRequest) => number,
  ): Map<string, DraftProposal> {
    const out = new Map<string, DraftProposal>();
    for (const r of requests) {
      const k = Math.floor(this.#rng.next() * (numTokens(r) + 1));
      let token = r.tokenIds[r.numTokens - 1];
      const tokenIds: number[] = [];
      for (let j = 0; j < k; j++) {
        const right = nextToken(token, r.numTokens - 1 + j);
        token = this.#rng.next() < this.#pWrong ? 2 + Math.floor(this.#rng.next() * 35) : right;
        tokenIds.push(token);
      }
      out.set(r.id, { tokenIds });
    }
    return out;
  }
  free(): void {}
  release(): void {}
}

const encoder = new TextEncoder();
const tokenizer: TextTokenizer = {
  vocabSize: VOCAB,
  bosId: 0,
  eosIds: [EOS],
  addBos: false,
  stripLeadingSpace: false,
  encode: () => [],
  decode: (ids) => ids.map((id) => `t${id} `).join(""),
  isSpecial: (id) => id < 2,
  tokenBytes: (id) => encoder.encode(id < 2 ? "" : `t${id} `),
  tokenText: (id) => `t${id}`,
  tokenId: () => undefined,
};

interface Run {
  tokens: Map<string, number[]>;
  /** Prompt and output of every sample: the only token runs the cache may hold. */
  sequences: number[][];
  engine: LLMEngine;
  numVerifications: number;
}

function runEngine(seed: number, speculate: boolean, numKvBlocks: number): Run {
  const k = 5;
  const executor = new ScriptedExecutor(numKvBlocks, 64 * (1 + k));
  const engine = new LLMEngine({ executor, tokenizer }, {
    maxNumBatchedTokens: 48,
    maxNumSeqs: 12,
    maxNumLogitRows: 64 * (1 + k),
    maxModelLen: 160,
    ...(speculate
      ? {
        speculativeDecoding: {
          proposer: new RandomProposer(seed, 0.3),
          numSpeculativeTokens: k,
          disableBySize: 64,
        },
      }
      : {}),
  });
  const rng = new Rng(seed);
  const shared = Array.from({ length: 9 }, () => 2 + Math.floor(rng.next() * 35));
  const numRequests = 24;
  const prompts = new Map<string, number[]>();
  for (let i = 0; i < numRequests; i++) {
    const own = Array.from({ length: Math.floor(rng.next() * 14) }, () => 2 + (i % 35));
    const prompt = rng.next() < 0.5 ? [...shared, ...own] : [3 + (i % 30), ...own];
    prompts.set(`r${i}`, prompt);
    engine.addRequest(`r${i}`, prompt, {
      maxTokens: 4 + Math.floor(rng.next() * 90),
      sampling: GREEDY,
      ...(i % 7 === 0 ? { n: 2 } : {}),
      ...(i % 5 === 0 ? { minTokens: 3 } : {}),
    });
  }
  const tokens = new Map<string, number[]>();
  let steps = 0;
  while (engine.hasWork) {
    for (const out of engine.step()) {
      const key = `${out.requestId}#${out.index}`;
      tokens.set(key, [...(tokens.get(key) ?? []), ...out.newTokenIds]);
    }
    checkPool(engine.kv.pool);
    checkTables(engine, [...prompts.keys()].flatMap((id) => [id, `${id}#1`]));
    assert.ok(++steps < 20_000, "the engine must finish");
  }
  const sequences = [...tokens].map(([key, out]) => [...prompts.get(key.split("#")[0])!, ...out]);
  return {
    tokens,
    sequences,
    engine,
    numVerifications: engine.stats().specDecode?.numDrafts ?? 0,
  };
}

/** After a step a request holds blocks for its computed tokens and no more: rejected drafts' slots are gone. */
function checkTables(engine: LLMEngine, ids: string[]): void {
  for (const id of ids) {
    if (!engine.kv.has(id)) continue;
    const request = engine.scheduler.runningRequest(id);
    const numBlocks = engine.kv.blockTable(id).length;
    assert.equal(
      numBlocks,
      Math.ceil(request.numComputedTokens / BLOCK),
      `${id}: ${numBlocks} blocks for ${request.numComputedTokens} computed tokens of ${request.numTokens}, drafts ${request.draftTokenIds.length}, out ${request.numOutputTokens}`,
    );
  }
}

/** Reference counts are never negative and the free count matches the blocks at zero. */
function checkPool(pool: BlockPool): void {
  let numZero = 0;
  for (let id = 1; id < pool.numBlocks; id++) {
    const ref = pool.block(id).refCount;
    assert.ok(ref >= 0, `block ${id} has refcount ${ref}`);
    if (ref === 0) numZero++;
  }
  assert.equal(pool.numFreeBlocks, numZero, "the free queue holds exactly the unheld blocks");
}

Deno.test("random accept/reject patterns leave every block free and the output unchanged", () => {
  let numVerifications = 0;
  let numPreemptions = 0;
  for (let seed = 1; seed <= 12; seed++) {
    const numKvBlocks = seed % 2 === 0 ? 40 : 400; // small: preemption; large: the prefix cache
    const plain = runEngine(seed, false, numKvBlocks);
    const spec = runEngine(seed, true, numKvBlocks);
    assert.deepEqual(spec.tokens, plain.tokens, `seed ${seed}: same tokens`);
    const stats = spec.engine.stats();
    assert.equal(stats.numFreeKvBlocks, stats.numKvBlocks, `seed ${seed}: every block is free`);
    const pool = spec.engine.kv.pool;
    for (let id = 1; id < pool.numBlocks; id++) {
      assert.equal(pool.block(id).refCount, 0, `seed ${seed}: block ${id} is unheld`);
    }
    // Every cached block holds a block-aligned run of some request's real tokens (prompt and
    // output): a block cached from rejected drafts would hold tokens no request ended with.
    const real = new Set<string>();
    for (const seq of spec.sequences) {
      for (let i = 0; i + BLOCK <= seq.length; i += BLOCK) {
        real.add(seq.slice(i, i + BLOCK).join(","));
      }
    }
    let numCached = 0;
    for (let id = 1; id < pool.numBlocks; id++) {
      const block = pool.block(id);
      if (!block.isCached) continue;
      numCached++;
      const held = [...block.tokenIds!].join(",");
      assert.ok(real.has(held), `seed ${seed}: cached block ${id} holds [${held}], no real run`);
    }
    assert.ok(numCached > 0, "blocks were cached");
    numVerifications += spec.numVerifications;
    numPreemptions += stats.numPreemptions;
  }
  assert.ok(numVerifications > 2000, `thousands of patterns, got ${numVerifications}`);
  assert.ok(numPreemptions > 0, "some runs preempted");
});

Deno.test("KvCacheManager.truncate over random speculative steps, forks and frees", () => {
  const rng = new Rng(99);
  const pool = new BlockPool(64, { enablePrefixCaching: true });
  const kv = new KvCacheManager(pool, BLOCK);
  type Seq = { id: string; tokenIds: number[]; numComputedTokens: number };
  const seqs = new Map<string, Seq>();
  let next = 0;
  let numTruncations = 0;
  for (let op = 0; op < 5000; op++) {
    const live = [...seqs.values()];
    const choice = rng.next();
    if (live.length === 0 || choice < 0.1) {
      // A new sequence with a short prompt, often sharing a prefix with earlier ones.
      const prompt = Array.from(
        { length: 1 + Math.floor(rng.next() * 10) },
        (_, i) => rng.next() < 0.7 ? 2 + i : 2 + Math.floor(rng.next() * 30),
      );
      const seq: Seq = { id: `s${next++}`, tokenIds: prompt, numComputedTokens: 0 };
      const cached = kv.findCachedPrefix(seq);
      if (!kv.allocateSlots(seq, prompt.length - cached.numTokens, cached)) continue;
      seqs.set(seq.id, seq);
      seq.numComputedTokens = prompt.length;
      kv.commitComputed(seq, seq.numComputedTokens);
    } else if (choice < 0.15) {
      const parent = live[Math.floor(rng.next() * live.length)];
      const child: Seq = { ...parent, id: `s${next++}`, tokenIds: [...parent.tokenIds] };
      kv.fork(parent.id, child.id);
      seqs.set(child.id, child);
    } else if (choice < 0.25) {
      const seq = live[Math.floor(rng.next() * live.length)];
      kv.free(seq.id);
      seqs.delete(seq.id);
    } else {
      // A speculative step: the last token plus k drafts computed, a of them accepted.
      const seq = live[Math.floor(rng.next() * live.length)];
      const start = seq.numComputedTokens - 1;
      if (start < 0) continue;
      kv.truncate(seq.id, start); // the last token is recomputed with the drafts
      seq.numComputedTokens = start;
      const k = Math.floor(rng.next() * 6);
      if (!kv.allocateSlots(seq, 1 + k)) {
        kv.free(seq.id);
        seqs.delete(seq.id);
        continue;
      }
      kv.takePendingCopies();
      const a = Math.floor(rng.next() * (k + 1));
      for (let j = 0; j <= a; j++) seq.tokenIds.push(2 + Math.floor(rng.next() * 30));
      seq.numComputedTokens = start + 1 + a;
      kv.commitComputed(seq, seq.numComputedTokens);
      kv.truncate(seq.id, seq.numComputedTokens);
      numTruncations++;
      assert.equal(kv.blockTable(seq.id).length, Math.ceil(seq.numComputedTokens / BLOCK));
    }
    // Every held block's count is the number of tables holding it.
    const holders = new Map<number, number>();
    for (const s of seqs.values()) {
      for (const id of kv.blockTable(s.id)) holders.set(id, (holders.get(id) ?? 0) + 1);
    }
    for (let id = 1; id < pool.numBlocks; id++) {
      assert.equal(pool.block(id).refCount, holders.get(id) ?? 0, `op ${op}: block ${id}`);
    }
  }
  for (const id of seqs.keys()) kv.free(id);
  assert.equal(pool.numFreeBlocks, pool.numUsableBlocks, "every block is free");
  assert.ok(numTruncations > 2000, `thousands of rollbacks, got ${numTruncations}`);
});
