// Causal paged attention over the KV cache: exact, tiled per cache block with an online softmax.
#include <cmath>
#include <limits>

#include "common.h"
#include "dl_half.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12.2's AVX-512 intrinsics trip -Wuninitialized where inlined (GCC bug 105593, fixed in 12.3).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define DL_X86 1
#endif

// --- Kernels: attention_tile.h (with vexp.h) compiled once per instruction set

// Portable path: 16-byte GCC vector extensions (SSE2 or NEON), multiply and add unfused unless the
// target fuses them itself.
namespace generic {
constexpr int LANES = 4;
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
inline float vsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; i++) s += v[i];
  return s;
}
#include "vexp.h"
#include "attention_tile.h"
}  // namespace generic

#ifdef DL_X86

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
constexpr int LANES = 8;
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
inline vf vfma(vf a, vf b, vf c) { return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
inline vf vload(const float* p) { return (vf)_mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, (__m256)v); }
inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#include "vexp.h"
#include "attention_tile.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
namespace avx512 {
constexpr int LANES = 16;
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
inline vf vfma(vf a, vf b, vf c) { return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
inline vf vload(const float* p) { return (vf)_mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, (__m512)v); }
inline float vsum(vf v) { return _mm512_reduce_add_ps((__m512)v); }
#include "vexp.h"
#include "attention_tile.h"
}  // namespace avx512
#pragma GCC pop_options

#endif  // DL_X86

// The widest vector any path uses: score scratch is padded to a multiple of it.
constexpr int32_t MAX_LANES = 16;

// --- Launcher

namespace {

void widen(DlIsa isa, float* dst, const uint16_t* src, int64_t n, int32_t dtype) {
  switch (isa) {
#ifdef DL_X86
    case DlIsa::avx512: avx512::widen(dst, src, n, dtype); break;
    case DlIsa::avx2: avx2::widen(dst, src, n, dtype); break;
#endif
    default: generic::widen(dst, src, n, dtype); break;
  }
}

template <class... Args>
void attend_tile(DlIsa isa, Args... args) {
  switch (isa) {
#ifdef DL_X86
    case DlIsa::avx512: avx512::attend_tile(args...); break;
    case DlIsa::avx2: avx2::attend_tile(args...); break;
#endif
    default: generic::attend_tile(args...); break;
  }
}

// Per thread: scores [block_size rounded up to MAX_LANES], m and l [run_heads], acc [run_heads,
// head_dim], and for 16-bit caches the widened K and V tiles [block_size, head_dim] each.
int64_t scores_len(int64_t block_size) { return (block_size + MAX_LANES - 1) / MAX_LANES * MAX_LANES; }

int64_t per_thread_floats(int64_t run_heads, int64_t head_dim, int64_t block_size, bool is_f32) {
  return scores_len(block_size) + 2 * run_heads + run_heads * head_dim + (is_f32 ? 0 : 2 * block_size * head_dim);
}

struct Shape {
  int32_t num_heads, num_kv_heads, head_dim, q_row_stride, block_size, max_blocks_per_seq;
};

int32_t validate(const char* fn, const int32_t* block_tables, const int32_t* seq_lens, const int32_t* query_start,
                 int32_t num_seqs, int32_t num_tokens, int32_t max_query_len, int32_t block_size,
                 int32_t max_blocks_per_seq, int32_t num_blocks, int32_t* token_seq) {
  if (query_start[0] != 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected query_start[0] == 0, found %d", fn, query_start[0]);
  }
  if (query_start[num_seqs] != num_tokens) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected query_start[num_seqs] == num_tokens (%d), found %d", fn,
                   num_tokens, query_start[num_seqs]);
  }
  const int64_t max_len = (int64_t)max_blocks_per_seq * block_size;
  for (int32_t s = 0; s < num_seqs; s++) {
    const int32_t begin = query_start[s], end = query_start[s + 1];
    if (end < begin || end > num_tokens) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: expected query_start non-decreasing within [0, %d], found query_start[%d] = %d after %d",
                     fn, num_tokens, s + 1, end, begin);
    }
    const int32_t num_new = end - begin, seq_len = seq_lens[s];
    if (num_new > max_query_len) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected at most max_query_len (%d) new tokens, found %d in sequence %d",
                     fn, max_query_len, num_new, s);
    }
    // seq_len 0 is a padding sequence (a graph's spare row): zero output rows, no cache read.
    if (seq_len < num_new && seq_len != 0) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: expected seq_lens[%d] >= its %d new query tokens, found %d", fn, s, num_new, seq_len);
    }
    if (seq_len > max_len) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: expected seq_lens[%d] <= max_blocks_per_seq * block_size (%lld), found %d", fn, s,
                     (long long)max_len, seq_len);
    }
    const int32_t used_blocks = (int32_t)((seq_len + (int64_t)block_size - 1) / block_size);
    for (int32_t b = 0; b < used_blocks; b++) {
      const int32_t id = block_tables[(int64_t)s * max_blocks_per_seq + b];
      if (id < 0 || id >= num_blocks) {
        return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected block_tables[%d][%d] in [0, %d), found %d", fn, s, b,
                       num_blocks, id);
      }
    }
    for (int32_t t = begin; t < end; t++) token_seq[t] = s;
  }
  return DL_OK;
}

}  // namespace

