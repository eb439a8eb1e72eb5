// Causal paged attention over the KV cache (prefill, chunked prefill and decode).
//
// Each call is at most two launches, one per kind of sequence (GQA-aware: the query heads that
// share a KV head are handled by one block, so each K/V element is read once for all of them):
// - decode (sequences with one new token): exact in f32 on CUDA cores, a block per (sequence, KV
//   head, context partition). The number of partitions is fixed per call from host values only
//   (decode_plan: the batch size, not the context lengths, so a CUDA graph per batch size replays
//   it); each sequence's context is split evenly over them on the device, and a partition longer
//   than its shared score buffer is walked in segments with an online softmax. With several
//   partitions, the last block of each (sequence, KV head) to finish merges the partials
//   (log-sum-exp) in the same launch: a per-pair arrival counter, which that block resets.
// - prefill (sequences with two or more): flash attention. With an f16/bf16 cache on tensor cores
//   (WMMA 16x16x16, f32 accumulators): a block owns a tile of 64 query rows — (token,
//   head-in-group) pairs — of ONE sequence and one KV head, 4 warps of 16 rows each, and walks the
//   cache in chunks of BN positions with an online softmax, stopping at the tile's causal limit.
//   Q is split into hi + lo halves of the cache type (after a per-row power-of-two scale that
//   keeps f16 in range), so the scores are f32-accurate; the probabilities are rounded to the
//   cache type once for P·V. Head dims are padded to a multiple of 16 with zeros in shared memory.
//   An f32 cache (or a shape whose tiles do not fit in shared memory) takes the f32 flash kernel.
// Which sequences are which is read from query_start on the device; the host only bounds the grids
// (num_seqs, num_tokens, max_query_len), so no launch depends on a device value.
//
// Metadata (block tables, seq lens, query_start) is device memory and is not validated on the host:
// kernels guard every index instead. A token outside every sequence, or whose position falls
// outside [0, max_blocks_per_seq * block_size), gets a zero output; a block id outside
// [0, num_blocks) reads as zeros. Never an out-of-bounds access; each case is reported
// (dl_bad_report) so the next synchronize fails with DL_ERR_INVALID_ARGUMENT.
#include <cmath>

#include "common.cuh"
#include <mma.h>

#include "half.cuh"
#include "reduce.cuh"
#include "wmma_tile.cuh"

namespace {

constexpr int DECODE_THREADS = 128;
constexpr int DECODE_CHUNK = 32;      // cache positions staged in shared memory at a time
constexpr int FLASH_THREADS = 256;
constexpr int FLASH_ROWS = 64;        // query rows per block
constexpr int FLASH_CHUNK = 32;       // cache positions per step: one per lane in the softmax
constexpr int MAX_HEAD_DIM = 256;

struct AttentionParams {
  const float* q;  // [num_tokens, q_row_stride]
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  const int32_t* seq_lens;      // [num_seqs]
  const int32_t* query_start;   // [num_seqs + 1]
  float* out;                   // [num_tokens, num_heads * head_dim]
  int32_t num_seqs, num_tokens, max_query_len, num_heads, num_kv_heads, head_dim, q_row_stride;
  int32_t block_size, max_blocks_per_seq, num_blocks;
  int32_t max_len;  // max_blocks_per_seq * block_size, clamped to INT32_MAX
  int32_t group;    // num_heads / num_kv_heads
  float scale;
  bool vec;         // 128-bit cache loads: head_dim * element size a multiple of 16
  unsigned long long* bad;  // the context's bad-metadata word
};

}  // namespace

// --- Kernels

