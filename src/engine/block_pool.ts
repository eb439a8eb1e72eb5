// The KV block pool (after vLLM v1's BlockPool): reference-counted blocks, an LRU free queue and
// the prefix cache index from block hash to a full, computed block.
//
// Block 0 is a null block that is never handed out, so tables can be padded with it. A free block
// may still hold cached KV: it stays findable until the LRU queue hands it out again, which is
// when its cache entry is evicted. Callers free a request's blocks tail first, so a request's last
// blocks are evicted before its first ones, which are the ones other prompts are likely to share.
import type { BlockHash } from "./block_hash.ts";
import { OutOfKvBlocksError } from "../errors.ts";

// Re-exported for the pool's callers; src/errors.ts holds the one class.
export { OutOfKvBlocksError };

/**
 * One KV block. The pool owns every field: read them freely, never write them.
 */
export class KvBlock {
  readonly id: number;
  /** Holders: request tables, plus pinned copy sources. 0 means the block is in the free queue. */
  refCount = 0;
  /** Set while the block is in the prefix cache. */
  hash: BlockHash | null = null;
  /** The token ids the block holds KV for; compared on every hit so a collision is never served. */
  tokenIds: Int32Array | null = null;
  /**
   * Unique per cache registration, never reused. A child block records its parent's chain key,
   * so a hit proves the whole prefix matches, not just this block's tokens (see `lookup`).
   */
  chainKey: string | null = null;
  parentChainKey: string | null = null;

  constructor(id: number) {
    this.id = id;
  }

  get isCached(): boolean {
    return this.hash !== null;
  }
}

export interface BlockPoolOptions {
  /** Keep full blocks findable by content hash (default true). */
  enablePrefixCaching?: boolean;
}

/** Prefix cache counters since the pool was made. */
export interface PrefixCacheStats {
  numQueryTokens: number;
  numHitTokens: number;
  numQueryBlocks: number;
  numHitBlocks: number;
}

/**
 * The chain key a sequence's first block hangs off. Extra keys (the cache salt) go in here too, so
 * requests with different salts can never share blocks, even through a hash collision.
 */
export function rootChainKey(extraKeys: readonly (string | number)[] = []): string {
  return `root${JSON.stringify(extraKeys)}`;
}

const ROOT = rootChainKey();

