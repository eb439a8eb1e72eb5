// Causal paged attention over the KV cache (prefill, chunked prefill and decode), exact in f32:
// scores, softmax and the weighted sum of V all in f32 from the widened cache.
//
// Two paths, both GQA-aware (the query heads that share a KV head are handled by one block, so each
// K/V element is read once for all of them):
// - decode (every sequence has one new token: num_tokens == num_seqs): a block per (token, KV head,
//   context partition of part_len positions); the partition's scores live in shared memory, so the
//   softmax is exact per partition, and a second kernel merges partitions (log-sum-exp) when the
//   context is longer than one partition.
// - prefill (anything else): flash attention. A block owns 64 query rows — (token, head-in-group)
//   pairs — of one KV head, walks the cache in chunks of 32 positions with an online softmax, and
//   skips chunks past the causal limit. Rows of several sequences may share a block; the block
//   then walks each sequence's cache in turn, the other rows masked.
//
// Metadata (block tables, seq lens, query_start) is device memory and is not validated on the host:
// kernels guard every index instead. A token outside every sequence, or whose position falls
// outside [0, max_blocks_per_seq * block_size), gets a zero output; a block id outside
// [0, num_blocks) reads as zeros. Never an out-of-bounds access; each case is reported
// (dl_bad_report) so the next synchronize fails with DL_ERR_INVALID_ARGUMENT.
#include <cmath>

#include "common.cuh"
#include "half.cuh"
#include "reduce.cuh"

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
  int32_t num_seqs, num_tokens, num_heads, num_kv_heads, head_dim, q_row_stride;
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