// The sequence owning query token t: the last s with query_start[s] <= t (binary search).
__device__ __forceinline__ int32_t find_seq(const int32_t* query_start, int32_t num_seqs,
                                            int32_t t) {
  int32_t lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo + 1) / 2;
    if (query_start[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

struct QueryInfo {
  int32_t seq;
  int32_t pos;  // cache position of the query; it sees positions [0, pos]
  bool valid;
};

__device__ __forceinline__ QueryInfo query_info(const AttentionParams& p, int32_t t) {
  QueryInfo info;
  info.seq = find_seq(p.query_start, p.num_seqs, t);
  const int32_t begin = p.query_start[info.seq], end = p.query_start[info.seq + 1];
  info.pos = p.seq_lens[info.seq] - (end - begin) + (t - begin);
  info.valid = begin <= t && t < end && info.pos >= 0 && info.pos < p.max_len;
  // seq_len 0 is a padding sequence (a graph's spare row): a zero output row, not an error.
  const bool is_padding = begin <= t && t < end && p.seq_lens[info.seq] == 0;
  if (!info.valid && !is_padding) dl_bad_report(p.bad, DL_BAD_POSITION, t, info.pos);
  return info;
}

// Element offset of cache position pos of (seq, kv_head) in a cache laid out [num_blocks,
// num_kv_heads, block_size, head_dim], or -1 when its block id is out of range (reported as bad
// metadata: the caller stages zeros).
__device__ __forceinline__ int64_t cache_row_offset(const AttentionParams& p, int32_t seq,
                                                    int32_t kv_head, int32_t pos) {
  const int64_t entry = (int64_t)seq * p.max_blocks_per_seq + pos / p.block_size;
  const int32_t block = p.block_tables[entry];
  if (block < 0 || block >= p.num_blocks) {
    dl_bad_report(p.bad, DL_BAD_BLOCK_ID, entry, block);
    return -1;
  }
  return (((int64_t)block * p.num_kv_heads + kv_head) * p.block_size + pos % p.block_size) *
         p.head_dim;
}

// Stages cache rows [first, first + count) of sequence seq, KV head kv_head, widened to f32, into
// dst[count][ld]. Rows whose block id is out of range are zeros.
template <int DT>
__device__ __forceinline__ void load_cache_rows(float* dst, int ld, const void* cache_raw,
                                                const AttentionParams& p, int32_t seq,
                                                int32_t kv_head, int32_t first, int32_t count) {
  using T = typename Dtype<DT>::T;
  const T* cache = static_cast<const T*>(cache_raw);
  const int hd = p.head_dim;
  if (p.vec) {
    constexpr int E = 16 / sizeof(T);
    const int per_row = hd / E;
    for (int idx = threadIdx.x; idx < count * per_row; idx += blockDim.x) {
      const int r = idx / per_row, c = (idx % per_row) * E;
      const int64_t base = cache_row_offset(p, seq, kv_head, first + r);
      float v[E];
      if (base >= 0) {
        dl_unpack16<DT>(__ldg(reinterpret_cast<const uint4*>(cache + base + c)), v);
      } else {
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < E; e++) dst[r * ld + c + e] = v[e];
    }
  } else {
    for (int idx = threadIdx.x; idx < count * hd; idx += blockDim.x) {
      const int r = idx / hd, c = idx % hd;
      const int64_t base = cache_row_offset(p, seq, kv_head, first + r);
      const float v = base >= 0 ? Dtype<DT>::load(cache[base + c]) : 0.0f;
      dst[r * ld + c] = v;
    }
  }
}

// One chunk of cache rows staged in registers (the 16-byte path), so the next chunk's global loads
// are in flight while the block computes on the current one. Without cp.async a load written
// straight to shared memory stalls its thread until the data arrives; split into fetch (issue the
// loads into registers) and store (unpack into shared memory after the barrier), the wait falls
// after the chunk's compute instead. The values stored are load_cache_rows's, bit for bit.
template <int DT>
struct KvStage {
  using T = typename Dtype<DT>::T;
  static constexpr int E = 16 / (int)sizeof(T);
  // 16-byte pieces per thread: a chunk of head_dim 256 at 2 bytes, or 128 at 4 bytes.
  static constexpr int N = 8;
  uint4 raw[N];

  __device__ static bool fits(const AttentionParams& p) {
    return p.vec && DECODE_CHUNK * (p.head_dim / E) <= N * DECODE_THREADS;
  }

  __device__ void fetch(const void* cache_raw, const AttentionParams& p, int32_t seq,
                        int32_t kv_head, int32_t first, int32_t count) {
    const T* cache = static_cast<const T*>(cache_raw);
    const int per_row = p.head_dim / E;
#pragma unroll
    for (int i = 0; i < N; i++) {
      const int idx = threadIdx.x + i * DECODE_THREADS;
      raw[i].x = raw[i].y = raw[i].z = raw[i].w = 0u;  // zero bits are 0.0 in every cache dtype
      if (idx >= count * per_row) continue;
      const int r = idx / per_row, c = (idx % per_row) * E;
      const int64_t base = cache_row_offset(p, seq, kv_head, first + r);
      if (base >= 0) raw[i] = __ldg(reinterpret_cast<const uint4*>(cache + base + c));
    }
  }

  __device__ void store(float* dst, int ld, const AttentionParams& p, int32_t count) const {
    const int per_row = p.head_dim / E;
#pragma unroll
    for (int i = 0; i < N; i++) {
      const int idx = threadIdx.x + i * DECODE_THREADS;
      if (idx >= count * per_row) continue;
      const int r = idx / per_row, c = (idx % per_row) * E;
      float v[E];
      dl_unpack16<DT>(raw[i], v);
#pragma unroll
      for (int e = 0; e < E; e++) dst[r * ld + c + e] = v[e];
    }
  }
};

// Decode: block (s, y, part) attends heads_per_block of the query heads that read KV head
// y / subs (the (y % subs)-th run of them; subs = ceil(group / heads_per_block), more than one only
// when a whole group's q and acc would not fit in shared memory) of sequence s's one new token, if s has exactly one (other blocks exit: the prefill launch owns longer
// queries), to cache positions [k0, k1): the part-th of num_parts even, DECODE_CHUNK-aligned
// pieces of the token's context. Segments of up to seg_len positions keep their scores in shared
// memory and fold into a running (max, sum, acc) per head. With one partition the block writes the
// normalized output; otherwise its max, sum of exp and unnormalized sum of exp * V go to
// part_ml [S, H, P, 2] and part_acc [S, H, P, head_dim], and the pair's last block merges them.
//
// Shared memory (floats), gh = heads_per_block: q [gh, hd] | scores [gh, seg_len] |
// kv [CHUNK, hd + 1] | acc [gh, hd] | m, l, correction [gh] each | is-last flag.
template <int DT>
__global__ __launch_bounds__(DECODE_THREADS) void attention_decode_kernel(
    AttentionParams p, int32_t heads_per_block, int32_t seg_len, int32_t num_parts,
    float* __restrict__ part_ml,
    float* __restrict__ part_acc, unsigned* __restrict__ counters) {
  extern __shared__ float smem[];
  const int32_t s = blockIdx.x, part = blockIdx.z;
  const int32_t subs = (p.group + heads_per_block - 1) / heads_per_block;
  const int32_t kv_head = blockIdx.y / subs, sub = blockIdx.y % subs;
  // This block's query heads: first_head .. first_head + group - 1 (group is local from here on).
  const int hd = p.head_dim, group = min(heads_per_block, p.group - sub * heads_per_block);
  const int ld = hd + 1;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  constexpr int num_warps = DECODE_THREADS / 32;
  float* sq = smem;
  float* ss = sq + group * hd;
  float* skv = ss + (int64_t)group * seg_len;
  float* sacc = skv + DECODE_CHUNK * ld;
  float* sm = sacc + group * hd;
  float* sl = sm + group;
  float* scorr = sl + group;
  int* s_last = reinterpret_cast<int*>(scorr + group);  // within the launch's size for gh heads

  // Uniform over the block: whether s is a decode sequence, and where its token sits.
  const int32_t t = p.query_start[s];
  const int32_t num_new = p.query_start[s + 1] - t;
  if (num_new != 1) {
    if (num_new > p.max_query_len && blockIdx.y == 0 && part == 0 && tid == 0) {
      dl_bad_report(p.bad, DL_BAD_QUERY_LEN, s, num_new);
    }
    return;
  }
  if (t < 0 || t >= p.num_tokens) {
    if (blockIdx.y == 0 && part == 0 && tid == 0) dl_bad_report(p.bad, DL_BAD_POSITION, t, -1);
    return;
  }
  const int32_t pos = p.seq_lens[s] - 1;
  const bool valid = pos >= 0 && pos < p.max_len;
  // seq_len 0 is a padding sequence (a graph's spare row): a zero output row, not an error.
  if (!valid && p.seq_lens[s] != 0 && blockIdx.y == 0 && part == 0 && tid == 0) {
    dl_bad_report(p.bad, DL_BAD_POSITION, t, pos);
  }
  const int32_t ctx_len = valid ? pos + 1 : 0;
  const int32_t part_len =
      num_parts == 1 ? ctx_len
                     : ((ctx_len + num_parts - 1) / num_parts + DECODE_CHUNK - 1) / DECODE_CHUNK *
                           DECODE_CHUNK;
  const int64_t k0 = (int64_t)part * part_len;
  const int32_t k1 = (int32_t)min((int64_t)ctx_len, k0 + part_len);
  const int32_t first_head = kv_head * p.group + sub * heads_per_block;
  float* out_row = p.out + (int64_t)t * p.num_heads * hd + (int64_t)first_head * hd;

  const float* q_row = p.q + (int64_t)t * p.q_row_stride + (int64_t)first_head * hd;
  for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
    sq[idx] = q_row[idx];
    sacc[idx] = 0.0f;
  }
  for (int g = tid; g < group; g += DECODE_THREADS) {
    sm[g] = -INFINITY;
    sl[g] = 0.0f;
  }

  // K and V chunks are staged one ahead in registers where they fit (KvStage): the order is a
  // segment's K chunks, then its V chunks, then the next segment's K chunks.
  KvStage<DT> stage;
  const bool pipelined = KvStage<DT>::fits(p);
  if (pipelined && k0 < k1) {
    stage.fetch(p.k_cache, p, s, kv_head, (int32_t)k0, min(DECODE_CHUNK, min(seg_len, k1 - (int32_t)k0)));
  }
  for (int32_t seg0 = (int32_t)k0; seg0 < k1; seg0 += seg_len) {
    const int32_t seg1 = min(seg0 + seg_len, k1);
    const int32_t num_keys = seg1 - seg0;
    // Scores: item (g, j) is one dot product of q head g with cached key j of the chunk.
    for (int32_t c0 = seg0; c0 < seg1; c0 += DECODE_CHUNK) {
      const int cnt = min(DECODE_CHUNK, seg1 - c0);
      __syncthreads();  // the previous chunk's keys (and q, on the first pass) are settled
      if (pipelined) stage.store(skv, ld, p, cnt);
      else load_cache_rows<DT>(skv, ld, p.k_cache, p, s, kv_head, c0, cnt);
      __syncthreads();
      if (pipelined) {  // the next chunk: this segment's next keys, or its first values
        if (c0 + DECODE_CHUNK < seg1) {
          stage.fetch(p.k_cache, p, s, kv_head, c0 + DECODE_CHUNK, min(DECODE_CHUNK, seg1 - c0 - DECODE_CHUNK));
        } else {
          stage.fetch(p.v_cache, p, s, kv_head, seg0, min(DECODE_CHUNK, num_keys));
        }
      }
      for (int idx = tid; idx < group * cnt; idx += DECODE_THREADS) {
        const int g = idx / cnt, j = idx % cnt;
        const float* qg = sq + g * hd;
        const float* kj = skv + j * ld;
        float dot = 0.0f;
        for (int d = 0; d < hd; d++) dot = fmaf(qg[d], kj[d], dot);
        ss[(int64_t)g * seg_len + (c0 - seg0) + j] = dot * p.scale;
      }
    }
    __syncthreads();

    // Online softmax over the segment, one warp per query head.
    for (int g = warp; g < group; g += num_warps) {
      float* sg = ss + (int64_t)g * seg_len;
      float mx = -INFINITY;
      for (int j = lane; j < num_keys; j += 32) mx = fmaxf(mx, sg[j]);
      const float m_old = sm[g];
      const float m_new = fmaxf(m_old, dl_warp_max(mx));
      float sum = 0.0f;
      for (int j = lane; j < num_keys; j += 32) {
        const float e = expf(sg[j] - m_new);
        sg[j] = e;
        sum += e;
      }
      sum = dl_warp_sum(sum);
      __syncwarp();  // every lane has read m_old
      if (lane == 0) {
        const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        sm[g] = m_new;
        sl[g] = sl[g] * corr + sum;
        scorr[g] = corr;
      }
    }
    __syncthreads();
    for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) sacc[idx] *= scorr[idx / hd];

    // Weighted sum of V: item (g, d) accumulates over the chunk's positions.
    for (int32_t c0 = seg0; c0 < seg1; c0 += DECODE_CHUNK) {
      const int cnt = min(DECODE_CHUNK, seg1 - c0);
      __syncthreads();
      if (pipelined) stage.store(skv, ld, p, cnt);
      else load_cache_rows<DT>(skv, ld, p.v_cache, p, s, kv_head, c0, cnt);
      __syncthreads();
      if (pipelined) {  // the next chunk: this segment's next values, or the next segment's keys
        if (c0 + DECODE_CHUNK < seg1) {
          stage.fetch(p.v_cache, p, s, kv_head, c0 + DECODE_CHUNK, min(DECODE_CHUNK, seg1 - c0 - DECODE_CHUNK));
        } else if (seg1 < k1) {
          stage.fetch(p.k_cache, p, s, kv_head, seg1, min(DECODE_CHUNK, min(seg_len, k1 - seg1)));
        }
      }
      for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
        const int g = idx / hd, d = idx % hd;
        const float* pg = ss + (int64_t)g * seg_len + (c0 - seg0);
        float r = 0.0f;
        for (int j = 0; j < cnt; j++) r = fmaf(pg[j], skv[j * ld + d], r);
        sacc[idx] += r;
      }
    }
  }
  __syncthreads();

  if (num_parts == 1) {
    for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
      const float l = sl[idx / hd];
      out_row[idx] = l > 0.0f ? sacc[idx] / l : 0.0f;
    }
    return;
  }
  // An empty partition stores (-inf, 0) and an all-zero sum, which the merge skips.
  for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
    const int g = idx / hd, d = idx % hd;
    const int64_t slot = ((int64_t)s * p.num_heads + first_head + g) * num_parts + part;
    part_acc[slot * hd + d] = sacc[idx];
    if (d == 0) {
      part_ml[slot * 2] = sm[g];
      part_ml[slot * 2 + 1] = sl[g];
    }
  }
  // Publish this block's partials device-wide before it counts itself in; the block that brings
  // the count to num_parts sees every other block's partials.
  __threadfence();
  __syncthreads();
  unsigned* counter = counters + (int64_t)s * gridDim.y + blockIdx.y;
  if (tid == 0) s_last[0] = atomicAdd(counter, 1u) == (unsigned)num_parts - 1;
  __syncthreads();
  if (!s_last[0]) return;
  __threadfence();
  if (tid == 0) *counter = 0;  // zero again for the next launch (or graph replay)

  // Merge: per head the max m over non-empty partitions and L = sum l_i exp(m_i - m), then each
  // output element sum acc_i exp(m_i - m) / L. __ldcg: other blocks wrote these in this launch.
  for (int g = warp; g < group; g += num_warps) {
    const float* ml = part_ml + ((int64_t)s * p.num_heads + first_head + g) * num_parts * 2;
    float m = -INFINITY;
    for (int i = lane; i < num_parts; i += 32) {
      if (__ldcg(ml + 2 * i + 1) > 0.0f) m = fmaxf(m, __ldcg(ml + 2 * i));
    }
    m = dl_warp_max(m);
    float l = 0.0f;
    for (int i = lane; i < num_parts; i += 32) {
      const float li = __ldcg(ml + 2 * i + 1);
      if (li > 0.0f) l += li * expf(__ldcg(ml + 2 * i) - m);
    }
    l = dl_warp_sum(l);
    __syncwarp();  // sm and sl are read again below only after the barrier
    if (lane == 0) {
      sm[g] = m;
      sl[g] = l;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
    const int g = idx / hd, d = idx % hd;
    const int64_t slot0 = ((int64_t)s * p.num_heads + first_head + g) * num_parts;
    const float m = sm[g], l = sl[g];
    float acc = 0.0f;
    for (int32_t i = 0; i < num_parts; i++) {
      const float li = __ldcg(part_ml + (slot0 + i) * 2 + 1);
      if (li > 0.0f) {
        acc += __ldcg(part_acc + (slot0 + i) * hd + d) * expf(__ldcg(part_ml + (slot0 + i) * 2) - m);
      }
    }
    out_row[idx] = l > 0.0f ? acc / l : 0.0f;
  }
}

