// A minimal KV block allocator for single-sequence generation: a free list and per-sequence block
// tables. The batching engine replaces it with a reference-counted, prefix-caching block pool.

/** Raised when a sequence needs more KV blocks than are free. */
export class OutOfKvBlocksError extends Error {
  constructor(needed: number, free: number) {
    super(`Out of KV cache blocks: needed ${needed}, ${free} free`);
    this.name = "OutOfKvBlocksError";
  }
}

export class BlockAllocator {
  readonly numBlocks: number;
  #free: number[];

  constructor(numBlocks: number) {
    if (!Number.isInteger(numBlocks) || numBlocks <= 0) {
      throw new RangeError(`numBlocks must be a positive integer, got ${numBlocks}`);
    }
    this.numBlocks = numBlocks;
    // Pop from the end hands out low ids first.
    this.#free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get numFree(): number {
    return this.#free.length;
  }

  allocate(count: number): number[] {
    if (count > this.#free.length) throw new OutOfKvBlocksError(count, this.#free.length);
    return this.#free.splice(this.#free.length - count, count).reverse();
  }

  free(blockIds: number[]): void {
    for (const id of blockIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks) {
        throw new RangeError(`Block id must be in [0, ${this.numBlocks}), got ${id}`);
      }
      this.#free.push(id);
    }
  }
}

/** One sequence's block table; grows as tokens are appended. */
export class SequenceBlocks {
  readonly blockSize: number;
  readonly blockTable: number[] = [];
  #numTokens = 0;
  #allocator: BlockAllocator;

  constructor(allocator: BlockAllocator, blockSize: number) {
    this.#allocator = allocator;
    this.blockSize = blockSize;
  }

  get numTokens(): number {
    return this.#numTokens;
  }

  /** Reserves slots for `count` more tokens and returns their slot ids. */
  append(count: number): number[] {
    const total = this.#numTokens + count;
    const needed = Math.ceil(total / this.blockSize) - this.blockTable.length;
    if (needed > 0) this.blockTable.push(...this.#allocator.allocate(needed));
    const slots: number[] = [];
    for (let p = this.#numTokens; p < total; p++) {
      slots.push(
        this.blockTable[Math.floor(p / this.blockSize)] * this.blockSize + p % this.blockSize,
      );
    }
    this.#numTokens = total;
    return slots;
  }

  release(): void {
    this.#allocator.free(this.blockTable.splice(0));
    this.#numTokens = 0;
  }
}
