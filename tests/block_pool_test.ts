// Block hash and block pool: hash stability and spread, LRU free queue, reference counts, prefix
// cache registration and lookup, and a model-checked random walk over pool operations.
import assert from "node:assert/strict";
import { type BlockHash, hashBlockTokens } from "../src/engine/block_hash.ts";
import { BlockPool, KvBlock, OutOfKvBlocksError, rootChainKey } from "../src/engine/block_pool.ts";

/** mulberry32: a tiny seeded PRNG so failures reproduce. */
function makeRng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const h = (s: string) => s as BlockHash;
const PINNED_ROOT = h("307662cb5cdf6a01");
const PINNED_CHILD = h("2c2506216430d461");

Deno.test("block hash", async (t) => {
  await t.step("is deterministic across runs (pinned values)", () => {
    assert.equal(hashBlockTokens(null, [1, 2, 3]), hashBlockTokens(null, [1, 2, 3]));
    assert.match(hashBlockTokens(null, [1, 2, 3]), /^[0-9a-f]{16}$/);
    // Pinned so a change to the function (which would orphan persisted hashes) is deliberate.
    assert.equal(hashBlockTokens(null, [1, 2, 3]), PINNED_ROOT);
    assert.equal(hashBlockTokens(PINNED_ROOT, [4, 5], ["salt", 7]), PINNED_CHILD);
  });

  await t.step("depends on parent, tokens, order and extra keys", () => {
    const base = hashBlockTokens(null, [1, 2, 3, 4]);
    const variants = [
      hashBlockTokens(base, [1, 2, 3, 4]),
      hashBlockTokens(null, [1, 2, 4, 3]),
      hashBlockTokens(null, [1, 2, 3, 5]),
      hashBlockTokens(null, [1, 2, 3, 4], ["a"]),
      hashBlockTokens(null, [1, 2, 3, 4], ["b"]),
      hashBlockTokens(null, [1, 2, 3, 4], [1]),
      hashBlockTokens(null, [1, 2, 3, 4], ["1"]),
      hashBlockTokens(null, [1, 2, 3], [4]),
      hashBlockTokens(null, [1, 2, 3, 4, 0]),
      hashBlockTokens(null, [1, 2, 3, 4], [""]),
      hashBlockTokens(null, [1, 2, 3, 4], [2 ** 40]),
    ];
    assert.equal(new Set([base, ...variants]).size, variants.length + 1);
    // An empty extra-key list is the same as none.
    assert.equal(hashBlockTokens(null, [1, 2, 3, 4], []), base);
    assert.equal(hashBlockTokens(null, Int32Array.from([1, 2, 3, 4])), base);
  });

  await t.step("spreads 200k near-identical blocks without a collision", () => {
    const seen = new Set<string>();
    const halves = new Set<string>();
    const tokens = new Int32Array(16);
    for (let i = 0; i < 200_000; i++) {
      tokens[i % 16] = i;
      const hash = hashBlockTokens(null, tokens);
      seen.add(hash);
      halves.add(hash.slice(0, 8));
    }
    assert.equal(seen.size, 200_000);
    // Each 32-bit half alone should also be nearly collision free (expected ~5 collisions).
    assert.ok(halves.size > 200_000 - 40, `${200_000 - halves.size} half collisions`);
  });

  await t.step("rejects bad arguments", () => {
    assert.throws(() => hashBlockTokens(null, [1.5]), TypeError);
    assert.throws(() => hashBlockTokens(null, [2 ** 31]), TypeError);
    assert.throws(() => hashBlockTokens(null, null as unknown as number[]), TypeError);
    assert.throws(() => hashBlockTokens(5 as unknown as BlockHash, [1]), TypeError);
    assert.throws(() => hashBlockTokens(null, [1], [0.5]), TypeError);
  });
});