// Flash attention in f32 (f32 caches): block (x, kv_head) owns query rows [x * 64, x * 64 + 64)
// of the flattened (token, head-in-group) order for this KV head. HDB is head_dim rounded up to
// 64, 128 or 256: the size of each thread's register accumulator. Rows of decode sequences (one
// new token) are the decode launch's: skipped here, their outputs left alone.
//
// Thread roles, 256 threads:
// - scores: thread (rp = tid / 8, kg = tid % 8) computes rows 2rp, 2rp + 1 x keys kg + 8i, i < 4;
// - softmax: warp w updates rows 8w .. 8w + 7, lane j owning key j of the chunk;
// - P·V: thread (rg = tid / 16, dg = tid % 16) owns rows 4rg .. 4rg + 3 x dims dg + 16i.
// Shared memory (floats): q [64, hd + 1] | k [32, hd + 1] | v [32, hd] | p [64, 33] |
// m, l, correction [64] | seq, pos [64] (int32).
template <int DT, int HDB>
__global__ __launch_bounds__(FLASH_THREADS) void attention_flash_kernel(AttentionParams p) {
  extern __shared__ float smem[];
  constexpr int DIMS = HDB / 16;  // dims per thread in P·V
  constexpr int PLD = FLASH_CHUNK + 1;
  const int hd = p.head_dim, qld = hd + 1, kld = hd + 1;
  const int group = p.group, kv_head = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float* sq = smem;
  float* sk = sq + FLASH_ROWS * qld;
  float* sv = sk + FLASH_CHUNK * kld;
  float* sp = sv + FLASH_CHUNK * hd;
  float* s_m = sp + FLASH_ROWS * PLD;
  float* s_l = s_m + FLASH_ROWS;
  float* s_corr = s_l + FLASH_ROWS;
  int32_t* s_seq = reinterpret_cast<int32_t*>(s_corr + FLASH_ROWS);
  int32_t* s_pos = s_seq + FLASH_ROWS;

  const int64_t total_rows = (int64_t)p.num_tokens * group;
  const int64_t row0 = (int64_t)blockIdx.x * FLASH_ROWS;
  const int num_rows = (int)min((int64_t)FLASH_ROWS, total_rows - row0);

  for (int r = tid; r < FLASH_ROWS; r += FLASH_THREADS) {
    s_m[r] = -INFINITY;
    s_l[r] = 0.0f;
    s_seq[r] = -1;
    s_pos[r] = -1;
    if (r < num_rows) {
      const QueryInfo info = query_info(p, (int32_t)((row0 + r) / group));
      if (p.query_start[info.seq + 1] - p.query_start[info.seq] == 1) {
        s_seq[r] = -2;  // a decode row: not written here
      } else if (info.valid) {
        s_seq[r] = info.seq;
        s_pos[r] = info.pos;
      }
    }
  }
  for (int idx = tid; idx < FLASH_ROWS * hd; idx += FLASH_THREADS) {
    const int r = idx / hd, d = idx % hd;
    float v = 0.0f;
    if (r < num_rows) {
      const int64_t row = row0 + r, t = row / group, g = row % group;
      v = p.q[t * p.q_row_stride + ((int64_t)kv_head * group + g) * hd + d];
    }
    sq[r * qld + d] = v;
  }

  float acc[4][DIMS];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < DIMS; j++) acc[i][j] = 0.0f;
  const int rp = tid / 8, kg = tid % 8;
  const int rg = tid / 16, dg = tid % 16;

  // The sequences of the block's first and last tokens bound the ones it must walk.
  const int32_t t_first = (int32_t)(row0 / group);
  const int32_t t_last = (int32_t)((row0 + num_rows - 1) / group);
  const int32_t seq_first = find_seq(p.query_start, p.num_seqs, t_first);
  const int32_t seq_last = find_seq(p.query_start, p.num_seqs, t_last);
  for (int32_t seq = seq_first; seq <= seq_last; seq++) {
    // The causal limit of this sequence's rows here is the position of its last token here.
    const int32_t begin = p.query_start[seq], end = p.query_start[seq + 1];
    const int32_t last = min(end - 1, t_last);
    if (last < begin || last < t_first || end - begin == 1) continue;
    const int32_t kv_end = min(p.seq_lens[seq] - (end - begin) + (last - begin) + 1, p.max_len);
    for (int32_t c0 = 0; c0 < kv_end; c0 += FLASH_CHUNK) {
      const int cnt = min(FLASH_CHUNK, kv_end - c0);
      __syncthreads();  // previous chunk fully consumed; row metadata and q stored
      load_cache_rows<DT>(sk, kld, p.k_cache, p, seq, kv_head, c0, cnt);
      load_cache_rows<DT>(sv, hd, p.v_cache, p, seq, kv_head, c0, cnt);
      __syncthreads();

      // Scores, masked to -inf outside this sequence's rows and the causal limit.
      {
        float s[2][4] = {};
        const float* q0 = sq + (2 * rp) * qld;
        const float* q1 = q0 + qld;
        for (int d = 0; d < hd; d++) {
          const float a0 = q0[d], a1 = q1[d];
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const float b = sk[(kg + 8 * i) * kld + d];
            s[0][i] = fmaf(a0, b, s[0][i]);
            s[1][i] = fmaf(a1, b, s[1][i]);
          }
        }
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
          const int r = 2 * rp + rr;
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const int j = kg + 8 * i;
            const bool visible = j < cnt && s_seq[r] == seq && c0 + j <= s_pos[r];
            sp[r * PLD + j] = visible ? s[rr][i] * p.scale : -INFINITY;
          }
        }
      }
      __syncthreads();

      // Online softmax update of rows 8w .. 8w + 7.
      for (int r = warp * 8; r < warp * 8 + 8; r++) {
        const float v = sp[r * PLD + lane];
        const float m_old = s_m[r];
        const float m_new = fmaxf(m_old, dl_warp_max(v));
        float prob = 0.0f, corr = 1.0f;
        if (m_new != -INFINITY) {
          prob = expf(v - m_new);
          corr = expf(m_old - m_new);
        }
        const float sum = dl_warp_sum(prob);
        sp[r * PLD + lane] = prob;
        if (lane == 0) {
          s_l[r] = s_l[r] * corr + sum;
          s_m[r] = m_new;
          s_corr[r] = corr;
        }
      }
      __syncthreads();

      // acc = acc * correction + P · V.
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float corr = s_corr[4 * rg + i];
#pragma unroll
        for (int j = 0; j < DIMS; j++) acc[i][j] *= corr;
      }
      for (int j = 0; j < cnt; j++) {
        float prob[4];
#pragma unroll
        for (int i = 0; i < 4; i++) prob[i] = sp[(4 * rg + i) * PLD + j];
        const float* vj = sv + j * hd;
#pragma unroll
        for (int jd = 0; jd < DIMS; jd++) {
          const int d = dg + 16 * jd;
          if (d < hd) {
            const float v = vj[d];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i][jd] = fmaf(prob[i], v, acc[i][jd]);
          }
        }
      }
    }
  }
  __syncthreads();

