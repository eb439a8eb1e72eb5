// Causal paged attention over the KV cache: exact, tiled per cache block with an online softmax.
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "half.h"

// --- Kernels

// dst[n] = src[n] widened to f32 (f16 or bf16 cache blocks).
DL_TARGET_CLONES
static void widen(float* dst, const uint16_t* src, int64_t n, int32_t dtype) {
  if (dtype == DL_DTYPE_F16) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = dl_f16_to_f32(src[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = dl_bf16_to_f32(src[i]);
  }
}

// One cache tile for the `group` query heads that share a KV head (flash-attention update):
// scores s = scale * q·k, then with the new running max m' = max(m, max s):
// l = l * exp(m - m') + sum exp(s - m'), acc = acc * exp(m - m') + sum exp(s - m') v.
DL_TARGET_CLONES
static void attend_tile(const float* q,  // [group, head_dim]
                        const float* k,  // [num_keys, head_dim]
                        const float* v,  // [num_keys, head_dim]
                        int32_t num_keys, int32_t group, int32_t head_dim, float scale,
                        float* scores,   // [num_keys] scratch
                        float* m,        // [group] running max
                        float* l,        // [group] running sum of exp
                        float* acc) {    // [group, head_dim] unnormalized output
  for (int32_t j = 0; j < group; j++) {
    const float* qj = q + (int64_t)j * head_dim;
    float tile_max = -std::numeric_limits<float>::infinity();
    for (int32_t r = 0; r < num_keys; r++) {
      const float* kr = k + (int64_t)r * head_dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int32_t d = 0; d < head_dim; d++) dot += qj[d] * kr[d];
      scores[r] = dot * scale;
      tile_max = std::fmax(tile_max, scores[r]);
    }
    const float m_new = std::fmax(m[j], tile_max);
    const float correction = std::exp(m[j] - m_new);  // exp(-inf) = 0 on the first tile
    float* aj = acc + (int64_t)j * head_dim;
#pragma omp simd
    for (int32_t d = 0; d < head_dim; d++) aj[d] *= correction;
    float sum = 0.0f;
    for (int32_t r = 0; r < num_keys; r++) {
      const float p = std::exp(scores[r] - m_new);
      sum += p;
      const float* vr = v + (int64_t)r * head_dim;
#pragma omp simd
      for (int32_t d = 0; d < head_dim; d++) aj[d] += p * vr[d];
    }
    l[j] = l[j] * correction + sum;
    m[j] = m_new;
  }
}

// --- Launcher