Deno.test("block pool", async (t) => {
  await t.step("block 0 is the null block and is never handed out", () => {
    const pool = new BlockPool(4);
    assert.equal(pool.numUsableBlocks, 3);
    assert.equal(pool.numFreeBlocks, 3);
    assert.equal(pool.nullBlock.id, 0);
    assert.deepEqual(pool.allocate(3).map((b) => b.id), [1, 2, 3]);
    assert.equal(pool.usage, 1);
    assert.throws(() => pool.free([pool.nullBlock]), RangeError);
    assert.throws(() => pool.touch([pool.nullBlock]), RangeError);
  });

  await t.step("rejects bad constructor and call arguments", () => {
    assert.throws(() => new BlockPool(1), RangeError);
    assert.throws(() => new BlockPool(2.5), RangeError);
    const pool = new BlockPool(4);
    assert.throws(() => pool.allocate(-1), RangeError);
    assert.throws(() => pool.allocate(1.5), RangeError);
    assert.throws(() => pool.block(4), RangeError);
    assert.throws(() => pool.free([new KvBlock(1)]), TypeError);
    assert.throws(() => pool.free([new BlockPool(4).block(1)]), TypeError);
  });

  await t.step("allocation is all or nothing", () => {
    const pool = new BlockPool(4);
    pool.allocate(1);
    const before = pool.freeBlockIds();
    assert.throws(() => pool.allocate(3), OutOfKvBlocksError);
    assert.deepEqual(pool.freeBlockIds(), before);
    assert.equal(pool.numFreeBlocks, 2);
    assert.deepEqual(pool.allocate(0), []);
  });

  await t.step("freed blocks join the tail in the order given; allocation takes the head", () => {
    const pool = new BlockPool(6);
    const [a, b, c, d, e] = pool.allocate(5);
    pool.free([c, b, a]); // a request's blocks, reversed: its tail goes first
    pool.free([e]);
    assert.deepEqual(pool.freeBlockIds(), [3, 2, 1, 5]);
    assert.deepEqual(pool.allocate(2).map((x) => x.id), [3, 2]);
    pool.free([d]);
    assert.deepEqual(pool.freeBlockIds(), [1, 5, 4]);
  });

  await t.step("shared blocks return to the queue only when the last holder frees them", () => {
    const pool = new BlockPool(3);
    const [a] = pool.allocate(1);
    pool.touch([a]);
    assert.equal(a.refCount, 2);
    pool.free([a]);
    assert.equal(pool.numFreeBlocks, 1);
    pool.free([a]);
    assert.equal(pool.numFreeBlocks, 2);
    assert.deepEqual(pool.freeBlockIds(), [2, 1]);
  });

  await t.step("a double free throws and changes nothing", () => {
    const pool = new BlockPool(4);
    const [a, b] = pool.allocate(2);
    pool.free([b]);
    assert.throws(() => pool.free([a, b]), RangeError);
    assert.equal(a.refCount, 1);
    assert.throws(() => pool.free([a, a]), RangeError);
    assert.equal(a.refCount, 1);
    assert.deepEqual(pool.freeBlockIds(), [3, 2]);
  });

  await t.step("a free cached block can be revived; reuse evicts its hash", () => {
    const pool = new BlockPool(4);
    const [a, b] = pool.allocate(2);
    assert.equal(pool.cacheFullBlock(a, h("A"), [1, 2]), a);
    assert.equal(a.isCached, true);
    pool.free([b, a]);
    assert.deepEqual(pool.freeBlockIds(), [3, 2, 1]);
    // Still findable while free.
    assert.equal(pool.lookup(h("A"), [1, 2]), a);
    pool.touch([a]);
    assert.equal(a.refCount, 1);
    assert.deepEqual(pool.freeBlockIds(), [3, 2]);
    pool.free([a]);
    // Two allocations later the LRU order reaches a: its cache entry goes.
    pool.allocate(2);
    assert.equal(pool.lookup(h("A"), [1, 2]), a);
    const [again] = pool.allocate(1);
    assert.equal(again, a);
    assert.equal(a.isCached, false);
    assert.equal(a.tokenIds, null);
    assert.equal(pool.lookup(h("A"), [1, 2]), undefined);
    assert.equal(pool.numCachedBlocks, 0);
  });

  await t.step("touching a free uncached block is refused", () => {
    const pool = new BlockPool(3);
    assert.throws(() => pool.touch([pool.block(1)]), RangeError);
    assert.equal(pool.numFreeBlocks, 2);
  });

  await t.step("lookup compares stored tokens and the parent link, not just the hash", () => {
    const pool = new BlockPool(5);
    const [a, b, c] = pool.allocate(3);
    pool.cacheFullBlock(a, h("X"), [1, 2]);
    assert.equal(pool.lookup(h("X"), [1, 2]), a);
    assert.equal(pool.lookup(h("X"), [1, 3]), undefined, "colliding hash, other tokens");
    assert.equal(pool.lookup(h("X"), [1, 2, 3]), undefined);
    assert.equal(pool.lookup(h("X"), [1, 2], rootChainKey(["salt"])), undefined);
    // A child hangs off its parent's registration.
    pool.cacheFullBlock(b, h("Y"), [3, 4], a.chainKey!);
    assert.equal(pool.lookup(h("Y"), [3, 4], a.chainKey!), b);
    assert.equal(pool.lookup(h("Y"), [3, 4]), undefined, "same tokens, other parent");
    // Re-registering the same content returns the existing block; a collision returns nothing.
    assert.equal(pool.cacheFullBlock(c, h("X"), [1, 2]), a);
    assert.equal(c.isCached, false);
    assert.equal(pool.cacheFullBlock(c, h("X"), [9, 9]), undefined);
    assert.equal(c.isCached, false);
    assert.throws(() => pool.cacheFullBlock(a, h("Z"), [1, 2]), RangeError);
  });

  await t.step("chain keys are never reused, so an evicted parent orphans its children", () => {
    const pool = new BlockPool(3);
    const [a, b] = pool.allocate(2);
    pool.cacheFullBlock(a, h("P"), [1]);
    const oldKey = a.chainKey!;
    pool.cacheFullBlock(b, h("C"), [2], oldKey);
    pool.free([a]);
    const [a2] = pool.allocate(1); // evicts a's registration
    assert.equal(a2, a);
    pool.cacheFullBlock(a, h("P"), [1]);
    assert.notEqual(a.chainKey, oldKey);
    assert.equal(pool.lookup(h("C"), [2], a.chainKey!), undefined);
  });

  await t.step("only held blocks can be cached; with caching off nothing is", () => {
    const pool = new BlockPool(3);
    assert.throws(() => pool.cacheFullBlock(pool.block(1), h("A"), [1]), RangeError);
    const off = new BlockPool(3, { enablePrefixCaching: false });
    const [a] = off.allocate(1);
    assert.equal(off.cacheFullBlock(a, h("A"), [1]), undefined);
    assert.equal(off.lookup(h("A"), [1]), undefined);
    assert.equal(a.isCached, false);
  });

  await t.step("resetPrefixCache forgets every entry, held or free", () => {
    const pool = new BlockPool(4);
    const [a, b] = pool.allocate(2);
    pool.cacheFullBlock(a, h("A"), [1]);
    pool.cacheFullBlock(b, h("B"), [2]);
    pool.free([b]);
    assert.equal(pool.resetPrefixCache(), 2);
    assert.equal(pool.lookup(h("A"), [1]), undefined);
    assert.equal(pool.lookup(h("B"), [2]), undefined);
    assert.equal(a.isCached || b.isCached, false);
    assert.equal(a.refCount, 1);
  });

  await t.step("counts prefix queries and hits", () => {
    const pool = new BlockPool(3);
    pool.recordPrefixQuery({
      numQueryTokens: 40,
      numHitTokens: 32,
      numQueryBlocks: 2,
      numHitBlocks: 2,
    });
    pool.recordPrefixQuery({
      numQueryTokens: 8,
      numHitTokens: 0,
      numQueryBlocks: 0,
      numHitBlocks: 0,
    });
    assert.deepEqual(pool.prefixCacheStats, {
      numQueryTokens: 48,
      numHitTokens: 32,
      numQueryBlocks: 2,
      numHitBlocks: 2,
    });
    assert.throws(
      () =>
        pool.recordPrefixQuery({
          numQueryTokens: -1,
          numHitTokens: 0,
          numQueryBlocks: 0,
          numHitBlocks: 0,
        }),
      RangeError,
    );
  });
});