#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int r = 4 * rg + i;
    if (r >= num_rows || s_seq[r] == -2) continue;
    const int64_t row = row0 + r, t = row / group, g = row % group;
    const float l = s_l[r];
    float* out_row = p.out + t * (int64_t)p.num_heads * hd + ((int64_t)kv_head * group + g) * hd;
#pragma unroll
    for (int jd = 0; jd < DIMS; jd++) {
      const int d = dg + 16 * jd;
      if (d < hd) out_row[d] = l > 0.0f ? acc[i][jd] / l : 0.0f;
    }
  }
}

// --- Tensor-core prefill

constexpr int PREFILL_THREADS = 128;  // 4 warps, 16 query rows each
constexpr int PREFILL_ROWS = 64;

// Shared memory layout of the prefill kernel (byte offsets, each region 128-byte aligned), for
// head_dim padded to hdp (a multiple of 16) and BN cache positions per chunk. Row pitches are
// the padded widths plus 8 (16-bit) or 4 (f32) elements: WMMA needs multiples of 16 bytes, and
// the skew spreads rows over the banks.
struct PrefillSmem {
  size_t q_hi, q_lo, k, v, s, p, o, m, l, up, pos, info, total;
  int qld, sld, pld, old;
};
__host__ __device__ inline PrefillSmem prefill_smem(int hdp, int bn) {
  PrefillSmem L;
  L.qld = hdp + 8;
  L.sld = bn + 4;
  L.pld = bn + 8;
  L.old = hdp + 4;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += (bytes + 127) / 128 * 128;
    return here;
  };
  L.q_hi = take((size_t)PREFILL_ROWS * L.qld * 2);
  L.q_lo = take((size_t)PREFILL_ROWS * L.qld * 2);
  L.k = take((size_t)bn * L.qld * 2);
  L.v = take((size_t)bn * L.qld * 2);
  L.s = take((size_t)PREFILL_ROWS * L.sld * 4);
  L.p = take((size_t)PREFILL_ROWS * L.pld * 2);
  L.o = take((size_t)PREFILL_ROWS * L.old * 4);
  L.m = take(PREFILL_ROWS * 4);
  L.l = take(PREFILL_ROWS * 4);
  L.up = take(PREFILL_ROWS * 4);
  L.pos = take(PREFILL_ROWS * 4);
  L.info = take(2 * 4);
  L.total = at;
  return L;
}

