// Content hash of a full KV block: chains the parent block's hash, the block's token ids and extra
// keys (cache salt, adapter id), as vLLM v1 does, so equal hashes mean equal prefixes (up to a
// collision, which the block pool rules out by comparing stored token ids and parent links).

/** A block's chained content hash: 16 hex digits. Only ever made by a block hash function. */
export type BlockHash = string & { readonly __brand: "BlockHash" };

/** The shape of `hashBlockTokens`; tests inject weaker ones to provoke collisions. */
export type BlockHashFn = (
  parentHash: BlockHash | null,
  tokenIds: ArrayLike<number>,
  extraKeys?: readonly (string | number)[],
) => BlockHash;

// Two independent 32-bit lanes (a murmur3 round and an xxh32 round) give 64 bits; JS has no fast
// 64-bit integer multiply, and BigInt would be ~20x slower on every prompt token.
const M1 = 0xcc9e2d51;
const M2 = 0x1b873593;
const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Hashes one full block. Every section is length-prefixed so no two different inputs share an
 * encoding: ([1, 2], no extra keys) and ([1], extra key 2) hash differently.
 */
export function hashBlockTokens(
  parentHash: BlockHash | null,
  tokenIds: ArrayLike<number>,
  extraKeys?: readonly (string | number)[],
): BlockHash {
  if (parentHash !== null && typeof parentHash !== "string") {
    throw new TypeError(
      `Expected the parent hash to be a string or null, got ${typeof parentHash}`,
    );
  }
  if (tokenIds === null || typeof tokenIds !== "object" || typeof tokenIds.length !== "number") {
    throw new TypeError("Expected token ids to be an array of integers");
  }
  let h1 = 0x2545f491;
  let h2 = 0x6c62272e;
  const mix = (word: number) => {
    let k = Math.imul(word, M1);
    k = (k << 15) | (k >>> 17);
    h1 ^= Math.imul(k, M2);
    h1 = (h1 << 13) | (h1 >>> 19);
    h1 = (Math.imul(h1, 5) + 0xe6546b64) | 0;
    h2 = (h2 + Math.imul(word, P2)) | 0;
    h2 = Math.imul((h2 << 13) | (h2 >>> 19), P1);
  };
  const mixString = (s: string) => {
    mix(s.length);
    for (let i = 0; i < s.length; i++) mix(s.charCodeAt(i));
  };
  if (parentHash === null) mix(0);
  else {
    mix(1);
    mixString(parentHash);
  }
  const n = tokenIds.length;
  mix(n);
  for (let i = 0; i < n; i++) {
    const t = tokenIds[i];
    if (t !== (t | 0)) {
      throw new TypeError(`Expected token ids to be 32-bit integers, got ${t} at index ${i}`);
    }
    mix(t);
  }
  const keys = extraKeys ?? [];
  mix(keys.length);
  for (const key of keys) {
    if (typeof key === "string") {
      mix(2);
      mixString(key);
    } else if (Number.isSafeInteger(key)) {
      mix(3);
      mix(key | 0);
      mix(Math.floor(key / 0x100000000) | 0);
    } else {
      throw new TypeError(`Expected extra keys to be strings or safe integers, got ${key}`);
    }
  }
  // Cross the lanes before finalizing so neither half is a function of one lane alone.
  const a = fmix(h1 ^ Math.imul(h2, P3));
  const b = fmix(h2 ^ Math.imul(h1, M1) ^ n);
  return (a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0")) as BlockHash;
}
