// The draft-model proposer: a smaller model with the target's vocabulary runs k cheap decode
// steps ahead of the target. Any model the loader reads serves (HF directory, GGUF, and once
// quantized weights load, a quantized copy of the target itself).
//
// Its KV lives in a pool of its own (a second KvCache, BlockPool and KvCacheManager), not in the
// target's block pool: the draft's layers and heads differ, so its blocks have another shape and
// size; a short draft pool then only turns speculation off for a request and never preempts the
// target's work; and the target's prefix cache and block tables stay exactly as without
// speculation. The draft keeps, per request, the tokens it has computed K/V for; before each
// proposal it rolls back to where they still agree with the request's real tokens, so rejected
// drafts, preemption and anything else that rewrites the target's view are caught up the same way.
import type { DTypeId, NativeBackend } from "../../../ffi/native.ts";
import { KvCache } from "../../kv/kv_cache.ts";
import type { LoadedModel } from "../../model/load.ts";
import { Sampler } from "../../sampling.ts";
import { BlockPool } from "../block_pool.ts";
import { LocalExecutor, stepCapacity } from "../executor.ts";
import { buildForwardBatch } from "../forward_batch.ts";
import { KvCacheManager } from "../kv_cache_manager.ts";
import { type EngineRequest, sampleSeed } from "../request.ts";
import type { ScheduledRequest } from "../scheduler.ts";
import type { DraftProposal, Proposer } from "./proposer.ts";

/** How to size the draft's own KV cache and steps. */
export interface DraftModelOptions {
  blockSize: number;
  /** Blocks of the draft's pool, block 0 included. */
  numKvBlocks: number;
  kvCacheDtype: DTypeId;
  maxNumBatchedTokens: number;
  /** Requests proposed for in one step at most. */
  maxNumSeqs: number;
  maxModelLen: number;
  /** The target's logit rows: the draft must have the same vocabulary. */
  targetVocabSize: number;
  /** No CUDA graphs for the draft's decode steps either (--enforce-eager). */
  enforceEager?: boolean;
}

/** One request as the draft sees it: the tokens it has K/V for, and its own sampler. */
interface DraftSeq {
  readonly id: string;
  tokenIds: number[];
  numComputedTokens: number;
  readonly numPromptTokens: number;
  readonly sampler: Sampler;
}

export class DraftModelProposer implements Proposer {
  readonly method = "draft";
  readonly maxModelLen: number;
  #executor: LocalExecutor;
  #kvCache: KvCache;
  #kv: KvCacheManager;
  #seqs = new Map<string, DraftSeq>();
  #kvBytes: number;