export class BlockPool {
  readonly numBlocks: number;
  readonly enablePrefixCaching: boolean;
  readonly nullBlock: KvBlock;
  #blocks: KvBlock[];
  // The free queue is a circular doubly linked list threaded through these arrays, with the null
  // block 0 as its sentinel: next[0] is the LRU head (evicted first), prev[0] the tail. That gives
  // O(1) removal from the middle when a prefix hit revives a free cached block.
  #prev: Int32Array;
  #next: Int32Array;
  #numFree = 0;
  #cached = new Map<BlockHash, KvBlock>();
  #numRegistrations = 0;
  #stats: PrefixCacheStats = {
    numQueryTokens: 0,
    numHitTokens: 0,
    numQueryBlocks: 0,
    numHitBlocks: 0,
  };

  constructor(numBlocks: number, options: BlockPoolOptions = {}) {
    if (!Number.isInteger(numBlocks) || numBlocks < 2) {
      throw new RangeError(
        `Expected at least 2 blocks (block 0 is the null block), got ${numBlocks}`,
      );
    }
    this.numBlocks = numBlocks;
    this.enablePrefixCaching = options.enablePrefixCaching ?? true;
    this.#blocks = Array.from({ length: numBlocks }, (_, id) => new KvBlock(id));
    this.nullBlock = this.#blocks[0];
    // The null block is permanently "held" so it can never enter the free queue.
    this.nullBlock.refCount = 1;
    this.#prev = new Int32Array(numBlocks);
    this.#next = new Int32Array(numBlocks);
    for (let id = 1; id < numBlocks; id++) this.#pushTail(id);
  }

  /** Blocks that can ever be handed out: all but the null block. */
  get numUsableBlocks(): number {
    return this.numBlocks - 1;
  }

  /** Blocks in the free queue, including free blocks that still hold cached KV. */
  get numFreeBlocks(): number {
    return this.#numFree;
  }

  get numCachedBlocks(): number {
    return this.#cached.size;
  }

  /** Fraction of usable blocks held by someone, in [0, 1]. */
  get usage(): number {
    return 1 - this.#numFree / this.numUsableBlocks;
  }

  get prefixCacheStats(): PrefixCacheStats {
    return { ...this.#stats };
  }

  block(id: number): KvBlock {
    if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks) {
      throw new RangeError(`Expected a block id in [0, ${this.numBlocks}), got ${id}`);
    }
    return this.#blocks[id];
  }

  /** Free block ids in eviction order, next to be handed out first. O(n): for tests and stats. */
  freeBlockIds(): number[] {
    const ids: number[] = [];
    for (let id = this.#next[0]; id !== 0; id = this.#next[id]) ids.push(id);
    return ids;
  }

  /**
   * Takes `count` blocks from the LRU head, each with refCount 1. A block that still held cached
   * KV leaves the prefix cache. All or nothing: throws OutOfKvBlocksError and takes none.
   */
  allocate(count: number): KvBlock[] {
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`Expected a non-negative integer block count, got ${count}`);
    }
    if (count > this.#numFree) throw new OutOfKvBlocksError(count, this.#numFree);
    const out: KvBlock[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const id = this.#next[0];
      this.#unlink(id);
      const block = this.#blocks[id];
      if (block.hash !== null) this.#uncache(block);
      block.refCount = 1;
      out[i] = block;
    }
    return out;
  }

  /**
   * Drops one reference on each block; blocks reaching 0 join the queue tail in the order given
   * (pass a request's blocks reversed so its tail is evicted first). Cached blocks stay findable.
   * A block freed more times than it is held throws RangeError and nothing changes.
   */
  free(blocks: readonly KvBlock[]): void {
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i];
      this.#checkOwned(block);
      if (block.refCount === 0) {
        for (let j = 0; j < i; j++) blocks[j].refCount++;
        throw new RangeError(`Block ${block.id} is freed more times than it is held`);
      }
      block.refCount--;
    }
    for (const block of blocks) {
      // A block listed twice (held twice) reaches 0 once but is seen twice here.
      if (block.refCount === 0 && !this.#isQueued(block.id)) this.#pushTail(block.id);
    }
  }

  /**
   * Adds one reference to each block. A free block must be cached (a prefix hit): it leaves the
   * free queue, keeping its KV. Touching a free uncached block would bypass `allocate`.
   */
  touch(blocks: readonly KvBlock[]): void {
    for (const block of blocks) {
      this.#checkOwned(block);
      if (block.refCount === 0 && block.hash === null) {
        throw new RangeError(`Block ${block.id} is free and not cached; allocate it instead`);
      }
    }
    for (const block of blocks) {
      if (block.refCount === 0) this.#unlink(block.id);
      block.refCount++;
    }
  }

  /**
   * Registers a held, full, computed block under `hash`. Returns the block that now holds this
   * content in the cache: `block` itself, or an equivalent block registered earlier (same hash,
   * tokens and parent), in which case `block` stays uncached. Returns undefined when the content
   * can't be cached: prefix caching is off, or another content owns the hash (a collision).
   */
  cacheFullBlock(
    block: KvBlock,
    hash: BlockHash,
    tokenIds: ArrayLike<number>,
    parentChainKey: string = ROOT,
  ): KvBlock | undefined {
    this.#checkOwned(block);
    if (typeof hash !== "string") throw new TypeError(`Expected a block hash, got ${typeof hash}`);
    if (block.refCount === 0) {
      throw new RangeError(`Block ${block.id} is free; only held blocks can be cached`);
    }
    if (block.hash !== null) throw new RangeError(`Block ${block.id} is already cached`);
    if (!this.enablePrefixCaching) return undefined;
    const existing = this.#cached.get(hash);
    if (existing !== undefined) {
      return isSameContent(existing, tokenIds, parentChainKey) ? existing : undefined;
    }
    block.hash = hash;
    block.tokenIds = Int32Array.from(tokenIds);
    block.chainKey = `#${++this.#numRegistrations}`;
    block.parentChainKey = parentChainKey;
    this.#cached.set(hash, block);
    return block;
  }

  /**
   * The cached block for `hash`, if it holds exactly `tokenIds` and hangs off `parentChainKey`
   * (the previous hit's chain key, or the root key for a first block). Checking the parent link as
   * well as the tokens means a hit at block i proves blocks 0..i all match, even if a weak hash
   * made two different prefixes collide.
   */
  lookup(
    hash: BlockHash,
    tokenIds: ArrayLike<number>,
    parentChainKey: string = ROOT,
  ): KvBlock | undefined {
    if (!this.enablePrefixCaching) return undefined;
    const block = this.#cached.get(hash);
    return block !== undefined && isSameContent(block, tokenIds, parentChainKey)
      ? block
      : undefined;
  }

  /** Adds one prefix lookup's outcome to the counters. */
  recordPrefixQuery(query: PrefixCacheStats): void {
    for (const key of Object.keys(this.#stats) as (keyof PrefixCacheStats)[]) {
      const value = query[key];
      if (!Number.isInteger(value) || value < 0) {
        throw new RangeError(`Expected ${key} to be a non-negative integer, got ${value}`);
      }
    }
    this.#stats.numQueryTokens += query.numQueryTokens;
    this.#stats.numHitTokens += query.numHitTokens;
    this.#stats.numQueryBlocks += query.numQueryBlocks;
    this.#stats.numHitBlocks += query.numHitBlocks;
  }

  /**
   * Forgets every cached block (after a weight update, say). Held blocks keep their KV for their
   * requests but are no longer shared with new ones. Returns how many entries were dropped.
   */
  resetPrefixCache(): number {
    const numDropped = this.#cached.size;
    for (const block of this.#cached.values()) clearCacheFields(block);
    this.#cached.clear();
    return numDropped;
  }

  #checkOwned(block: KvBlock): void {
    if (!(block instanceof KvBlock) || this.#blocks[block.id] !== block) {
      throw new TypeError("Expected a block of this pool");
    }
    if (block.id === 0) throw new RangeError("The null block is never allocated, freed or cached");
  }

  #uncache(block: KvBlock): void {
    if (this.#cached.get(block.hash!) === block) this.#cached.delete(block.hash!);
    clearCacheFields(block);
  }

  #isQueued(id: number): boolean {
    // Every queued block has both links set; the only queued block whose links could both be 0 is
    // the sole element, and then next[0] === id.
    return this.#next[0] === id || this.#prev[id] !== 0;
  }

  #unlink(id: number): void {
    const prev = this.#prev[id];
    const next = this.#next[id];
    this.#next[prev] = next;
    this.#prev[next] = prev;
    this.#prev[id] = 0;
    this.#next[id] = 0;
    this.#numFree--;
  }

  #pushTail(id: number): void {
    const tail = this.#prev[0];
    this.#next[tail] = id;
    this.#prev[id] = tail;
    this.#next[id] = 0;
    this.#prev[0] = id;
    this.#numFree++;
  }
}

function isSameContent(
  block: KvBlock,
  tokenIds: ArrayLike<number>,
  parentChainKey: string,
): boolean {
  const stored = block.tokenIds!;
  if (block.parentChainKey !== parentChainKey || stored.length !== tokenIds.length) return false;
  for (let i = 0; i < stored.length; i++) if (stored[i] !== tokenIds[i]) return false;
  return true;
}

function clearCacheFields(block: KvBlock): void {
  block.hash = null;
  block.tokenIds = null;
  block.chainKey = null;
  block.parentChainKey = null;
}
