// KV cache manager: prefix hits, all-or-nothing slot allocation, block caching, fork and
// copy-on-write, and random operation sequences checked against a shadow of the KV contents.
import assert from "node:assert/strict";
import { type BlockHash, type BlockHashFn, hashBlockTokens } from "../src/engine/block_hash.ts";
import { BlockPool } from "../src/engine/block_pool.ts";
import {
  type CachedPrefix,
  KvCacheManager,
  type KvRequest,
} from "../src/engine/kv_cache_manager.ts";

interface Req {
  id: string;
  tokenIds: number[];
  numComputedTokens: number;
  cacheSalt?: string;
}

function req(id: string, tokenIds: number[], cacheSalt?: string): Req {
  return { id, tokenIds: [...tokenIds], numComputedTokens: 0, cacheSalt };
}

function setup(numBlocks: number, blockSize: number, hashBlock?: BlockHashFn) {
  const pool = new BlockPool(numBlocks);
  return { pool, kv: new KvCacheManager(pool, blockSize, { hashBlock }) };
}

/** Admits `r` with its cached prefix and computes (and commits) all of it but nothing more. */
function admitAndCompute(kv: KvCacheManager, r: Req): CachedPrefix {
  const prefix = kv.findCachedPrefix(r);
  assert.ok(kv.allocateSlots(r, r.tokenIds.length - prefix.numTokens, prefix));
  r.numComputedTokens = r.tokenIds.length;
  kv.commitComputed(r, r.numComputedTokens);
  return prefix;
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

Deno.test("kv cache manager", async (t) => {
  await t.step("rejects bad arguments with clear errors", () => {
    const { pool, kv } = setup(8, 4);
    assert.throws(() => new KvCacheManager(pool, 0), RangeError);
    assert.throws(() => new KvCacheManager({} as BlockPool, 4), TypeError);
    assert.throws(() => kv.blockTable("nope"), /Unknown request nope/);
    assert.throws(() => kv.blockTable(""), TypeError);
    assert.throws(() => kv.allocateSlots(req("a", [1]), -1), RangeError);
    assert.throws(() => kv.allocateSlots(req("a", []), 1), RangeError);
    assert.throws(
      () => kv.allocateSlots({ ...req("a", [1, 2]), numComputedTokens: 1 }, 1),
      RangeError,
    );
    assert.throws(() => kv.findCachedPrefix({ id: "a" } as KvRequest), TypeError);
    const a = req("a", range(6));
    assert.ok(kv.allocateSlots(a, 6));
    assert.throws(() => kv.slotFor("a", 6), RangeError);
    assert.throws(() => kv.commitComputed(a, 7), RangeError);
    assert.throws(() => kv.fork("a", "a"), RangeError);
    assert.throws(() => kv.fork("b", "c"), RangeError);
  });

  await t.step("reserves slots block by block and maps positions to slots", () => {
    const { pool, kv } = setup(8, 4);
    const a = req("a", range(10, 100));
    assert.ok(kv.allocateSlots(a, 6));
    assert.deepEqual(kv.blockTable("a"), [1, 2]);
    a.numComputedTokens = 6;
    assert.ok(kv.allocateSlots(a, 4));
    assert.deepEqual(kv.blockTable("a"), [1, 2, 3]);
    assert.equal(kv.slotFor("a", 0), 4);
    assert.equal(kv.slotFor("a", 5), 9);
    assert.equal(kv.slotFor("a", 9), 13);
    assert.equal(kv.numFreeBlocks, 4);
    assert.ok(Math.abs(kv.usage - 3 / 7) < 1e-12);
    // A static reservation may run past the known tokens.
    const b = req("b", range(3));
    assert.ok(kv.allocateSlots(b, 8));
    assert.equal(kv.blockTable("b").length, 2);
    assert.equal(pool.numFreeBlocks, 2);
  });

  await t.step("a short pool refuses the whole allocation and changes nothing", () => {
    const { pool, kv } = setup(4, 2);
    const a = req("a", range(4));
    assert.ok(kv.allocateSlots(a, 4));
    const b = req("b", range(4, 50));
    assert.equal(kv.allocateSlots(b, 4), false);
    assert.equal(kv.has("b"), false);
    assert.equal(pool.numFreeBlocks, 1);
    assert.deepEqual(kv.blockTable("a"), [1, 2]);
  });

  await t.step("a prefix hit returns full cached blocks and always leaves the last token", () => {
    const { kv } = setup(16, 4);
    const a = req("a", range(10));
    admitAndCompute(kv, a);
    // Blocks 0 and 1 are full and cached; block 2 (2 tokens) is partial and is not.
    const b = req("b", [...range(8), 77, 78, 79]);
    const prefix = kv.findCachedPrefix(b);
    assert.equal(prefix.numTokens, 8);
    assert.deepEqual(prefix.blocks.map((x) => x.id), kv.blockTable("a").slice(0, 2));
    assert.deepEqual([...prefix.blocks[1].tokenIds!], [4, 5, 6, 7]);
    // A prompt that is exactly the cached blocks still recomputes its last token.
    assert.equal(kv.findCachedPrefix(req("c", range(8))).numTokens, 4);
    assert.equal(kv.findCachedPrefix(req("d", range(9))).numTokens, 8);
    assert.equal(kv.findCachedPrefix(req("e", [0, 1, 2, 9, 4])).numTokens, 0);
    assert.ok(kv.allocateSlots(b, 3, prefix));
    assert.deepEqual(kv.blockTable("b").slice(0, 2), kv.blockTable("a").slice(0, 2));
    assert.equal(prefix.blocks[0].refCount, 2);
    // The first lookup, for "a" itself, queried 10 tokens and hit none.
    assert.deepEqual(kv.stats, { prefixQueries: 10 + 11 + 8 + 9 + 5, prefixHits: 8 + 4 + 8 });
    assert.equal(kv.pool.prefixCacheStats.numHitBlocks, 2 + 1 + 2);
  });

  await t.step("different cache salts never share blocks", () => {
    const { kv } = setup(16, 4);
    admitAndCompute(kv, req("a", range(9), "tenant-1"));
    assert.equal(kv.findCachedPrefix(req("b", range(9), "tenant-1")).numTokens, 8);
    assert.equal(kv.findCachedPrefix(req("c", range(9), "tenant-2")).numTokens, 0);
    assert.equal(kv.findCachedPrefix(req("d", range(9))).numTokens, 0);
  });

  await t.step("reviving free cached blocks is counted against the free pool", () => {
    // 5 usable blocks, block size 2. "a" fills 4 and frees them: all free, 2 still cached.
    const { pool, kv } = setup(6, 2);
    admitAndCompute(kv, req("a", [1, 2, 3, 4, 5, 6, 7]));
    kv.free("a");
    assert.equal(pool.numFreeBlocks, 5);
    const b = req("b", [1, 2, 3, 4, 5, 6, 9, 9, 9, 9, 9, 9]);
    const prefix = kv.findCachedPrefix(b);
    assert.equal(prefix.numTokens, 6);
    // 12 tokens need 6 blocks: 3 revived + 3 new > 5 free once the 3 revived leave the queue.
    assert.equal(kv.allocateSlots(b, 6, prefix), false);
    assert.equal(pool.numFreeBlocks, 5);
    assert.equal(prefix.blocks.every((x) => x.refCount === 0 && x.isCached), true);
    // 4 new tokens fit: 3 revived + 2 new = 5.
    assert.ok(kv.allocateSlots(b, 4, prefix));
    assert.equal(pool.numFreeBlocks, 0);
  });

  await t.step("a stale or foreign prefix is refused", () => {
    const { kv } = setup(8, 2);
    admitAndCompute(kv, req("a", [1, 2, 3, 4, 5]));
    const b = req("b", [1, 2, 3, 4, 6]);
    const prefix = kv.findCachedPrefix(b);
    assert.equal(prefix.numTokens, 4);
    assert.throws(() => kv.allocateSlots(req("c", [1, 2, 9, 9, 9]), 1, prefix), /stale/);
    assert.throws(() => kv.allocateSlots(req("c", [1, 2, 3, 4, 5], "salt"), 1, prefix), /stale/);
    kv.pool.resetPrefixCache();
    assert.throws(() => kv.allocateSlots(b, 1, prefix), /stale/);
    assert.equal(kv.has("b"), false);
  });

  await t.step("a prefix applies only at admission", () => {
    const { kv } = setup(8, 2);
    admitAndCompute(kv, req("a", [1, 2, 3, 4, 5]));
    const b = req("b", [1, 2, 3, 4, 6]);
    assert.ok(kv.allocateSlots(b, 1));
    b.numComputedTokens = 1;
    assert.throws(
      () => kv.allocateSlots(b, 1, kv.findCachedPrefix(b)),
      /only applies at admission/,
    );
  });

  await t.step("free releases tail first, is a no-op the second time", () => {
    const { pool, kv } = setup(8, 2);
    const a = req("a", range(7));
    admitAndCompute(kv, a);
    const table = kv.blockTable("a");
    assert.equal(kv.free("a"), true);
    assert.equal(kv.free("a"), false);
    assert.deepEqual(pool.freeBlockIds(), [5, 6, 7, ...table.toReversed()]);
    // Three fresh allocations take the never-used blocks, the fourth evicts a's tail (partial,
    // uncached), the fifth a's last full block; a's first blocks survive.
    assert.ok(kv.allocateSlots(req("b", range(10, 100)), 10));
    assert.equal(kv.findCachedPrefix(req("c", range(7))).numTokens, 4);
  });

  await t.step("commit caches only full blocks, and only with prefix caching on", () => {
    const { pool, kv } = setup(8, 4);
    const a = req("a", range(6));
    assert.ok(kv.allocateSlots(a, 6));
    a.numComputedTokens = 3;
    kv.commitComputed(a, 3);
    assert.equal(pool.numCachedBlocks, 0);
    a.numComputedTokens = 6;
    kv.commitComputed(a, 6);
    assert.equal(pool.numCachedBlocks, 1);
    assert.throws(() => kv.commitComputed(a, 5), RangeError);
    const off = new KvCacheManager(new BlockPool(8, { enablePrefixCaching: false }), 4);
    admitAndCompute(off, req("a", range(9)));
    assert.equal(off.pool.numCachedBlocks, 0);
    assert.equal(off.findCachedPrefix(req("b", range(9))).numTokens, 0);
    assert.deepEqual(off.stats, { prefixQueries: 0, prefixHits: 0 });
  });

  await t.step("fork shares every block; the first writer into a shared block copies it", () => {
    const { pool, kv } = setup(8, 4);
    const a = req("a", range(6));
    admitAndCompute(kv, a);
    kv.fork("a", "b");
    const b = { ...a, id: "b", tokenIds: [...a.tokenIds] };
    const [full, partial] = kv.blockTable("a");
    assert.deepEqual(kv.blockTable("b"), [full, partial]);
    assert.equal(pool.block(partial).refCount, 2);
    a.tokenIds.push(60);
    assert.ok(kv.allocateSlots(a, 1));
    const [fresh] = kv.blockTable("a").slice(1);
    assert.notEqual(fresh, partial);
    assert.equal(kv.blockTable("a")[0], full, "full blocks stay shared");
    // The source stays pinned until the runner takes the copy.
    assert.equal(pool.block(partial).refCount, 2);
    assert.deepEqual(kv.takePendingCopies(), [{ src: partial, dst: fresh }]);
    assert.deepEqual(kv.takePendingCopies(), []);
    assert.equal(pool.block(partial).refCount, 1);
    // b now holds the old block alone and writes in place.
    b.tokenIds.push(61);
    assert.ok(kv.allocateSlots(b, 1));
    assert.equal(kv.blockTable("b")[1], partial);
    assert.deepEqual(kv.takePendingCopies(), []);
    assert.equal(pool.block(full).refCount, 2);
  });

  await t.step("copy-on-write at a block boundary allocates without copying", () => {
    const { kv } = setup(8, 4);
    const a = req("a", range(4));
    assert.ok(kv.allocateSlots(a, 4));
    // Forked after reserving but before computing: block 0 holds no K/V yet, so nothing to copy.
    kv.fork("a", "b");
    assert.ok(kv.allocateSlots(a, 4));
    assert.notDeepEqual(kv.blockTable("a"), kv.blockTable("b"));
    assert.deepEqual(kv.takePendingCopies(), []);
  });

  await t.step(
    "a forked reservation filled and cached by the parent is copied, not rewritten",
    () => {
      const { pool, kv } = setup(8, 4);
      const p = req("p", range(6));
      assert.ok(kv.allocateSlots(p, 6)); // reserved, then forked before the step ran
      kv.fork("p", "c");
      const c = { ...p, id: "c", tokenIds: [...p.tokenIds] };
      p.numComputedTokens = 6;
      kv.commitComputed(p, 6);
      const [cachedId] = kv.blockTable("p");
      assert.equal(pool.block(cachedId).isCached, true);
      kv.free("p");
      // c holds the cached block alone but must not write into it.
      assert.ok(kv.allocateSlots(c, 6));
      assert.notEqual(kv.blockTable("c")[0], cachedId);
      assert.deepEqual(kv.takePendingCopies(), []); // nothing computed yet for c: nothing to copy
      assert.equal(pool.block(cachedId).refCount, 0);
      assert.equal(pool.block(cachedId).isCached, true, "still there for prefix hits");
    },
  );

  await t.step("n samples writing in one step: n - 1 copies, the last keeps the block", () => {
    const { pool, kv } = setup(8, 4);
    const a = req("a", range(6));
    admitAndCompute(kv, a);
    const shared = kv.blockTable("a")[1];
    kv.fork("a", "b");
    kv.fork("a", "c");
    for (const id of ["a", "b", "c"]) {
      assert.ok(kv.allocateSlots({ ...a, id, tokenIds: [...a.tokenIds, 9] }, 1));
    }
    const copies = kv.takePendingCopies();
    assert.deepEqual(copies.map((c) => c.src), [shared, shared]);
    assert.equal(kv.blockTable("c")[1], shared);
    assert.equal(pool.block(shared).refCount, 1);
  });

  await t.step("a copy's source stays pinned until the copy is taken", () => {
    const { pool, kv } = setup(6, 4);
    const a = req("a", range(6));
    admitAndCompute(kv, a);
    kv.fork("a", "b");
    const shared = kv.blockTable("a")[1];
    assert.ok(kv.allocateSlots({ ...a, tokenIds: [...a.tokenIds, 9] }, 1));
    kv.free("b"); // preempted in the same step: the source has no table left
    assert.equal(pool.block(shared).refCount, 1);
    // Another admission in the same step cannot be handed the source and overwrite it.
    assert.ok(kv.allocateSlots(req("d", range(8, 50)), 8));
    assert.ok(!kv.blockTable("d").includes(shared));
    assert.equal(kv.allocateSlots(req("e", [1, 2]), 2), false);
    assert.deepEqual(kv.takePendingCopies(), [{ src: shared, dst: kv.blockTable("a")[1] }]);
    assert.equal(pool.block(shared).refCount, 0);
  });

  await t.step("copies never read another copy's destination", () => {
    const { kv } = setup(10, 4);
    const a = req("a", range(6));
    admitAndCompute(kv, a);
    kv.fork("a", "b");
    const shared = kv.blockTable("a")[1];
    a.tokenIds.push(1);
    assert.ok(kv.allocateSlots(a, 1)); // a: copy shared -> d
    const d = kv.blockTable("a")[1];
    kv.fork("a", "c"); // c shares d, which is not filled until the copy runs
    const c = { ...a, id: "c", tokenIds: [...a.tokenIds] };
    assert.ok(kv.allocateSlots(c, 1));
    const e = kv.blockTable("c")[1];
    assert.deepEqual(kv.takePendingCopies(), [{ src: shared, dst: d }, { src: shared, dst: e }]);
  });

  await t.step("freeing a copy's destination drops the copy and unpins its source", () => {
    const { pool, kv } = setup(8, 4);
    const a = req("a", range(6));
    admitAndCompute(kv, a);
    kv.fork("a", "b");
    const shared = kv.blockTable("a")[1];
    a.tokenIds.push(1);
    assert.ok(kv.allocateSlots(a, 1));
    kv.free("a");
    assert.deepEqual(kv.takePendingCopies(), []);
    assert.equal(pool.block(shared).refCount, 1);
    kv.free("b");
    assert.equal(pool.numFreeBlocks, 7);
  });

  await t.step("a colliding hash never serves another prefix's blocks", () => {
    // Hashes that ignore the parent: [X, Z] and [Y, Z] give the same hash for their Z block.
    const tokensOnly: BlockHashFn = (_parent, tokens, extra) =>
      `${Array.from(tokens).join(",")}|${extra?.join(",") ?? ""}` as BlockHash;
    const { kv } = setup(16, 2, tokensOnly);
    admitAndCompute(kv, req("a", [1, 1, 5, 5, 9]));
    assert.equal(kv.findCachedPrefix(req("b", [2, 2, 5, 5, 9])).numTokens, 0);
    assert.equal(kv.findCachedPrefix(req("c", [1, 1, 5, 5, 7])).numTokens, 4);
    // A constant hash: every block collides; only the first registered content is ever served.
    const constant = setup(16, 2, () => "same" as BlockHash).kv;
    admitAndCompute(constant, req("a", [1, 1, 5, 5, 9]));
    assert.equal(constant.findCachedPrefix(req("b", [1, 1, 5, 5, 9])).numTokens, 2);
    assert.equal(constant.findCachedPrefix(req("c", [5, 5, 5, 5, 9])).numTokens, 0);
  });
});

// ---------------------------------------------------------------------------------------------
// Random operation sequences. The test keeps a shadow of the KV cache: every slot records which
// exact prefix (a trie node: salt + all tokens up to that position) its K/V was computed for.
// After every operation, every computed position of every live request must read back its own
// prefix, which catches a wrong prefix hit, a missed copy-on-write, a leaked or reused block.

function makeRng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

interface SimReq extends Req {
  /** Tokens the table has slots for, as the test expects it. */
  numReserved: number;
  /** Trie node of each prefix [0..p]. */
  nodes: number[];
}

interface Counters {
  hits: number;
  copies: number;
  refusals: number;
  evictions: number;
  forks: number;
}

class Sim {
  readonly kv: KvCacheManager;
  readonly pool: BlockPool;
  readonly bs: number;
  readonly live = new Map<string, SimReq>();
  readonly rand: (n: number) => number;
  readonly label: string;
  readonly counters: Counters;
  #trie = new Map<string, number>();
  #nodeToken: number[] = [0];
  #shadow: Int32Array;
  #nextId = 0;
  #templates: number[][];

  constructor(seed: number, hashBlock: BlockHashFn, counters: Counters) {
    this.rand = makeRng(seed);
    this.label = `seed ${seed}`;
    this.counters = counters;
    this.bs = [1, 2, 3, 4][this.rand(4)];
    // From a handful of blocks (constant refusals and evictions) to room for a few requests.
    const numBlocks = 3 + this.rand(Math.ceil(60 / this.bs));
    this.pool = new BlockPool(numBlocks);
    this.kv = new KvCacheManager(this.pool, this.bs, { hashBlock });
    this.#shadow = new Int32Array(numBlocks * this.bs);
    // Small vocabulary and shared templates so prompts share prefixes and blocks often match.
    this.#templates = range(3).map(() => range(20).map(() => this.rand(3)));
  }

  #node(parent: number | string, token: number): number {
    const key = `${parent}/${token}`;
    let id = this.#trie.get(key);
    if (id === undefined) {
      id = this.#nodeToken.length;
      this.#nodeToken.push(token);
      this.#trie.set(key, id);
    }
    return id;
  }

  #extendNodes(r: SimReq): void {
    for (let p = r.nodes.length; p < r.tokenIds.length; p++) {
      const parent = p === 0 ? `salt:${r.cacheSalt}` : r.nodes[p - 1];
      r.nodes.push(this.#node(parent, r.tokenIds[p]));
    }
  }

  #pick(): SimReq | undefined {
    const all = [...this.live.values()];
    return all.length === 0 ? undefined : all[this.rand(all.length)];
  }

  // Every manager call goes through here: the free queue must change the way an LRU queue does.
  #observe<T>(call: () => T, freedTable?: number[]): T {
    const before = this.pool.freeBlockIds();
    const keys = before.map((id) => this.pool.block(id).chainKey);
    const result = call();
    const after = this.pool.freeBlockIds();
    const afterSet = new Set(after);
    const beforeSet = new Set(before);
    const revived = new Set<number>();
    const taken: number[] = [];
    before.forEach((id, i) => {
      if (afterSet.has(id)) return;
      if (keys[i] !== null && this.pool.block(id).chainKey === keys[i]) revived.add(id);
      else {
        taken.push(id);
        if (keys[i] !== null) this.counters.evictions++;
      }
    });
    // Allocation takes the head of the queue (ignoring blocks revived by a prefix hit).
    const candidates = before.filter((id) => !revived.has(id));
    assert.deepEqual(taken, candidates.slice(0, taken.length), `${this.label}: LRU allocation`);
    // Survivors keep their order and come before anything freed by this call.
    const survivors = before.filter((id) => afterSet.has(id));
    assert.deepEqual(after.slice(0, survivors.length), survivors, `${this.label}: queue order`);
    const appended = after.slice(survivors.length);
    for (const id of appended) assert.ok(!beforeSet.has(id) || taken.includes(id));
    if (freedTable !== undefined) {
      // A freed request's blocks arrive tail first.
      const own = new Set(freedTable);
      const expected = freedTable.toReversed().filter((id) =>
        afterSet.has(id) && !beforeSet.has(id)
      );
      assert.deepEqual(appended.filter((id) => own.has(id)), expected, `${this.label}: tail first`);
    }
    return result;
  }

  #snapshot(): string {
    const tables = [...this.live.keys()].map((id) => `${id}:${this.kv.blockTable(id)}`);
    const refs = range(this.pool.numBlocks).map((id) => this.pool.block(id).refCount);
    return JSON.stringify([this.pool.freeBlockIds(), refs, tables, this.pool.numCachedBlocks]);
  }

  #newRequest(): SimReq {
    const template = this.#templates[this.rand(3)];
    const tokenIds = [
      ...template.slice(0, 1 + this.rand(template.length)),
      ...range(this.rand(5)).map(() => this.rand(3)),
    ];
    const r: SimReq = {
      id: `r${this.#nextId++}`,
      tokenIds,
      numComputedTokens: 0,
      cacheSalt: this.rand(4) === 0 ? "s" : undefined,
      numReserved: 0,
      nodes: [],
    };
    this.#extendNodes(r);
    return r;
  }

  /** Tries to reserve slots for `n` more tokens; returns the write to do, or undefined. */
  #schedule(r: SimReq, prefix?: CachedPrefix): { r: SimReq; start: number; n: number } | undefined {
    const start = prefix?.numTokens ?? r.numComputedTokens;
    const n = 1 + this.rand(r.tokenIds.length - start);
    const before = this.#snapshot();
    const ok = this.#observe(() => this.kv.allocateSlots(r, n, prefix));
    if (!ok) {
      this.counters.refusals++;
      assert.equal(this.#snapshot(), before, `${this.label}: a refusal changes nothing`);
      return undefined;
    }
    if (prefix !== undefined) {
      r.numComputedTokens = prefix.numTokens;
      r.numReserved = prefix.numTokens;
      this.live.set(r.id, r);
    }
    r.numReserved = Math.max(r.numReserved, start + n);
    return { r, start, n };
  }

  #fork(parent: SimReq): void {
    const child: SimReq = {
      ...parent,
      id: `r${this.#nextId++}`,
      tokenIds: [...parent.tokenIds],
      nodes: [...parent.nodes],
    };
    this.#observe(() => this.kv.fork(parent.id, child.id));
    this.live.set(child.id, child);
    this.counters.forks++;
  }

  #free(r: SimReq): void {
    const table = this.kv.blockTable(r.id);
    assert.equal(this.#observe(() => this.kv.free(r.id), table), true);
    assert.equal(this.kv.free(r.id), false);
    this.live.delete(r.id);
  }

  /** One engine step: admissions, continuations, forks and cancellations, then the forward pass. */
  step(): void {
    const writes: { r: SimReq; start: number; n: number }[] = [];
    const numActions = 1 + this.rand(4);
    for (let i = 0; i < numActions; i++) {
      const action = this.rand(10);
      const r = this.#pick();
      if (action < 3 || r === undefined) {
        const fresh = this.#newRequest();
        const prefix = this.kv.findCachedPrefix(fresh);
        this.#checkHit(fresh, prefix);
        const w = this.#schedule(fresh, prefix);
        if (w !== undefined) writes.push(w);
      } else if (action < 7) {
        if (writes.some((w) => w.r === r)) continue;
        if (r.numComputedTokens === r.tokenIds.length) {
          r.tokenIds.push(this.rand(3)); // the token sampled last step
          this.#extendNodes(r);
        }
        const w = this.#schedule(r);
        if (w !== undefined) writes.push(w);
        else if (this.rand(2) === 0) this.#free(r); // preempted
      } else if (action < 8) {
        this.#fork(r);
      } else {
        this.#free(r); // cancelled, possibly after being scheduled this step
      }
    }
    // The runner: copies first (as a parallel kernel would: all reads before any write) ...
    const copies = this.#observe(() => this.kv.takePendingCopies());
    const dsts = new Set(copies.map((c) => c.dst));
    assert.equal(dsts.size, copies.length, `${this.label}: one copy per destination`);
    for (const c of copies) {
      assert.ok(!dsts.has(c.src), `${this.label}: a copy reads a destination`);
    }
    const bs = this.bs;
    const read = copies.map((c) => this.#shadow.slice(c.src * bs, (c.src + 1) * bs));
    copies.forEach((c, i) => this.#shadow.set(read[i], c.dst * bs));
    this.counters.copies += copies.length;
    // ... then the forward pass writes K/V for the scheduled positions, then commit.
    for (const { r, start, n } of writes) {
      if (!this.live.has(r.id)) continue;
      for (let p = start; p < start + n; p++) {
        const slot = this.kv.slotFor(r.id, p);
        const block = this.pool.block(Math.floor(slot / bs));
        assert.equal(block.isCached, false, `${this.label}: write into a cached block`);
        this.#shadow[slot] = r.nodes[p];
      }
      r.numComputedTokens = start + n;
      this.kv.commitComputed(r, r.numComputedTokens);
    }
    this.checkInvariants();
  }

  randomOp(): void {
    const op = this.rand(20);
    const r = this.#pick();
    if (op === 0) {
      this.pool.resetPrefixCache();
    } else if (op < 3 && r !== undefined) {
      this.#free(r);
    } else {
      this.step();
    }
    this.checkInvariants();
  }

  #checkHit(r: SimReq, prefix: CachedPrefix): void {
    const bs = this.bs;
    assert.equal(prefix.numTokens, prefix.blocks.length * bs);
    assert.ok(prefix.blocks.length <= Math.floor((r.tokenIds.length - 1) / bs));
    prefix.blocks.forEach((block, i) => {
      assert.deepEqual([...block.tokenIds!], r.tokenIds.slice(i * bs, (i + 1) * bs));
      for (let o = 0; o < bs; o++) {
        assert.equal(
          this.#shadow[block.id * bs + o],
          r.nodes[i * bs + o],
          `${this.label}: a prefix hit holds another prefix's K/V`,
        );
      }
    });
    if (prefix.blocks.length > 0) this.counters.hits++;
  }

  checkInvariants(): void {
    const { pool, kv, bs, label } = this;
    const holders = new Array(pool.numBlocks).fill(0);
    for (const r of this.live.values()) {
      const table = kv.blockTable(r.id);
      assert.equal(table.length, Math.ceil(r.numReserved / bs), `${label}: ${r.id} table size`);
      for (const id of table) holders[id]++;
      // Every computed position reads back K/V for exactly this request's prefix.
      for (let p = 0; p < r.numComputedTokens; p++) {
        assert.equal(this.#shadow[kv.slotFor(r.id, p)], r.nodes[p], `${label}: ${r.id} at ${p}`);
      }
    }
    const free = pool.freeBlockIds();
    assert.equal(new Set(free).size, free.length, `${label}: a block is queued twice`);
    assert.equal(pool.numFreeBlocks, free.length);
    const freeSet = new Set(free);
    for (let id = 1; id < pool.numBlocks; id++) {
      const block = pool.block(id);
      assert.equal(block.refCount, holders[id], `${label}: block ${id} ref count`);
      assert.equal(freeSet.has(id), holders[id] === 0, `${label}: block ${id} free iff unheld`);
      if (block.isCached) {
        // A cached block's K/V is for its stored tokens.
        for (let o = 0; o < bs; o++) {
          const node = this.#shadow[id * bs + o];
          assert.equal(this.#nodeToken[node], block.tokenIds![o], `${label}: cached block ${id}`);
        }
      }
    }
    assert.ok(!freeSet.has(0), "the null block is never free");
  }

  drain(): void {
    for (const r of [...this.live.values()]) this.#free(r);
    assert.deepEqual(this.kv.takePendingCopies(), []);
    assert.equal(this.pool.numFreeBlocks, this.pool.numUsableBlocks, `${this.label}: leak`);
    for (let id = 1; id < this.pool.numBlocks; id++) assert.equal(this.pool.block(id).refCount, 0);
    assert.equal(this.kv.numRequests, 0);
  }
}

function runSequences(hashBlock: BlockHashFn, numSeeds: number, firstSeed: number): Counters {
  const counters: Counters = { hits: 0, copies: 0, refusals: 0, evictions: 0, forks: 0 };
  for (let seed = firstSeed; seed < firstSeed + numSeeds; seed++) {
    const sim = new Sim(seed, hashBlock, counters);
    for (let i = 0; i < 30; i++) sim.randomOp();
    sim.drain();
  }
  return counters;
}

Deno.test("random operation sequences keep every invariant", async (t) => {
  await t.step("with the real block hash", () => {
    const c = runSequences(hashBlockTokens, 1500, 1);
    // The walk must actually reach the interesting paths.
    assert.ok(
      c.hits > 500 && c.copies > 200 && c.refusals > 500 && c.evictions > 500,
      JSON.stringify(c),
    );
  });

  await t.step("with a hash that ignores the parent", () => {
    const tokensOnly: BlockHashFn = (_parent, tokens, extra) =>
      `${Array.from(tokens).join(",")}|${extra?.join(",") ?? ""}` as BlockHash;
    const c = runSequences(tokensOnly, 400, 10_001);
    assert.ok(c.hits > 50, JSON.stringify(c));
  });

  await t.step("with a hash where every block collides", () => {
    runSequences(() => "collide" as BlockHash, 400, 20_001);
  });

  await t.step("with a hash where most blocks collide", () => {
    runSequences(
      (parent, tokens) => `${(hashBlockTokens(parent, tokens).charCodeAt(0) & 3)}` as BlockHash,
      400,
      30_001,
    );
  });
});
