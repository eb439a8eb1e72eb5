// Per-request KV block tables on top of the block pool: prefix-cache lookup at admission, slot
// reservation each step, caching of newly full blocks, fork for n > 1 samples and copy-on-write.
//
// The step contract (the scheduler's side):
//   1. New request: `findCachedPrefix(req)`, then `allocateSlots(req, n, prefix)` with
//      `req.numComputedTokens === 0`; on success set `req.numComputedTokens = prefix.numTokens`.
//      Running request: `allocateSlots(req, n)`. Either returns false, changing nothing, when the
//      pool is short; preempt someone (`free`) and retry, or leave the request waiting.
//   2. Model runner: `takePendingCopies()` and copy those blocks on the device before the forward
//      pass, which writes K/V at `slotFor(req.id, p)` for the scheduled positions.
//   3. After the step: advance `req.numComputedTokens` and call `commitComputed(req, it)`.
import { type BlockHash, type BlockHashFn, hashBlockTokens } from "./block_hash.ts";
import { BlockPool, KvBlock, rootChainKey } from "./block_pool.ts";

/** What the manager needs to know about a request. */
export interface KvRequest {
  readonly id: string;
  /** Prompt plus output so far. */
  readonly tokenIds: ArrayLike<number>;
  /** Tokens whose K/V are already in the cache. */
  readonly numComputedTokens: number;
  /** Requests with different salts never share cached blocks. */
  readonly cacheSalt?: string;
}

/** Cached full blocks covering a request's first `numTokens` tokens. */
export interface CachedPrefix {
  readonly blocks: readonly KvBlock[];
  readonly numTokens: number;
  readonly blockHashes: readonly BlockHash[];
  /** The blocks' chain keys when found; a mismatch at admission means the prefix went stale. */
  readonly chainKeys: readonly string[];
}

/** Copy block `src` to block `dst` on the device (all layers, K and V). */
export interface BlockCopy {
  src: number;
  dst: number;
}

export interface KvCacheManagerStats {
  /** Prompt tokens looked up in the prefix cache. */
  prefixQueries: number;
  /** Of those, tokens served from it. */
  prefixHits: number;
}

export interface KvCacheManagerOptions {
  /** Defaults to `hashBlockTokens`; tests pass colliding ones. */
  hashBlock?: BlockHashFn;
}

interface RequestBlocks {
  blocks: KvBlock[];
  /** Hashes and chain keys of the leading full blocks whose chain to the root is intact. */
  blockHashes: BlockHash[];
  chainKeys: string[];
  /** Full blocks `commitComputed` has already looked at. */
  numCommittedBlocks: number;
  numCommittedTokens: number;
  /** Tokens the table has slots for. */
  numReservedTokens: number;
}

interface PendingCopy {
  src: KvBlock;
  dst: KvBlock;
}

const EMPTY_PREFIX: CachedPrefix = Object.freeze({
  blocks: [],
  numTokens: 0,
  blockHashes: [],
  chainKeys: [],
});

export class KvCacheManager {
  readonly pool: BlockPool;
  readonly blockSize: number;
  #hashBlock: BlockHashFn;
  #requests = new Map<string, RequestBlocks>();
  // A copy source is pinned (one extra ref) until the runner takes the copy, so it can't be
  // handed out, and overwritten, before the device reads it.
  #pending: PendingCopy[] = [];
  #pinsBySrc = new Map<KvBlock, number>();

  constructor(pool: BlockPool, blockSize: number, options: KvCacheManagerOptions = {}) {
    if (!(pool instanceof BlockPool)) {
      throw new TypeError("Expected a BlockPool");
    }
    if (!Number.isInteger(blockSize) || blockSize <= 0) {
      throw new RangeError(`Expected a positive integer block size, got ${blockSize}`);
    }
    this.pool = pool;
    this.blockSize = blockSize;
    this.#hashBlock = options.hashBlock ?? hashBlockTokens;
  }

  /** Blocks the pool can ever hand out (all but the null block). */
  get numUsableBlocks(): number {
    return this.pool.numUsableBlocks;
  }