// Tiles of PREFILL_ROWS query rows a sequence with num_new new tokens gets (decode and empty
// sequences none); clamped so a warp's sum of 32 cannot overflow.
__device__ __forceinline__ int32_t prefill_tiles(int32_t num_new, int32_t group) {
  if (num_new < 2) return 0;
  const int64_t tiles = ((int64_t)num_new * group + PREFILL_ROWS - 1) / PREFILL_ROWS;
  return (int32_t)min(tiles, (int64_t)1 << 24);
}

// Stages cache rows [first, first + count) of (seq, kv_head) as raw 16-bit values into dst[rows]
// [ld], zero past count rows and past head_dim columns up to hdp (WMMA reads the padding).
template <int DT>
__device__ __forceinline__ void load_cache_raw(uint16_t* dst, int ld, const void* cache_raw,
                                               const AttentionParams& p, int32_t seq,
                                               int32_t kv_head, int32_t first, int32_t count,
                                               int rows, int hdp) {
  const uint16_t* cache = static_cast<const uint16_t*>(cache_raw);
  const int hd = p.head_dim;
  if (p.vec) {  // head_dim a multiple of 8: 16-byte pieces
    const int per_row = hdp / 8;
    for (int idx = threadIdx.x; idx < rows * per_row; idx += blockDim.x) {
      const int r = idx / per_row, c = (idx % per_row) * 8;
      uint4 v = {0u, 0u, 0u, 0u};
      if (r < count && c < hd) {
        const int64_t base = cache_row_offset(p, seq, kv_head, first + r);
        if (base >= 0) v = __ldg(reinterpret_cast<const uint4*>(cache + base + c));
      }
      *reinterpret_cast<uint4*>(dst + r * ld + c) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * hdp; idx += blockDim.x) {
      const int r = idx / hdp, c = idx % hdp;
      uint16_t v = 0;
      if (r < count && c < hd) {
        const int64_t base = cache_row_offset(p, seq, kv_head, first + r);
        if (base >= 0) v = cache[base + c];
      }
      dst[r * ld + c] = v;
    }
  }
}