// Stages cache rows [first, first + count) of sequence seq, KV head kv_head, widened to f32, into
// dst[count][ld]. Rows whose block id is out of range are zeros.
template <int DT>
__device__ __forceinline__ void load_cache_rows(float* dst, int ld, const void* cache_raw,
                                                const AttentionParams& p, int32_t seq,
                                                int32_t kv_head, int32_t first, int32_t count) {
  using T = typename Dtype<DT>::T;
  const T* cache = static_cast<const T*>(cache_raw);
  const int32_t* table = p.block_tables + (int64_t)seq * p.max_blocks_per_seq;
  const int hd = p.head_dim;
  if (p.vec) {
    constexpr int E = 16 / sizeof(T);
    const int per_row = hd / E;
    for (int idx = threadIdx.x; idx < count * per_row; idx += blockDim.x) {
      const int r = idx / per_row, c = (idx % per_row) * E;
      const int32_t pos = first + r;
      const int32_t block = table[pos / p.block_size];
      float v[E];
      if (block < 0 || block >= p.num_blocks) {
        dl_bad_report(p.bad, DL_BAD_BLOCK_ID, (int64_t)seq * p.max_blocks_per_seq + pos / p.block_size, block);
      }
      if (block >= 0 && block < p.num_blocks) {
        const int64_t base =
            (((int64_t)block * p.num_kv_heads + kv_head) * p.block_size + pos % p.block_size) * hd;
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
      const int32_t pos = first + r;
      const int32_t block = table[pos / p.block_size];
      float v = 0.0f;
      if (block < 0 || block >= p.num_blocks) {
        dl_bad_report(p.bad, DL_BAD_BLOCK_ID, (int64_t)seq * p.max_blocks_per_seq + pos / p.block_size, block);
      }
      if (block >= 0 && block < p.num_blocks) {
        const int64_t base =
            (((int64_t)block * p.num_kv_heads + kv_head) * p.block_size + pos % p.block_size) * hd;
        v = Dtype<DT>::load(cache[base + c]);
      }
      dst[r * ld + c] = v;
    }
  }
}

// Decode: block (t, kv_head, part) attends the `group` query heads of token t that read kv_head
// to cache positions [part * part_len, min((part + 1) * part_len, pos + 1)). With one partition
// it writes the normalized output; otherwise its max, sum of exp and unnormalized sum of
// exp * V go to part_ml [T, H, P, 2] and part_acc [T, H, P, head_dim] for the merge kernel.
//
// Shared memory (floats): q [group, hd] | scores [group, part_len] | kv [CHUNK, hd + 1] |
// acc [group, hd] | m, l [group] each.
template <int DT>
__global__ __launch_bounds__(DECODE_THREADS) void attention_decode_kernel(
    AttentionParams p, int32_t part_len, int32_t num_parts, float* __restrict__ part_ml,
    float* __restrict__ part_acc) {
  extern __shared__ float smem[];
  const int32_t t = blockIdx.x, kv_head = blockIdx.y, part = blockIdx.z;
  const int hd = p.head_dim, group = p.group, ld = hd + 1;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  constexpr int num_warps = DECODE_THREADS / 32;
  float* sq = smem;
  float* ss = sq + group * hd;
  float* skv = ss + group * part_len;
  float* sacc = skv + DECODE_CHUNK * ld;
  float* sm = sacc + group * hd;
  float* sl = sm + group;

  const QueryInfo info = query_info(p, t);
  const int32_t k0 = part * part_len;
  const int32_t k1 = info.valid ? min(k0 + part_len, info.pos + 1) : 0;
  const int32_t first_head = kv_head * group;
  float* out_row = p.out + (int64_t)t * p.num_heads * hd + (int64_t)first_head * hd;
  if (k1 <= k0) {
    if (num_parts == 1) {
      for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) out_row[idx] = 0.0f;
    } else {
      for (int g = tid; g < group; g += DECODE_THREADS) {
        float* ml = part_ml + (((int64_t)t * p.num_heads + first_head + g) * num_parts + part) * 2;
        ml[0] = -INFINITY;
        ml[1] = 0.0f;
      }
    }
    return;
  }
  const int32_t num_keys = k1 - k0;
  const float* q_row = p.q + (int64_t)t * p.q_row_stride + (int64_t)first_head * hd;
  for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
    sq[idx] = q_row[idx];
    sacc[idx] = 0.0f;
  }

  // Scores: item (g, j) is one dot product of q head g with cached key j of the chunk.
  for (int32_t c0 = k0; c0 < k1; c0 += DECODE_CHUNK) {
    const int cnt = min(DECODE_CHUNK, k1 - c0);
    __syncthreads();  // the previous chunk's keys (and q, on the first pass) are settled
    load_cache_rows<DT>(skv, ld, p.k_cache, p, info.seq, kv_head, c0, cnt);
    __syncthreads();
    for (int idx = tid; idx < group * cnt; idx += DECODE_THREADS) {
      const int g = idx / cnt, j = idx % cnt;
      const float* qg = sq + g * hd;
      const float* kj = skv + j * ld;
      float dot = 0.0f;
      for (int d = 0; d < hd; d++) dot = fmaf(qg[d], kj[d], dot);
      ss[g * part_len + (c0 - k0) + j] = dot * p.scale;
    }
  }
  __syncthreads();

  // Softmax over the partition, one warp per query head.
  for (int g = warp; g < group; g += num_warps) {
    float* sg = ss + g * part_len;
    float mx = -INFINITY;
    for (int j = lane; j < num_keys; j += 32) mx = fmaxf(mx, sg[j]);
    mx = dl_warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < num_keys; j += 32) {
      const float e = expf(sg[j] - mx);
      sg[j] = e;
      sum += e;
    }
    sum = dl_warp_sum(sum);
    if (lane == 0) {
      sm[g] = mx;
      sl[g] = sum;
    }
  }

  // Weighted sum of V: item (g, d) accumulates over the chunk's positions.
  for (int32_t c0 = k0; c0 < k1; c0 += DECODE_CHUNK) {
    const int cnt = min(DECODE_CHUNK, k1 - c0);
    __syncthreads();
    load_cache_rows<DT>(skv, ld, p.v_cache, p, info.seq, kv_head, c0, cnt);
    __syncthreads();
    for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
      const int g = idx / hd, d = idx % hd;
      const float* pg = ss + g * part_len + (c0 - k0);
      float r = 0.0f;
      for (int j = 0; j < cnt; j++) r = fmaf(pg[j], skv[j * ld + d], r);
      sacc[idx] += r;
    }
  }
  __syncthreads();

  if (num_parts == 1) {
    for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
      out_row[idx] = sacc[idx] / sl[idx / hd];
    }
  } else {
    for (int idx = tid; idx < group * hd; idx += DECODE_THREADS) {
      const int g = idx / hd, d = idx % hd;
      const int64_t slot = ((int64_t)t * p.num_heads + first_head + g) * num_parts + part;
      part_acc[slot * hd + d] = sacc[idx];
      if (d == 0) {
        part_ml[slot * 2] = sm[g];
        part_ml[slot * 2 + 1] = sl[g];
      }
    }
  }
}

// Merges decode partitions: block (t, head) rescales each partition's sum by exp(m_p - max m) and
// divides by the total sum of exp. Partitions past the context (l = 0) are skipped.
__global__ void attention_merge_kernel(float* __restrict__ out,
                                       const float* __restrict__ part_ml,
                                       const float* __restrict__ part_acc, int32_t num_heads,
                                       int32_t head_dim, int32_t num_parts) {
  const int64_t slot0 = ((int64_t)blockIdx.x * num_heads + blockIdx.y) * num_parts;
  const float* ml = part_ml + slot0 * 2;
  float m = -INFINITY;
  for (int32_t i = 0; i < num_parts; i++) {
    if (ml[2 * i + 1] > 0.0f) m = fmaxf(m, ml[2 * i]);
  }
  float l = 0.0f;
  for (int32_t i = 0; i < num_parts; i++) {
    if (ml[2 * i + 1] > 0.0f) l += ml[2 * i + 1] * expf(ml[2 * i] - m);
  }
  float* out_row = out + ((int64_t)blockIdx.x * num_heads + blockIdx.y) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int32_t i = 0; i < num_parts; i++) {
      if (ml[2 * i + 1] > 0.0f) acc += part_acc[(slot0 + i) * head_dim + d] * expf(ml[2 * i] - m);
    }
    out_row[d] = l > 0.0f ? acc / l : 0.0f;
  }
}