size_t dl_attention_workspace_bytes(int threads, int64_t num_tokens, int64_t run_heads, int64_t head_dim,
                                    int64_t block_size, bool is_f32) {
  return dl_align64((size_t)num_tokens * sizeof(int32_t)) +
         (size_t)threads * (size_t)per_thread_floats(run_heads, head_dim, block_size, is_f32) * sizeof(float);
}

extern "C" DL_API int32_t dl_paged_attention(dl_context* ctx, float* out, const float* q, const void* k_cache,
                                             const void* v_cache, int32_t cache_dtype, const int32_t* block_tables,
                                             const int32_t* seq_lens, const int32_t* query_start, int32_t num_seqs,
                                             int32_t num_tokens, int32_t max_query_len, int32_t num_heads,
                                             int32_t num_kv_heads,
                                             int32_t head_dim, int32_t q_row_stride, int32_t block_size,
                                             int32_t max_blocks_per_seq, int32_t num_blocks, float scale) {
  return dl_guard("dl_paged_attention", [&]() -> int32_t {
    const char* fn = "dl_paged_attention";
    // The work split, planned in check_metadata once the shape has been validated.
    int32_t group = 0, heads_per_run = 0, runs = 0;
    int64_t run_heads = 0, per_thread = 0;
    const int64_t tile_elems = (int64_t)block_size * head_dim;
    const bool is_f32 = cache_dtype == DL_DTYPE_F32;
    const int64_t work = (int64_t)num_tokens * num_heads * head_dim * 64;
    const int threads = dl_threads_for(ctx, work);
    auto plan = [&]() {
      group = num_heads / num_kv_heads;
      // A work item is one token and a run of its KV heads, walked block by block with the heads
      // inner: a block's K (then V) tiles of neighbouring KV heads are adjacent in the cache, so
      // this reads them as one stream instead of 4 KB pieces far apart (24 vs 9 GB/s measured on
      // Zen 4, and decode attention is bound by reading the cache). Tokens are split into several
      // runs only when there are fewer tokens than threads. Each head's result does not depend on
      // the split.
      const int32_t runs_per_token =
          (int32_t)std::min<int64_t>(num_kv_heads, (threads + num_tokens - 1) / num_tokens);
      heads_per_run = (num_kv_heads + runs_per_token - 1) / runs_per_token;
      runs = (num_kv_heads + heads_per_run - 1) / heads_per_run;
      run_heads = (int64_t)heads_per_run * group;  // query heads of a run
      per_thread = per_thread_floats(run_heads, head_dim, block_size, is_f32);
    };

    // The metadata lives in host memory here, so it is checked too (and token_seq filled in), in
    // the context workspace: token_seq [num_tokens] first, then the threads' scratch.
    int32_t* token_seq = nullptr;
    float* scratch = nullptr;
    auto check_metadata = [&]() -> int32_t {
      if (num_tokens > 0) {
        plan();
        void* workspace = nullptr;
        DL_TRY(dl_workspace(fn, ctx,
                            dl_attention_workspace_bytes(threads, num_tokens, run_heads, head_dim, block_size, is_f32),
                            &workspace));
        token_seq = static_cast<int32_t*>(workspace);
        scratch = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                           dl_align64((size_t)num_tokens * sizeof(int32_t)));
      }
      return validate(fn, block_tables, seq_lens, query_start, num_seqs, num_tokens, max_query_len, block_size,
                      max_blocks_per_seq, num_blocks, token_seq);
    };
    DL_TRY(dl_validate_paged_attention(fn, ctx, out, q, k_cache, v_cache, cache_dtype, block_tables, seq_lens,
                                       query_start, num_seqs, num_tokens, max_query_len, num_heads, num_kv_heads,
                                       head_dim,
                                       q_row_stride, block_size, max_blocks_per_seq, num_blocks, scale,
                                       check_metadata));
    if (num_tokens == 0) return DL_OK;

    const int64_t num_items = (int64_t)num_tokens * runs;
    const int64_t elem = (int64_t)dl_dtype_bytes(cache_dtype, 1);
    const char* k_bytes = static_cast<const char*>(k_cache);
    const char* v_bytes = static_cast<const char*>(v_cache);
    const DlIsa isa = dl_cpu_isa();

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t item = 0; item < num_items; item++) {
      const int32_t t = (int32_t)(item / runs);
      const int32_t head_begin = (int32_t)(item % runs) * heads_per_run;
      const int32_t head_end = std::min(num_kv_heads, head_begin + heads_per_run);
      const int32_t s = token_seq[t];
      const int32_t num_new = query_start[s + 1] - query_start[s];
      const int32_t position = seq_lens[s] - num_new + (t - query_start[s]);
      // causal: cache positions [0, position]; none for a padding sequence (seq_len 0)
      const int32_t visible = seq_lens[s] == 0 ? 0 : position + 1;
      const int32_t* table = block_tables + (int64_t)s * max_blocks_per_seq;

      float* scores = scratch + dl_thread_id() * per_thread;         // [scores_len]
      float* m = scores + scores_len(block_size);                              // [run_heads]
      float* l = m + run_heads;                                      // [run_heads]
      float* acc = l + run_heads;                                    // [run_heads, head_dim]
      float* k_tile = acc + run_heads * head_dim;                    // [block_size, head_dim]
      float* v_tile = k_tile + tile_elems;                           // [block_size, head_dim]
      const int64_t num_run_heads = (int64_t)(head_end - head_begin) * group;
      for (int64_t j = 0; j < num_run_heads; j++) {
        m[j] = -std::numeric_limits<float>::infinity();
        l[j] = 0.0f;
      }
      for (int64_t i = 0; i < num_run_heads * head_dim; i++) acc[i] = 0.0f;

      // [num_run_heads, head_dim]: query heads head_begin * group onwards
      const float* q_run = q + (int64_t)t * q_row_stride + (int64_t)head_begin * group * head_dim;
      for (int32_t b = 0; b * (int64_t)block_size < visible; b++) {
        const int32_t num_keys = std::min<int32_t>(block_size, visible - b * block_size);
        // The next block's tiles of this run, requested early: the block table scatters blocks, so
        // the hardware prefetcher cannot know where the stream continues (about 8% at 2k context).
        if ((int64_t)(b + 1) * block_size < visible) {
          const int64_t next = ((int64_t)table[b + 1] * num_kv_heads + head_begin) * tile_elems * elem;
          const int64_t bytes = (int64_t)(head_end - head_begin) * tile_elems * elem;
          for (int64_t o = 0; o < bytes; o += 64) {
            __builtin_prefetch(k_bytes + next + o);
            __builtin_prefetch(v_bytes + next + o);
          }
        }
        for (int32_t h = head_begin; h < head_end; h++) {
          // [num_blocks, num_kv_heads, block_size, head_dim] -> [num_keys, head_dim] at (table[b], h)
          const int64_t base = ((int64_t)table[b] * num_kv_heads + h) * tile_elems;
          const float* k_rows;
          const float* v_rows;
          if (is_f32) {
            k_rows = reinterpret_cast<const float*>(k_bytes) + base;
            v_rows = reinterpret_cast<const float*>(v_bytes) + base;
          } else {
            const int64_t n = (int64_t)num_keys * head_dim;
            widen(isa, k_tile, reinterpret_cast<const uint16_t*>(k_bytes + base * elem), n, cache_dtype);
            widen(isa, v_tile, reinterpret_cast<const uint16_t*>(v_bytes + base * elem), n, cache_dtype);
            k_rows = k_tile;
            v_rows = v_tile;
          }
          const int64_t j0 = (int64_t)(h - head_begin) * group;  // first query head of h in the run
          attend_tile(isa, q_run + j0 * head_dim, k_rows, v_rows, num_keys, group, head_dim, scale, scores, m + j0,
                      l + j0, acc + j0 * head_dim);
        }
      }
      float* out_run = out + (int64_t)t * num_heads * head_dim + (int64_t)head_begin * group * head_dim;
      for (int64_t j = 0; j < num_run_heads; j++) {
        const float inv_l = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;  // l is 0 only for padding
        for (int32_t d = 0; d < head_dim; d++) out_run[j * head_dim + d] = acc[j * head_dim + d] * inv_l;
      }
    }
    return DL_OK;
  });
}