// Block (x, kv_head): the x-th prefill tile over all sequences (in order; a sequence with n new
// tokens has ceil(n * group / 64) of them); blocks past the last tile exit. Tile rows are the
// sequence's (token, head-in-group) pairs in order, so a row's token is row / group.
//
// Per chunk of BN cache positions (two block barriers, around the K/V load), warp w alone owns rows
// 16w .. 16w + 15 of S = Q·Kᵀ, the softmax state and O:
//   S[16, BN] = Q_lo·Kᵀ + Q_hi·Kᵀ (f32 accumulators) -> shared;
//   row by row: mask, scale, m_new, P = round(exp(S - m_new)), l = l·corr + sum(P), O row *= corr;
//   O[16, hdp] += P·V, each 16-column strip loaded from shared, accumulated, stored back.
template <int DT, int BN>
__global__ __launch_bounds__(PREFILL_THREADS) void attention_prefill_wmma_kernel(AttentionParams p) {
  namespace wmma = nvcuda::wmma;
  using H = WmmaType<DT>;
  using T = typename H::T;
  extern __shared__ float smem[];
  char* base = reinterpret_cast<char*>(smem);
  const int hd = p.head_dim, hdp = (hd + 15) / 16 * 16, group = p.group, kv_head = blockIdx.y;
  const PrefillSmem L = prefill_smem(hdp, BN);
  T* sq_hi = reinterpret_cast<T*>(base + L.q_hi);
  T* sq_lo = reinterpret_cast<T*>(base + L.q_lo);
  T* sk = reinterpret_cast<T*>(base + L.k);
  T* sv = reinterpret_cast<T*>(base + L.v);
  float* ss = reinterpret_cast<float*>(base + L.s);
  T* sp = reinterpret_cast<T*>(base + L.p);
  float* so = reinterpret_cast<float*>(base + L.o);
  float* s_m = reinterpret_cast<float*>(base + L.m);
  float* s_l = reinterpret_cast<float*>(base + L.l);
  float* s_up = reinterpret_cast<float*>(base + L.up);
  int32_t* s_pos = reinterpret_cast<int32_t*>(base + L.pos);
  int32_t* s_info = reinterpret_cast<int32_t*>(base + L.info);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  // Which sequence and tile: warp 0 scans the tile counts 32 sequences at a time.
  if (warp == 0) {
    if (lane == 0) s_info[0] = -1;
    __syncwarp();
    const int32_t target = (int32_t)blockIdx.x;
    int32_t done = 0;  // tiles of the sequences before this group of 32
    for (int32_t c = 0; c < p.num_seqs && done <= target; c += 32) {
      const int32_t s = c + lane;
      const int32_t n = s < p.num_seqs ? p.query_start[s + 1] - p.query_start[s] : 0;
      const int32_t cnt = prefill_tiles(n, group);
      int32_t incl = cnt;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int32_t v = __shfl_up_sync(DL_FULL_MASK, incl, off);
        if (lane >= off) incl += v;
      }
      const int32_t excl = incl - cnt;
      if (cnt > 0 && done + excl <= target && target < done + incl) {
        s_info[0] = s;
        s_info[1] = target - done - excl;
      }
      int32_t total = cnt;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) total += __shfl_xor_sync(DL_FULL_MASK, total, off);
      done += total;
    }
  }
  __syncthreads();
  const int32_t seq = s_info[0];
  if (seq < 0) return;  // past the last tile (uniform over the block)
  const int32_t tile = s_info[1];
  const int32_t begin = p.query_start[seq];
  const int32_t num_new = p.query_start[seq + 1] - begin;
  const int32_t pos0 = p.seq_lens[seq] - num_new;  // position of the sequence's first new token
  const int64_t row0 = (int64_t)tile * PREFILL_ROWS;
  const int num_rows = (int)min((int64_t)PREFILL_ROWS, (int64_t)num_new * group - row0);

  // Q rows of this warp: scaled by a power of two (largest |q| in [2^14, 2^15): f16 neither
  // overflows nor goes subnormal in the lo half), split hi + lo, zero-padded to hdp.
  for (int rr = 0; rr < 16; rr++) {
    const int r = warp * 16 + rr;
    const int64_t row = row0 + r;
    const int32_t tok = (int32_t)(row / group), g = (int32_t)(row % group);
    const bool in_tile = r < num_rows;
    const int32_t t = begin + tok, pos = pos0 + tok;
    const bool valid = in_tile && t >= 0 && t < p.num_tokens && pos >= 0 && pos < p.max_len;
    if (in_tile && !valid && lane == 0 && g == 0) dl_bad_report(p.bad, DL_BAD_POSITION, t, pos);
    const float* q_row = p.q + (int64_t)t * p.q_row_stride + ((int64_t)kv_head * group + g) * hd;
    float a = 0.0f;
    if (valid) {
      for (int d = lane; d < hd; d += 32) a = fmaxf(a, fabsf(q_row[d]));
    }
    a = dl_warp_max(a);
    const int e = dl_wmma_row_shift(a);  // the matmuls' row scale, per query row
    const float down = ldexpf(1.0f, -e);
    for (int d = lane; d < hdp; d += 32) {
      const float x = valid && d < hd ? q_row[d] * down : 0.0f;
      const T hi = H::round(x);
      sq_hi[r * L.qld + d] = hi;
      sq_lo[r * L.qld + d] = H::round(x - H::widen(hi));
    }
    for (int d = lane; d < hdp; d += 32) so[r * L.old + d] = 0.0f;
    if (lane == 0) {
      s_m[r] = -INFINITY;
      s_l[r] = 0.0f;
      s_up[r] = ldexpf(1.0f, e) * p.scale;
      s_pos[r] = valid ? pos : -1;  // -1 sees nothing
    }
  }

  // The tile's causal limit: its last token's position (clamped to the cache).
  const int32_t last_tok = (int32_t)((row0 + num_rows - 1) / group);
  const int32_t kv_end = max(0, min(pos0 + last_tok + 1, p.max_len));
  const int kblocks = hdp / 16;
  for (int32_t c0 = 0; c0 < kv_end; c0 += BN) {
    const int cnt = min(BN, kv_end - c0);
    __syncthreads();  // the previous chunk's K and V are consumed (and Q, O, row state stored)
    load_cache_raw<DT>(reinterpret_cast<uint16_t*>(sk), L.qld, p.k_cache, p, seq, kv_head, c0, cnt,
                       BN, hdp);
    load_cache_raw<DT>(reinterpret_cast<uint16_t*>(sv), L.qld, p.v_cache, p, seq, kv_head, c0, cnt,
                       BN, hdp);
    __syncthreads();

    // S strip of this warp: 16 rows x BN positions.
    for (int j = 0; j < BN / 16; j++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < kblocks; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_hi, a_lo;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a_hi, sq_hi + warp * 16 * L.qld + kk * 16, L.qld);
        wmma::load_matrix_sync(a_lo, sq_lo + warp * 16 * L.qld + kk * 16, L.qld);
        wmma::load_matrix_sync(b, sk + j * 16 * L.qld + kk * 16, L.qld);
        wmma::mma_sync(acc, a_lo, b, acc);
        wmma::mma_sync(acc, a_hi, b, acc);
      }
      wmma::store_matrix_sync(ss + warp * 16 * L.sld + j * 16, acc, L.sld, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax, row by row; lane owns positions lane + 32i of the chunk.
    for (int rr = 0; rr < 16; rr++) {
      const int r = warp * 16 + rr;
      const int32_t pos = s_pos[r];
      const float up = s_up[r];
      float sc[BN / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < BN / 32; i++) {
        const int c = lane + 32 * i;
        sc[i] = c < cnt && c0 + c <= pos ? ss[r * L.sld + c] * up : -INFINITY;
        mx = fmaxf(mx, sc[i]);
      }
      const float m_old = s_m[r];
      const float m_new = fmaxf(m_old, dl_warp_max(mx));
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < BN / 32; i++) {
        const T pr = H::round(m_new == -INFINITY ? 0.0f : expf(sc[i] - m_new));
        sp[r * L.pld + lane + 32 * i] = pr;
        sum += H::widen(pr);  // l sums the rounded P, so the output is a convex combination of V
      }
      sum = dl_warp_sum(sum);
      const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      if (corr != 1.0f) {
        for (int d = lane; d < hdp; d += 32) so[r * L.old + d] *= corr;
      }
      __syncwarp();  // every lane has read s_m[r]
      if (lane == 0) {
        s_m[r] = m_new;
        s_l[r] = s_l[r] * corr + sum;
      }
    }
    __syncwarp();

    // O strip += P·V, 16 output columns at a time.
    for (int n = 0; n < kblocks; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* o_tile = so + warp * 16 * L.old + n * 16;
      wmma::load_matrix_sync(acc, o_tile, L.old, wmma::mem_row_major);
      for (int kk = 0; kk < BN / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, sp + warp * 16 * L.pld + kk * 16, L.pld);
        wmma::load_matrix_sync(b, sv + kk * 16 * L.qld + n * 16, L.qld);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o_tile, acc, L.old, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncwarp();

  for (int rr = 0; rr < 16; rr++) {
    const int r = warp * 16 + rr;
    if (r >= num_rows) break;
    const int64_t row = row0 + r;
    const int32_t t = begin + (int32_t)(row / group), g = (int32_t)(row % group);
    if (t < 0 || t >= p.num_tokens) continue;
    const float l = s_l[r];
    float* out_row = p.out + (int64_t)t * p.num_heads * hd + ((int64_t)kv_head * group + g) * hd;
    for (int d = lane; d < hd; d += 32) out_row[d] = l > 0.0f ? so[r * L.old + d] / l : 0.0f;
  }
}