// Flash attention: block (x, kv_head) owns query rows [x * 64, x * 64 + 64) of the flattened
// (token, head-in-group) order for this KV head. HDB is head_dim rounded up to 64, 128 or 256:
// the size of each thread's register accumulator.
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
      if (info.valid) {
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
    if (last < begin || last < t_first) continue;
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
    if (r >= num_rows) continue;
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

// Cache positions per decode partition: a partition's scores fill at most 32 KiB of shared memory.
int32_t decode_part_len(int64_t group) {
  int32_t part_len = 256;
  if (group * part_len > 8192) part_len = max(32, (int32_t)(8192 / group) / 32 * 32);
  return part_len;
}

template <int DT>
int32_t launch_decode(const char* fn, dl_context* ctx, const AttentionParams& p) {
  const int group = p.group, hd = p.head_dim;
  const int32_t part_len = decode_part_len(group);
  const int32_t num_parts = (int32_t)(((int64_t)p.max_len + part_len - 1) / part_len);
  if (num_parts > 65535) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: a context of %d positions is too long", fn,
                   p.max_len);
  }
  const size_t smem = sizeof(float) * ((size_t)group * hd * 2 + (size_t)group * part_len +
                                       (size_t)DECODE_CHUNK * (hd + 1) + 2 * (size_t)group);
  auto kernel = attention_decode_kernel<DT>;
  DL_TRY(allow_smem(fn, ctx, kernel, smem));
  float* part_ml = nullptr;
  float* part_acc = nullptr;
  if (num_parts > 1) {
    const size_t slots = (size_t)p.num_tokens * p.num_heads * num_parts;
    void* workspace = nullptr;
    DL_TRY(dl_workspace(fn, ctx,
                        dl_attention_workspace_bytes(p.num_tokens, p.num_heads, p.num_kv_heads, hd,
                                                     p.max_len),
                        &workspace));
    part_ml = static_cast<float*>(workspace);
    part_acc = part_ml + slots * 2;
  }
  const dim3 grid((unsigned)p.num_tokens, (unsigned)p.num_kv_heads, (unsigned)num_parts);
  kernel<<<grid, DECODE_THREADS, smem, ctx->stream>>>(p, part_len, num_parts, part_ml, part_acc);
  DL_CUDA_CHECK(cudaGetLastError());
  if (num_parts > 1) {
    const dim3 merge_grid((unsigned)p.num_tokens, (unsigned)p.num_heads);
    const int threads = hd >= 128 ? 128 : (hd + 31) / 32 * 32;
    attention_merge_kernel<<<merge_grid, threads, 0, ctx->stream>>>(p.out, part_ml, part_acc,
                                                                    p.num_heads, hd, num_parts);
    DL_CUDA_CHECK(cudaGetLastError());
  }
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
  kernel<<<grid, FLASH_THREADS, smem, ctx->stream>>>(p);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

template <int DT>
int32_t launch_flash(const char* fn, dl_context* ctx, const AttentionParams& p) {
  if (p.head_dim <= 64) return launch_flash_hdb<DT, 64>(fn, ctx, p);
  if (p.head_dim <= 128) return launch_flash_hdb<DT, 128>(fn, ctx, p);
  return launch_flash_hdb<DT, 256>(fn, ctx, p);
}

template <int DT>
int32_t launch_attention(const char* fn, dl_context* ctx, const AttentionParams& p) {
  // num_tokens == num_seqs is a decode batch when every sequence has one new token; the decode
  // kernel is correct for any batch (it handles each token on its own), only slower for prefill.
  if (p.num_tokens == p.num_seqs) return launch_decode<DT>(fn, ctx, p);
  return launch_flash<DT>(fn, ctx, p);
}

}  // namespace

// Only split decode needs a workspace: per (token, head, partition) its max and sum of exp
// [2] and its unnormalized output [head_dim]. Prefill (flash) needs none.
size_t dl_attention_workspace_bytes(int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
                                    int64_t head_dim, int64_t max_len) {
  const int64_t part_len = decode_part_len(num_heads / num_kv_heads);
  const int64_t num_parts = (max_len + part_len - 1) / part_len;
  if (num_parts <= 1) return 0;
  return (size_t)num_tokens * num_heads * num_parts * (2 + head_dim) * sizeof(float);
}

extern "C" int32_t dl_paged_attention(dl_context* ctx, float* out, const float* q,
                                      const void* k_cache, const void* v_cache,
                                      int32_t cache_dtype, const int32_t* block_tables,
                                      const int32_t* seq_lens, const int32_t* query_start,
                                      int32_t num_seqs, int32_t num_tokens, int32_t num_heads,
                                      int32_t num_kv_heads, int32_t head_dim, int32_t q_row_stride,
                                      int32_t block_size, int32_t max_blocks_per_seq,
                                      int32_t num_blocks, float scale) {
  const char* fn = "dl_paged_attention";
  // The metadata is device memory, which the host cannot read: no metadata checks here.
  DL_TRY(dl_validate_paged_attention(fn, ctx, out, q, k_cache, v_cache, cache_dtype, block_tables,
                                     seq_lens, query_start, num_seqs, num_tokens, num_heads,
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