  get numFreeBlocks(): number {
    return this.pool.numFreeBlocks;
  }

  /** Fraction of usable blocks held, in [0, 1]. */
  get usage(): number {
    return this.pool.usage;
  }

  get stats(): KvCacheManagerStats {
    const s = this.pool.prefixCacheStats;
    return { prefixQueries: s.numQueryTokens, prefixHits: s.numHitTokens };
  }

  get numRequests(): number {
    return this.#requests.size;
  }

  has(reqId: string): boolean {
    return this.#requests.has(reqId);
  }

  /**
   * The longest run of cached full blocks matching the request's leading tokens. Never the whole
   * sequence: the last token is always recomputed so the step yields its logits. Call
   * `allocateSlots` with the result before anything else touches the pool: free cached blocks in
   * it can be evicted by any allocation.
   */
  findCachedPrefix(req: KvRequest): CachedPrefix {
    checkRequest(req);
    if (!this.pool.enablePrefixCaching) return EMPTY_PREFIX;
    const bs = this.blockSize;
    const numTokens = req.tokenIds.length;
    const maxBlocks = Math.floor((numTokens - 1) / bs);
    const blocks: KvBlock[] = [];
    const blockHashes: BlockHash[] = [];
    const chainKeys: string[] = [];
    const extraKeys = saltKeys(req.cacheSalt);
    let parentHash: BlockHash | null = null;
    let parentKey = rootChainKey(extraKeys);
    for (let i = 0; i < maxBlocks; i++) {
      const tokens = sliceTokens(req.tokenIds, i * bs, (i + 1) * bs);
      const hash = this.#hashBlock(parentHash, tokens, i === 0 ? extraKeys : undefined);
      const block = this.pool.lookup(hash, tokens, parentKey);
      if (block === undefined) break;
      blocks.push(block);
      blockHashes.push(hash);
      chainKeys.push(block.chainKey!);
      parentHash = hash;
      parentKey = block.chainKey!;
    }
    this.pool.recordPrefixQuery({
      numQueryTokens: numTokens,
      numHitTokens: blocks.length * bs,
      numQueryBlocks: maxBlocks,
      numHitBlocks: blocks.length,
    });
    return { blocks, numTokens: blocks.length * bs, blockHashes, chainKeys };
  }