// --- Launchers

namespace {

// Raises a kernel's dynamic shared memory limit when it needs more than the default 48 KiB.
template <class Kernel>
int32_t allow_smem(const char* fn, dl_context* ctx, Kernel kernel, size_t bytes) {
  if (bytes > (size_t)ctx->max_smem_optin) {
    return dl_fail(DL_ERR_UNSUPPORTED,
                   "%s: this shape needs %zu bytes of shared memory per block; the device has %d",
                   fn, bytes, ctx->max_smem_optin);
  }
  if (bytes > 48 * 1024) {
    DL_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  }
  return DL_OK;
}

// Cache positions per decode segment: a segment's scores fill at most 32 KiB of shared memory.
int32_t decode_seg_len(int64_t group) {
  int32_t seg_len = 256;
  if (group * seg_len > 8192) seg_len = max(32, (int32_t)(8192 / group) / 32 * 32);
  return seg_len;
}

// Context partitions of a decode launch: enough (sequence, KV head, partition) blocks to give each
// SM DECODE_BLOCKS_PER_SM of them, at most one per DECODE_CHUNK positions of the longest context
// the cache holds and at most DECODE_MAX_PARTS. It depends only on the batch size and the shapes
// fixed at start-up, never on the context lengths, so a CUDA graph captured for one batch size
// replays with any contexts (each sequence's split is computed on the device; partitions past its
// context exit at once). A call splits only while num_seqs * num_kv_heads is below the target,
// which DL_ATTN_COUNTERS covers.
constexpr int DECODE_BLOCKS_PER_SM = 4;
constexpr int DECODE_MAX_PARTS = 256;
int32_t decode_parts(int num_sms, int64_t num_seqs, int64_t num_kv_heads, int64_t max_len) {
  const int64_t pairs = num_seqs * num_kv_heads;
  const int64_t target = (int64_t)DECODE_BLOCKS_PER_SM * (num_sms > 0 ? num_sms : 1);
  if (pairs <= 0 || pairs >= target || pairs > DL_ATTN_COUNTERS) return 1;
  int64_t parts = (target + pairs - 1) / pairs;
  parts = min(parts, (max_len + DECODE_CHUNK - 1) / DECODE_CHUNK);
  parts = min(parts, (int64_t)DECODE_MAX_PARTS);
  return (int32_t)max(parts, (int64_t)1);
}

// Workspace of one decode launch: per (sequence, head, partition) its max and sum of exp [2] and
// its unnormalized output [head_dim]; none without a split.
size_t decode_workspace_bytes(int num_sms, int64_t num_seqs, int64_t num_heads, int64_t y_blocks,
                              int64_t head_dim, int64_t max_len) {
  const int32_t parts = decode_parts(num_sms, num_seqs, y_blocks, max_len);
  if (parts <= 1) return 0;
  return (size_t)num_seqs * num_heads * parts * (2 + head_dim) * sizeof(float);
}

// Shared memory of a decode block for gh query heads (attention_decode_kernel's layout).
size_t decode_smem(int64_t gh, int64_t head_dim, int32_t seg_len) {
  return sizeof(float) *
         ((size_t)gh * head_dim * 2 + (size_t)gh * seg_len + (size_t)DECODE_CHUNK * (head_dim + 1) +
          3 * (size_t)gh + 1);
}

// Query heads per decode block: the whole GQA group, halved until its q and acc fit the device.
int32_t decode_heads_per_block(int max_smem, int64_t group, int64_t head_dim) {
  const int32_t seg_len = decode_seg_len(group);
  int64_t gh = group;
  while (gh > 1 && decode_smem(gh, head_dim, seg_len) > (size_t)max_smem) gh = (gh + 1) / 2;
  return (int32_t)gh;
}

template <int DT>
int32_t launch_decode(const char* fn, dl_context* ctx, const AttentionParams& p) {
  const int group = p.group, hd = p.head_dim;
  const int32_t seg_len = decode_seg_len(group);
  const int32_t gh = decode_heads_per_block(ctx->max_smem_optin, group, hd);
  const int64_t y_blocks = (int64_t)p.num_kv_heads * ((group + gh - 1) / gh);
  if (y_blocks > 65535) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: %lld decode blocks per sequence are more than 65535", fn,
                   (long long)y_blocks);
  }
  const int32_t num_parts = decode_parts(ctx->num_sms, p.num_seqs, y_blocks, p.max_len);
  const size_t smem = decode_smem(gh, hd, seg_len);
  auto kernel = attention_decode_kernel<DT>;
  DL_TRY(allow_smem(fn, ctx, kernel, smem));
  float* part_ml = nullptr;
  float* part_acc = nullptr;
  if (num_parts > 1) {
    const size_t slots = (size_t)p.num_seqs * p.num_heads * num_parts;
    void* workspace = nullptr;
    DL_TRY(dl_workspace(fn, ctx,
                        decode_workspace_bytes(ctx->num_sms, p.num_seqs, p.num_heads, y_blocks, hd,
                                               p.max_len),
                        &workspace));
    part_ml = static_cast<float*>(workspace);
    part_acc = part_ml + slots * 2;
  }
  const dim3 grid((unsigned)p.num_seqs, (unsigned)y_blocks, (unsigned)num_parts);
  attention_decode_kernel<DT><<<grid, DECODE_THREADS, smem, ctx->stream>>>(
      p, gh, seg_len, num_parts, part_ml, part_acc, ctx->attn_counters);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