// A random walk over pool operations checked against a plain-array model of the free queue.
Deno.test("block pool random walk matches an LRU model", () => {
  for (let seed = 1; seed <= 300; seed++) {
    const rand = makeRng(seed);
    const numBlocks = 2 + rand(10);
    const pool = new BlockPool(numBlocks);
    let queue = Array.from({ length: numBlocks - 1 }, (_, i) => i + 1);
    const refs = new Array(numBlocks).fill(0);
    const held: KvBlock[] = []; // one entry per reference
    const cached = new Map<string, number>(); // hash -> block id, the model's index
    for (let step = 0; step < 60; step++) {
      const op = rand(5);
      if (op === 0) {
        const count = rand(4);
        if (count > queue.length) {
          assert.throws(() => pool.allocate(count), OutOfKvBlocksError);
        } else {
          const got = pool.allocate(count).map((b) => b.id);
          assert.deepEqual(got, queue.slice(0, count), `seed ${seed}: allocate takes the head`);
          queue = queue.slice(count);
          for (const id of got) {
            refs[id] = 1;
            held.push(pool.block(id));
            for (const [hash, owner] of cached) if (owner === id) cached.delete(hash);
          }
        }
      } else if (op === 1 && held.length > 0) {
        // Free a random subset of references, in a random order.
        const picked: KvBlock[] = [];
        for (let n = 1 + rand(Math.min(3, held.length)); n > 0; n--) {
          picked.push(held.splice(rand(held.length), 1)[0]);
        }
        pool.free(picked);
        for (const b of picked) refs[b.id]--;
        for (const b of picked) if (refs[b.id] === 0 && !queue.includes(b.id)) queue.push(b.id);
      } else if (op === 2 && held.length > 0) {
        const b = held[rand(held.length)];
        pool.touch([b]);
        refs[b.id]++;
        held.push(b);
      } else if (op === 3 && held.length > 0) {
        const b = held[rand(held.length)];
        const hash = `h${rand(4)}`;
        const tokens = [rand(3)];
        if (b.isCached) {
          assert.throws(() => pool.cacheFullBlock(b, h(hash), tokens), RangeError);
        } else {
          const holder = pool.cacheFullBlock(b, h(hash), tokens);
          const owner = cached.get(hash);
          if (owner === undefined) {
            assert.equal(holder, b);
            cached.set(hash, b.id);
          } else {
            const ownerBlock = pool.block(owner);
            const same = ownerBlock.tokenIds![0] === tokens[0];
            assert.equal(holder, same ? ownerBlock : undefined);
          }
        }
      } else if (op === 4) {
        // Revive a free cached block, as a prefix hit does.
        const free = queue.filter((id) => pool.block(id).isCached);
        if (free.length > 0) {
          const id = free[rand(free.length)];
          const b = pool.block(id);
          assert.equal(pool.lookup(b.hash!, b.tokenIds!), b);
          pool.touch([b]);
          refs[id] = 1;
          held.push(b);
          queue = queue.filter((x) => x !== id);
        }
      }
      assert.deepEqual(pool.freeBlockIds(), queue, `seed ${seed} step ${step}: queue order`);
      assert.equal(pool.numFreeBlocks, queue.length);
      for (let id = 1; id < numBlocks; id++) {
        assert.equal(pool.block(id).refCount, refs[id], `seed ${seed}: ref count of ${id}`);
      }
      assert.equal(pool.numCachedBlocks, cached.size);
      for (const [hash, id] of cached) assert.equal(pool.block(id).hash, hash);
    }
    pool.free(held.splice(0));
    assert.equal(pool.numFreeBlocks, numBlocks - 1, "everything returns to the pool");
  }
});