  /**
   * Makes sure the request's table has slots for its computed tokens (plus `cachedPrefix` at
   * first admission) plus `numNewTokens`, which may run past the known tokens (a static reservation
   * for the whole output), and that every block those new tokens land in is owned
   * by this request alone (copy-on-write). Returns false, changing nothing, when the pool is short.
   */
  allocateSlots(req: KvRequest, numNewTokens: number, cachedPrefix?: CachedPrefix): boolean {
    checkRequest(req);
    if (!Number.isInteger(numNewTokens) || numNewTokens < 0) {
      throw new RangeError(`Expected a non-negative integer token count, got ${numNewTokens}`);
    }
    const bs = this.blockSize;
    const state = this.#requests.get(req.id);
    const prefix = cachedPrefix ?? EMPTY_PREFIX;
    const isAdmission = state === undefined || state.blocks.length === 0;
    if (isAdmission) {
      if (req.numComputedTokens !== 0) {
        throw new RangeError(
          `Request ${req.id} has no blocks yet, so it must have 0 computed tokens, got ${req.numComputedTokens}`,
        );
      }
      this.#checkPrefix(req, prefix);
    } else {
      if (prefix.blocks.length > 0) {
        throw new RangeError(
          `A cached prefix only applies at admission; request ${req.id} already has blocks`,
        );
      }
      if (req.numComputedTokens > state.numReservedTokens) {
        throw new RangeError(
          `Request ${req.id} claims ${req.numComputedTokens} computed tokens but has slots for ${state.numReservedTokens}`,
        );
      }
    }
    const writeStart = isAdmission ? prefix.numTokens : req.numComputedTokens;
    const numTokens = writeStart + numNewTokens;
    const table = isAdmission ? prefix.blocks : state.blocks;
    const numNewBlocks = Math.max(0, Math.ceil(numTokens / bs) - table.length);
    // Blocks the new tokens will land in that someone else holds, or that are in the prefix
    // cache: cached K/V is immutable. (A block can be cached and in our write range when it was
    // shared by fork with reserved, uncomputed slots, and the other holder filled it first.)
    const shared: number[] = [];
    if (numNewTokens > 0) {
      const end = Math.min(table.length, Math.ceil(numTokens / bs));
      for (let i = Math.floor(writeStart / bs); i < end; i++) {
        if (this.#numTableRefs(table[i]) > 1 || table[i].isCached) shared.push(i);
      }
    }
    // Touching a free cached prefix block takes it out of the free queue.
    let numRevived = 0;
    for (const block of prefix.blocks) if (block.refCount === 0) numRevived++;
    if (numNewBlocks + shared.length > this.pool.numFreeBlocks - numRevived) return false;

    let entry = state;
    if (entry === undefined || isAdmission) {
      this.pool.touch(prefix.blocks);
      entry = {
        blocks: [...prefix.blocks],
        blockHashes: [...prefix.blockHashes],
        chainKeys: [...prefix.chainKeys],
        numCommittedBlocks: prefix.blocks.length,
        numCommittedTokens: prefix.numTokens,
        numReservedTokens: prefix.numTokens,
      };
      this.#requests.set(req.id, entry);
    }
    const fresh = this.pool.allocate(numNewBlocks + shared.length);
    for (const i of shared) {
      const old = entry.blocks[i];
      const dst = fresh.pop()!;
      entry.blocks[i] = dst;
      // Only positions before writeStart hold this request's KV; a block wholly past it needs a
      // fresh block but nothing copied.
      if (i * bs < writeStart) {
        // If `old` is itself waiting to be filled by a pending copy, copy from that copy's source:
        // the device may run copies in parallel, so no copy may read another's destination.
        const src = this.#pending.find((c) => c.dst === old)?.src ?? old;
        this.pool.touch([src]);
        this.#pinsBySrc.set(src, (this.#pinsBySrc.get(src) ?? 0) + 1);
        this.#pending.push({ src, dst });
      }
      this.pool.free([old]);
    }
    entry.blocks.push(...fresh);
    entry.numReservedTokens = Math.max(entry.numReservedTokens, numTokens);
    return true;
  }

  /**
   * Records that the request's first `numComputedTokens` tokens now have K/V on the device, and
   * puts each newly full block in the prefix cache. Partial blocks are never cached or shared.
   */
  commitComputed(req: KvRequest, numComputedTokens: number): void {
    checkRequest(req);
    const state = this.#get(req.id);
    if (
      !Number.isInteger(numComputedTokens) || numComputedTokens < state.numCommittedTokens ||
      numComputedTokens > state.numReservedTokens || numComputedTokens > req.tokenIds.length
    ) {
      throw new RangeError(
        `Expected computed tokens for ${req.id} in [${state.numCommittedTokens}, ${state.numReservedTokens}], got ${numComputedTokens}`,
      );
    }
    state.numCommittedTokens = numComputedTokens;
    const bs = this.blockSize;
    const numFull = Math.floor(numComputedTokens / bs);
    if (!this.pool.enablePrefixCaching) {
      state.numCommittedBlocks = numFull;
      return;
    }
    const extraKeys = saltKeys(req.cacheSalt);
    for (let i = state.numCommittedBlocks; i < numFull; i++) {
      // Once a block could not be cached (a collision), its descendants have no verifiable chain.
      if (state.chainKeys.length !== i) break;
      const tokens = sliceTokens(req.tokenIds, i * bs, (i + 1) * bs);
      const parentHash = i === 0 ? null : state.blockHashes[i - 1];
      const parentKey = i === 0 ? rootChainKey(extraKeys) : state.chainKeys[i - 1];
      const hash = this.#hashBlock(parentHash, tokens, i === 0 ? extraKeys : undefined);
      const block = state.blocks[i];
      // A block shared through fork may already have been cached by its other holder.
      const holder = block.isCached
        ? this.pool.lookup(hash, tokens, parentKey) === block ? block : undefined
        : this.pool.cacheFullBlock(block, hash, tokens, parentKey);
      if (holder === undefined) break;
      state.blockHashes.push(hash);
      state.chainKeys.push(holder.chainKey!);
    }
    state.numCommittedBlocks = numFull;
  }

  /**
   * Rolls the request back to its first `numTokens` tokens (speculative tokens that were
   * rejected): slots past them are dropped and blocks wholly past them go back to the pool, tail
   * first. Rolling back into a cached block keeps it cached (its K/V is unchanged); the next write
   * into it copies it first, as any write into a cached block does.
   */
  truncate(reqId: string, numTokens: number): void {
    const state = this.#get(reqId);
    if (!Number.isInteger(numTokens) || numTokens < 0 || numTokens > state.numReservedTokens) {
      throw new RangeError(
        `Expected a length in [0, ${state.numReservedTokens}] to truncate ${reqId} to, got ${numTokens}`,
      );
    }
    const bs = this.blockSize;
    const numKept = Math.ceil(numTokens / bs);
    const dropped = state.blocks.splice(numKept);
    const numFull = Math.floor(numTokens / bs);
    state.blockHashes.length = Math.min(state.blockHashes.length, numFull);
    state.chainKeys.length = Math.min(state.chainKeys.length, numFull);
    state.numCommittedBlocks = Math.min(state.numCommittedBlocks, numFull);
    state.numCommittedTokens = Math.min(state.numCommittedTokens, numTokens);
    state.numReservedTokens = numTokens;
    if (dropped.length === 0) return;
    this.pool.free(dropped.toReversed());
    this.#dropOrphanedCopies();
  }

  /** The request's block ids, position p living in block `table[floor(p / blockSize)]`. */
  blockTable(reqId: string): number[] {
    return this.#get(reqId).blocks.map((b) => b.id);
  }

  /** The cache slot for a reserved position: blockId * blockSize + offset. */
  slotFor(reqId: string, position: number): number {
    const state = this.#get(reqId);
    if (!Number.isInteger(position) || position < 0 || position >= state.numReservedTokens) {
      throw new RangeError(
        `Expected a position in [0, ${state.numReservedTokens}) for ${reqId}, got ${position}`,
      );
    }
    const bs = this.blockSize;
    return state.blocks[Math.floor(position / bs)].id * bs + position % bs;
  }

  /**
   * Releases the request's blocks, tail first, so its last blocks are evicted before the prefix
   * others may share. Freeing an unknown or already freed id is a no-op that returns false, so
   * cancel and finish can race without bookkeeping.
   */
  free(reqId: string): boolean {
    checkId(reqId);
    const state = this.#requests.get(reqId);
    if (state === undefined) return false;
    this.#requests.delete(reqId);
    this.pool.free(state.blocks.toReversed());
    this.#dropOrphanedCopies();
    return true;
  }

  // A pending copy into a block nobody holds any more would write into a block that may be
  // handed out again this very step.
  #dropOrphanedCopies(): void {
    const orphaned = this.#pending.filter((c) => c.dst.refCount === 0);
    if (orphaned.length > 0) {
      this.#pending = this.#pending.filter((c) => c.dst.refCount > 0);
      this.#unpin(orphaned);
    }
  }