template <int DT, int HDB>
int32_t launch_flash_hdb(const char* fn, dl_context* ctx, const AttentionParams& p) {
  const int hd = p.head_dim;
  const size_t smem =
      sizeof(float) * ((size_t)FLASH_ROWS * (hd + 1) + (size_t)FLASH_CHUNK * (hd + 1) +
                       (size_t)FLASH_CHUNK * hd + (size_t)FLASH_ROWS * (FLASH_CHUNK + 1) +
                       3 * (size_t)FLASH_ROWS) +
      sizeof(int32_t) * 2 * FLASH_ROWS;
  auto kernel = attention_flash_kernel<DT, HDB>;
  DL_TRY(allow_smem(fn, ctx, kernel, smem));
  const int64_t blocks = ((int64_t)p.num_tokens * p.group + FLASH_ROWS - 1) / FLASH_ROWS;
  const dim3 grid((unsigned)blocks, (unsigned)p.num_kv_heads);
  attention_flash_kernel<DT, HDB><<<grid, FLASH_THREADS, smem, ctx->stream>>>(p);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

template <int DT>
int32_t launch_flash(const char* fn, dl_context* ctx, const AttentionParams& p) {
  if (p.head_dim <= 64) return launch_flash_hdb<DT, 64>(fn, ctx, p);
  if (p.head_dim <= 128) return launch_flash_hdb<DT, 128>(fn, ctx, p);
  return launch_flash_hdb<DT, 256>(fn, ctx, p);
}

// Tensor-core prefill: BN = 64 cache positions per chunk while head_dim pads to at most 128, else
// 32 (shared memory). Returns DL_ERR_UNSUPPORTED, setting no error, when the tiles do not fit, so
// the caller can take the f32 kernel.
template <int DT, int BN>
int32_t launch_prefill_bn(const char* fn, dl_context* ctx, const AttentionParams& p, bool* launched) {
  *launched = false;
  const int hdp = (p.head_dim + 15) / 16 * 16;
  const size_t smem = prefill_smem(hdp, BN).total;
  if (smem > (size_t)ctx->max_smem_optin) return DL_OK;
  auto kernel = attention_prefill_wmma_kernel<DT, BN>;
  DL_TRY(allow_smem(fn, ctx, kernel, smem));
  // Tiles of the prefill sequences: each has ceil(n * group / 64) <= n * group / 64 + 1 of them,
  // and there are at most min(num_seqs, num_tokens / 2) such sequences with n <= max_query_len.
  const int64_t rows = (int64_t)p.num_tokens * p.group;
  const int64_t by_tokens = (rows + PREFILL_ROWS - 1) / PREFILL_ROWS + min((int64_t)p.num_seqs, (int64_t)p.num_tokens / 2);
  const int64_t by_seqs =
      (int64_t)p.num_seqs * (((int64_t)p.max_query_len * p.group + PREFILL_ROWS - 1) / PREFILL_ROWS);
  const int64_t blocks = min(by_tokens, by_seqs);
  if (blocks > 2147483647) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: %lld prefill tiles are more than one grid holds", fn,
                   (long long)blocks);
  }
  if (blocks == 0) return DL_OK;
  const dim3 grid((unsigned)blocks, (unsigned)p.num_kv_heads);
  attention_prefill_wmma_kernel<DT, BN><<<grid, PREFILL_THREADS, smem, ctx->stream>>>(p);
  DL_CUDA_CHECK(cudaGetLastError());
  *launched = true;
  return DL_OK;
}

template <int DT>
int32_t launch_prefill(const char* fn, dl_context* ctx, const AttentionParams& p) {
  if constexpr (DT != DL_DTYPE_F32) {
    bool launched = false;
    if ((p.head_dim + 15) / 16 * 16 <= 128) {
      DL_TRY((launch_prefill_bn<DT, 64>(fn, ctx, p, &launched)));
    } else {
      DL_TRY((launch_prefill_bn<DT, 32>(fn, ctx, p, &launched)));
    }
    if (launched) return DL_OK;
  }
  return launch_flash<DT>(fn, ctx, p);
}

template <int DT>
int32_t launch_attention(const char* fn, dl_context* ctx, const AttentionParams& p) {
  // Two launches at most: one for the decode sequences, one for the others (skipped when the host
  // says no sequence has more than one new token). Each kernel finds its own sequences on the
  // device and leaves the other's rows alone.
  DL_TRY(launch_decode<DT>(fn, ctx, p));
  if (p.max_query_len > 1) DL_TRY(launch_prefill<DT>(fn, ctx, p));
  return DL_OK;
}

}  // namespace

// The largest decode workspace of any batch of up to num_tokens sequences.
size_t dl_attention_workspace_bytes(int num_sms, int max_smem, int64_t num_tokens, int64_t num_heads,
                                    int64_t num_kv_heads, int64_t head_dim, int64_t max_len) {
  const int64_t group = num_heads / num_kv_heads;
  const int64_t gh = decode_heads_per_block(max_smem, group, head_dim);
  const int64_t y_blocks = num_kv_heads * ((group + gh - 1) / gh);
  size_t most = 0;
  const int64_t last = min(num_tokens, (int64_t)DECODE_BLOCKS_PER_SM * max(num_sms, 1));
  for (int64_t seqs = 1; seqs <= last; seqs++) {
    most = max(most, decode_workspace_bytes(num_sms, seqs, num_heads, y_blocks, head_dim, max_len));
  }
  return most;
}

extern "C" int32_t dl_paged_attention(dl_context* ctx, float* out, const float* q,
                                      const void* k_cache, const void* v_cache,
                                      int32_t cache_dtype, const int32_t* block_tables,
                                      const int32_t* seq_lens, const int32_t* query_start,
                                      int32_t num_seqs, int32_t num_tokens, int32_t max_query_len,
                                      int32_t num_heads,
                                      int32_t num_kv_heads, int32_t head_dim, int32_t q_row_stride,
                                      int32_t block_size, int32_t max_blocks_per_seq,
                                      int32_t num_blocks, float scale) {
  const char* fn = "dl_paged_attention";
  // The metadata is device memory, which the host cannot read: no metadata checks here.
  DL_TRY(dl_validate_paged_attention(fn, ctx, out, q, k_cache, v_cache, cache_dtype, block_tables,
                                     seq_lens, query_start, num_seqs, num_tokens, max_query_len,
                                     num_heads,
                                     num_kv_heads, head_dim, q_row_stride, block_size,
                                     max_blocks_per_seq, num_blocks, scale, dl_no_metadata_check));
  if (num_tokens == 0) return DL_OK;
  if (head_dim > MAX_HEAD_DIM) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: head_dim %d is larger than the CUDA build's %d", fn,
                   head_dim, MAX_HEAD_DIM);
  }
  if (num_kv_heads > 65535) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: num_kv_heads %d is larger than 65535", fn,
                   num_kv_heads);
  }
  AttentionParams p;
  p.q = q;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.block_tables = block_tables;
  p.seq_lens = seq_lens;
  p.query_start = query_start;
  p.out = out;
  p.num_seqs = num_seqs;
  p.num_tokens = num_tokens;
  p.max_query_len = max_query_len;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  p.q_row_stride = q_row_stride;
  p.block_size = block_size;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.num_blocks = num_blocks;
  const int64_t max_len = (int64_t)max_blocks_per_seq * block_size;
  p.max_len = (int32_t)(max_len > INT32_MAX ? INT32_MAX : max_len);
  p.group = num_heads / num_kv_heads;
  p.scale = scale;
  p.bad = ctx->bad_metadata;
  p.vec = dl_dtype_bytes(cache_dtype, head_dim) % 16 == 0 &&
          dl_is_aligned(k_cache, 16) && dl_is_aligned(v_cache, 16);
  if (cache_dtype == DL_DTYPE_F32) return launch_attention<DL_DTYPE_F32>(fn, ctx, p);
  if (cache_dtype == DL_DTYPE_F16) return launch_attention<DL_DTYPE_F16>(fn, ctx, p);
  return launch_attention<DL_DTYPE_BF16>(fn, ctx, p);
}