  constructor(
    backend: NativeBackend,
    draft: Pick<LoadedModel, "config" | "model">,
    options: DraftModelOptions,
  ) {
    if (draft.config.vocabSize !== options.targetVocabSize) {
      throw new RangeError(
        `A draft model needs the target's vocabulary of ${options.targetVocabSize} tokens, ` +
          `the draft has ${draft.config.vocabSize}`,
      );
    }
    this.maxModelLen = Math.min(options.maxModelLen, draft.config.maxPositionEmbeddings);
    const { blockSize, numKvBlocks } = options;
    this.#kvBytes = numKvBlocks *
      KvCache.bytesPerBlock(draft.config, blockSize, options.kvCacheDtype);
    this.#kvCache = new KvCache(backend, draft.config, {
      blockSize,
      numBlocks: numKvBlocks,
      dtype: options.kvCacheDtype,
    });
    try {
      this.#executor = new LocalExecutor(
        backend,
        { model: draft.model, kvCache: this.#kvCache },
        stepCapacity({
          maxNumBatchedTokens: options.maxNumBatchedTokens,
          maxNumSeqs: options.maxNumSeqs,
          maxModelLen: this.maxModelLen,
        }, blockSize),
        { enforceEager: options.enforceEager },
      );
    } catch (error) {
      this.#kvCache.release();
      throw error;
    }
    // No prefix cache in the draft pool: its blocks would hold drafts as well as real tokens.
    this.#kv = new KvCacheManager(
      new BlockPool(numKvBlocks, { enablePrefixCaching: false }),
      blockSize,
    );
  }

  /** Device bytes of the draft's KV cache and step buffers (its weights are the caller's). */
  get reservedBytes(): number {
    return this.#executor.reservedBytes + this.#kvBytes;
  }

  /** Blocks of the draft's pool still free (all of them once every request has ended). */
  get numFreeKvBlocks(): number {
    return this.#kv.numFreeBlocks;
  }

  get numKvBlocks(): number {
    return this.#kv.numUsableBlocks;
  }

  propose(
    requests: readonly EngineRequest[],
    numTokens: (request: EngineRequest) => number,
  ): Map<string, DraftProposal> {
    const cap = this.#executor.capacity;
    const active: {
      seq: DraftSeq;
      request: EngineRequest;
      want: number;
      proposal: DraftProposal;
    }[] = [];
    for (const request of requests.slice(0, cap.maxNumSeqs)) {
      const want = Math.min(numTokens(request), this.maxModelLen - request.numTokens);
      if (want <= 0) continue;
      active.push({
        seq: this.#sync(request),
        request,
        want,
        proposal: { tokenIds: [], dists: [] },
      });
    }
    const entries = [...active];
    const live = new Set(active.map((a) => a.seq.id));
    // Each pass: catch up on the tokens the draft has no K/V for (the whole prompt the first
    // time), one token each once caught up; a seq's last row gives its next draft token.
    while (active.length > 0) {
      let budget = cap.maxNumTokens;
      const shares: ScheduledRequest[] = [];
      const stepping: typeof active = [];
      const failed = new Set<DraftSeq>();
      for (const a of active) {
        if (budget === 0) break;
        const { seq } = a;
        const numNew = Math.min(seq.tokenIds.length - seq.numComputedTokens, budget);
        if (!this.#allocate(seq, numNew, live)) {
          failed.add(seq);
          continue;
        }
        const sample = seq.numComputedTokens + numNew === seq.tokenIds.length;
        shares.push({
          requestId: seq.id,
          start: seq.numComputedTokens,
          numNewTokens: numNew,
          tokenIds: seq.tokenIds.slice(seq.numComputedTokens, seq.numComputedTokens + numNew),
          blockIds: this.#kv.blockTable(seq.id),
          sample,
          numLogitRows: sample ? 1 : 0,
        });
        stepping.push(a);
        budget -= numNew;
      }
      if (shares.length === 0) break; // the draft pool is full: propose what there is
      const logits = this.#executor.execute(buildForwardBatch({
        scheduled: shares,
        numBatchedTokens: cap.maxNumTokens - budget,
        blockCopies: [],
        preemptedIds: [],
      }, this.#kv.blockSize));
      const vocab = this.#executor.vocabSize;
      let row = 0;
      const done = new Set<DraftSeq>();
      for (const [i, a] of stepping.entries()) {
        const s = shares[i];
        a.seq.numComputedTokens += s.numNewTokens;
        this.#kv.commitComputed(a.seq, a.seq.numComputedTokens);
        if (!s.sample) continue;
        const rowLogits = logits.subarray(row * vocab, (row + 1) * vocab);
        row++;
        const dist = a.seq.sampler.distribution(rowLogits, a.seq);
        const token = dist.isArgmax ? dist.ids[0] : a.seq.sampler.draw(dist);
        a.seq.tokenIds.push(token);
        a.proposal.tokenIds.push(token);
        a.proposal.dists!.push(dist);
        if (a.proposal.tokenIds.length >= a.want) done.add(a.seq);
      }
      // A seq the pool had no room for stops here; so does one with all its drafts.
      for (let i = active.length - 1; i >= 0; i--) {
        const seq = active[i].seq;
        if (done.has(seq) || failed.has(seq)) active.splice(i, 1);
      }
    }
    const out = new Map<string, DraftProposal>();
    for (const { seq, request, proposal } of entries) {
      if (proposal.tokenIds.length === 0) continue;
      // A greedy request's drafts are argmaxes: point masses, which verification assumes.
      out.set(request.id, seq.sampler.isGreedy ? { tokenIds: proposal.tokenIds } : proposal);
    }
    return out;
  }

  /** The request's draft state, rolled back to where it still agrees with the real tokens. */
  #sync(request: EngineRequest): DraftSeq {
    let seq = this.#seqs.get(request.id);
    if (seq === undefined) {
      const seed = request.params.sampling.seed;
      seq = {
        id: request.id,
        tokenIds: [],
        numComputedTokens: 0,
        numPromptTokens: request.numPromptTokens,
        // Its own stream: the draft's draws must not shift the target's.
        sampler: new Sampler({
          ...request.params.sampling,
          seed: seed === undefined ? undefined : sampleSeed(seed, 0x5eed + request.index),
        }),
      };
      this.#seqs.set(request.id, seq);
    }
    let same = 0;
    const limit = Math.min(seq.numComputedTokens, request.numTokens);
    while (same < limit && seq.tokenIds[same] === request.tokenIds[same]) same++;
    // The last real token is always computed again, so its row gives the first draft.
    same = Math.min(same, request.numTokens - 1);
    if (this.#kv.has(seq.id)) {
      if (same === 0) this.#kv.free(seq.id);
      else this.#kv.truncate(seq.id, same);
    }
    seq.numComputedTokens = same;
    seq.tokenIds = request.tokenIds.slice();
    return seq;
  }

  /** Slots for `numNew` more tokens; when short, drops the state of requests not proposed for. */
  #allocate(seq: DraftSeq, numNew: number, live: ReadonlySet<string>): boolean {
    if (this.#kv.allocateSlots(seq, numNew)) return true;
    for (const id of [...this.#seqs.keys()]) if (!live.has(id)) this.free(id);
    return this.#kv.allocateSlots(seq, numNew);
  }

  free(requestId: string): void {
    this.#kv.free(requestId);
    this.#seqs.delete(requestId);
  }

  release(): void {
    this.#executor.release();
    this.#kvCache.release();
  }
}