  /**
   * Makes `childId` share all of the parent's blocks (n > 1 sampling). The child request must
   * start with the parent's tokens and computed-token count; the first write either makes into a
   * shared block triggers copy-on-write.
   */
  fork(parentId: string, childId: string): void {
    const parent = this.#get(parentId);
    checkId(childId);
    if (this.#requests.has(childId)) {
      throw new RangeError(`Request ${childId} already has blocks; fork needs a new id`);
    }
    this.pool.touch(parent.blocks);
    this.#requests.set(childId, {
      blocks: [...parent.blocks],
      blockHashes: [...parent.blockHashes],
      chainKeys: [...parent.chainKeys],
      numCommittedBlocks: parent.numCommittedBlocks,
      numCommittedTokens: parent.numCommittedTokens,
      numReservedTokens: parent.numReservedTokens,
    });
  }

  /**
   * The device copies to run before the next forward pass, in no particular order (no copy reads
   * another's destination). Clears them and unpins their sources.
   */
  takePendingCopies(): BlockCopy[] {
    const pending = this.#pending;
    this.#pending = [];
    this.#unpin(pending);
    return pending.map((c) => ({ src: c.src.id, dst: c.dst.id }));
  }

  #unpin(copies: PendingCopy[]): void {
    for (const { src } of copies) {
      const pins = this.#pinsBySrc.get(src)!;
      if (pins === 1) this.#pinsBySrc.delete(src);
      else this.#pinsBySrc.set(src, pins - 1);
    }
    this.pool.free(copies.map((c) => c.src));
  }

  #numTableRefs(block: KvBlock): number {
    return block.refCount - (this.#pinsBySrc.get(block) ?? 0);
  }

  #get(reqId: string): RequestBlocks {
    checkId(reqId);
    const state = this.#requests.get(reqId);
    if (state === undefined) throw new RangeError(`Unknown request ${reqId}`);
    return state;
  }

  // A prefix is only valid if every block still holds what findCachedPrefix saw, for this
  // request's tokens and salt; otherwise the request would read someone else's K/V.
  #checkPrefix(req: KvRequest, prefix: CachedPrefix): void {
    const bs = this.blockSize;
    const { blocks, chainKeys, blockHashes } = prefix;
    if (
      prefix.numTokens !== blocks.length * bs || chainKeys.length !== blocks.length ||
      blockHashes.length !== blocks.length || prefix.numTokens >= req.tokenIds.length
    ) {
      throw new RangeError(
        `Expected a cached prefix from findCachedPrefix for ${req.id}, got ${prefix.numTokens} tokens in ${blocks.length} blocks`,
      );
    }
    let parentKey = rootChainKey(saltKeys(req.cacheSalt));
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i];
      if (!(block instanceof KvBlock) || block !== this.pool.block(block.id)) {
        throw new TypeError("Expected cached prefix blocks of this manager's pool");
      }
      const tokens = sliceTokens(req.tokenIds, i * bs, (i + 1) * bs);
      if (
        block.chainKey !== chainKeys[i] || block.parentChainKey !== parentKey ||
        block.hash !== blockHashes[i] || !sameTokens(block.tokenIds!, tokens)
      ) {
        throw new RangeError(
          `The cached prefix for ${req.id} is stale at block ${i}; call findCachedPrefix again`,
        );
      }
      parentKey = block.chainKey!;
    }
  }
}