namespace {

struct Shape {
  int32_t num_heads, num_kv_heads, head_dim, q_row_stride, block_size, max_blocks_per_seq;
};

int32_t validate(const char* fn, const int32_t* block_tables, const int32_t* seq_lens, const int32_t* query_start,
                 int32_t num_seqs, int32_t num_tokens, int32_t block_size, int32_t max_blocks_per_seq,
                 int32_t num_blocks, std::vector<int32_t>& token_seq) {
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
    if (seq_len < num_new) {
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

extern "C" DL_API int32_t dl_paged_attention(dl_context* ctx, float* out, const float* q, const void* k_cache,
                                             const void* v_cache, int32_t cache_dtype, const int32_t* block_tables,
                                             const int32_t* seq_lens, const int32_t* query_start, int32_t num_seqs,
                                             int32_t num_tokens, int32_t num_heads, int32_t num_kv_heads,
                                             int32_t head_dim, int32_t q_row_stride, int32_t block_size,
                                             int32_t max_blocks_per_seq, int32_t num_blocks, float scale) {
  return dl_guard("dl_paged_attention", [&]() -> int32_t {
    const char* fn = "dl_paged_attention";
    DL_TRY(dl_check_ctx(fn, ctx));
    DL_TRY(dl_check_dtype(fn, "cache_dtype", cache_dtype));
    DL_TRY(dl_check_non_negative(fn, "num_seqs", num_seqs));
    DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
    DL_TRY(dl_check_positive(fn, "num_heads", num_heads));
    DL_TRY(dl_check_positive(fn, "num_kv_heads", num_kv_heads));
    DL_TRY(dl_check_positive(fn, "head_dim", head_dim));
    DL_TRY(dl_check_positive(fn, "block_size", block_size));
    DL_TRY(dl_check_positive(fn, "max_blocks_per_seq", max_blocks_per_seq));
    DL_TRY(dl_check_positive(fn, "num_blocks", num_blocks));
    if (num_heads % num_kv_heads != 0) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected num_heads (%d) to be a multiple of num_kv_heads, found %d",
                     fn, num_heads, num_kv_heads);
    }
    if ((int64_t)q_row_stride < (int64_t)num_heads * head_dim) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected q_row_stride >= num_heads * head_dim (%lld), found %d",
                     fn, (long long)num_heads * head_dim, q_row_stride);
    }
    if (!std::isfinite(scale)) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a finite scale, found %g", fn, (double)scale);
    }
    if (num_seqs == 0 && num_tokens == 0) return DL_OK;
    DL_TRY(dl_check_ptr(fn, "query_start", query_start));
    DL_TRY(dl_check_ptr(fn, "seq_lens", seq_lens));
    DL_TRY(dl_check_ptr(fn, "block_tables", block_tables));
    if (num_seqs == 0) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected num_seqs > 0 for %d query tokens, found 0", fn,
                     num_tokens);
    }
    std::vector<int32_t> token_seq((size_t)num_tokens);
    DL_TRY(validate(fn, block_tables, seq_lens, query_start, num_seqs, num_tokens, block_size, max_blocks_per_seq,
                    num_blocks, token_seq));
    if (num_tokens == 0) return DL_OK;
    DL_TRY(dl_check_ptr(fn, "out", out));
    DL_TRY(dl_check_ptr(fn, "q", q));
    DL_TRY(dl_check_ptr(fn, "k_cache", k_cache));
    DL_TRY(dl_check_ptr(fn, "v_cache", v_cache));

    const int32_t group = num_heads / num_kv_heads;
    const int64_t tile_elems = (int64_t)block_size * head_dim;
    const bool is_f32 = cache_dtype == DL_DTYPE_F32;
    // Per thread: scores [block_size], m and l [group], acc [group, head_dim], and for 16-bit caches
    // the widened K and V tiles [block_size, head_dim] each.
    const int64_t per_thread = block_size + 2 * group + (int64_t)group * head_dim + (is_f32 ? 0 : 2 * tile_elems);
    const int64_t work = (int64_t)num_tokens * num_heads * head_dim * 64;
    const int threads = dl_threads_for(ctx, work);
    std::vector<float> scratch((size_t)(threads * per_thread));
    const int64_t num_items = (int64_t)num_tokens * num_kv_heads;
    const size_t elem = dl_dtype_size(cache_dtype);
    const char* k_bytes = static_cast<const char*>(k_cache);
    const char* v_bytes = static_cast<const char*>(v_cache);

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t item = 0; item < num_items; item++) {
      const int32_t t = (int32_t)(item / num_kv_heads), kv_head = (int32_t)(item % num_kv_heads);
      const int32_t s = token_seq[t];
      const int32_t num_new = query_start[s + 1] - query_start[s];
      const int32_t position = seq_lens[s] - num_new + (t - query_start[s]);
      const int32_t visible = position + 1;  // causal: cache positions [0, position]
      const int32_t* table = block_tables + (int64_t)s * max_blocks_per_seq;

      float* scores = scratch.data() + dl_thread_id() * per_thread;  // [block_size]
      float* m = scores + block_size;                                // [group]
      float* l = m + group;                                          // [group]
      float* acc = l + group;                                        // [group, head_dim]
      float* k_tile = acc + (int64_t)group * head_dim;               // [block_size, head_dim]
      float* v_tile = k_tile + tile_elems;                           // [block_size, head_dim]
      for (int32_t j = 0; j < group; j++) {
        m[j] = -std::numeric_limits<float>::infinity();
        l[j] = 0.0f;
      }
      for (int64_t i = 0; i < (int64_t)group * head_dim; i++) acc[i] = 0.0f;

      const float* q_group = q + (int64_t)t * q_row_stride + (int64_t)kv_head * group * head_dim;  // [group, hd]
      for (int32_t b = 0; b * (int64_t)block_size < visible; b++) {
        const int32_t num_keys = std::min<int32_t>(block_size, visible - b * block_size);
        // [num_blocks, num_kv_heads, block_size, head_dim] -> [num_keys, head_dim] at (table[b], kv_head)
        const int64_t base = ((int64_t)table[b] * num_kv_heads + kv_head) * tile_elems;
        const float* k_rows;
        const float* v_rows;
        if (is_f32) {
          k_rows = reinterpret_cast<const float*>(k_bytes) + base;
          v_rows = reinterpret_cast<const float*>(v_bytes) + base;
        } else {
          const int64_t n = (int64_t)num_keys * head_dim;
          widen(k_tile, reinterpret_cast<const uint16_t*>(k_bytes + base * elem), n, cache_dtype);
          widen(v_tile, reinterpret_cast<const uint16_t*>(v_bytes + base * elem), n, cache_dtype);
          k_rows = k_tile;
          v_rows = v_tile;
        }
        attend_tile(q_group, k_rows, v_rows, num_keys, group, head_dim, scale, scores, m, l, acc);
      }
      float* out_group = out + (int64_t)t * num_heads * head_dim + (int64_t)kv_head * group * head_dim;
      for (int32_t j = 0; j < group; j++) {
        const float inv_l = 1.0f / l[j];
        for (int32_t d = 0; d < head_dim; d++) out_group[j * head_dim + d] = acc[j * head_dim + d] * inv_l;
      }
    }
    return DL_OK;
  });
}