function checkId(reqId: string): void {
  if (typeof reqId !== "string" || reqId.length === 0) {
    throw new TypeError(`Expected a non-empty request id string, got ${String(reqId)}`);
  }
}

function checkRequest(req: KvRequest): void {
  if (req === null || typeof req !== "object") throw new TypeError("Expected a request object");
  checkId(req.id);
  const tokens = req.tokenIds;
  if (tokens === null || typeof tokens !== "object" || typeof tokens.length !== "number") {
    throw new TypeError(`Expected token ids for request ${req.id} to be an array`);
  }
  if (tokens.length === 0) throw new RangeError(`Request ${req.id} has no tokens`);
  const n = req.numComputedTokens;
  if (!Number.isInteger(n) || n < 0 || n > tokens.length) {
    throw new RangeError(
      `Expected computed tokens for ${req.id} in [0, ${tokens.length}], got ${n}`,
    );
  }
  if (req.cacheSalt !== undefined && typeof req.cacheSalt !== "string") {
    throw new TypeError(`Expected the cache salt of ${req.id} to be a string`);
  }
}

function saltKeys(salt: string | undefined): string[] {
  return salt === undefined ? [] : [salt];
}

function sliceTokens(tokens: ArrayLike<number>, start: number, end: number): number[] {
  return Array.prototype.slice.call(tokens, start, end) as number[];
}

function sameTokens(a: Int32Array, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
