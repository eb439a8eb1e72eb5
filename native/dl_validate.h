// Host-side argument validation of every ABI kernel, shared by the CPU and CUDA launchers.
//
// Each dl_validate_<kernel> runs the checks both builds make, in order, with the same messages. It
// returns DL_OK also when there is nothing to do (for example num_tokens == 0, where NULL buffers
// are allowed): the launcher returns early on that itself. Only host-readable arguments are checked
// here; checks that read metadata arrays (ids, slots, block tables) need host memory and stay in the
// CPU launchers, and a build's own limits (grid sizes, shared memory) stay in its launchers.
#pragma once

#include <cmath>
#include <cstdint>

#include "dl_check.h"

// A row of elements of a blocked format must hold whole blocks.
inline int32_t dl_check_whole_blocks(const char* fn, const char* name, int64_t v, int32_t dtype) {
  const int64_t block_len = DL_DTYPES[dtype].block_len;
  if (v % block_len != 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be a multiple of the %s block length %lld, found %lld",
                   fn, name, DL_DTYPES[dtype].name, (long long)block_len, (long long)v);
  }
  return DL_OK;
}

inline int32_t dl_validate_embedding(const char* fn, const dl_context* ctx, const float* out, const void* table,
                                     int32_t table_dtype, const int32_t* token_ids, int32_t num_tokens,
                                     int32_t vocab_size, int32_t dim) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "table_dtype", table_dtype, DL_EMBEDDING_DTYPES));
  DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
  DL_TRY(dl_check_positive(fn, "vocab_size", vocab_size));
  DL_TRY(dl_check_positive(fn, "dim", dim));
  DL_TRY(dl_check_whole_blocks(fn, "dim", dim, table_dtype));
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "table", table));
  DL_TRY(dl_check_ptr(fn, "token_ids", token_ids));
  return DL_OK;
}

inline int32_t dl_validate_rmsnorm(const char* fn, const dl_context* ctx, const float* out, const float* x,
                                   const float* weight, int32_t num_tokens, int32_t dim, float eps) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
  DL_TRY(dl_check_positive(fn, "dim", dim));
  if (!(eps >= 0.0f) || std::isinf(eps)) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a finite eps >= 0, found %g", fn, (double)eps);
  }
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "x", x));
  DL_TRY(dl_check_ptr(fn, "weight", weight));
  return DL_OK;
}

inline int32_t dl_validate_add_rmsnorm(const char* fn, const dl_context* ctx, const float* out,
                                       const float* residual, const float* x, const float* weight,
                                       int32_t num_tokens, int32_t dim, float eps) {
  DL_TRY(dl_validate_rmsnorm(fn, ctx, out, x, weight, num_tokens, dim, eps));
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "residual", residual));
  // The norm reads residual after the add: sharing floats with x or out would change what it reads.
  const auto bytes = (uintptr_t)num_tokens * (uintptr_t)dim * sizeof(float);
  const auto r_begin = (uintptr_t)residual, r_end = r_begin + bytes;
  const float* others[2] = {x, out};
  const char* names[2] = {"x", "out"};
  for (int i = 0; i < 2; i++) {
    const auto begin = (uintptr_t)others[i];
    if (r_begin < begin + bytes && begin < r_end) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected residual not to overlap %s, found overlapping buffers", fn,
                     names[i]);
    }
  }
  return DL_OK;
}

inline int32_t dl_validate_matmul(const char* fn, const dl_context* ctx, const float* out, const float* x,
                                  const void* w, int32_t w_dtype, int32_t m, int32_t n, int32_t k,
                                  int32_t out_row_stride) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "w_dtype", w_dtype, DL_MATMUL_DTYPES));
  DL_TRY(dl_check_non_negative(fn, "m", m));
  DL_TRY(dl_check_positive(fn, "n", n));
  DL_TRY(dl_check_positive(fn, "k", k));
  DL_TRY(dl_check_whole_blocks(fn, "k", k, w_dtype));
  if (out_row_stride < n) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected out_row_stride >= n (%d), found %d", fn, n, out_row_stride);
  }
  if (m == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "x", x));
  DL_TRY(dl_check_ptr(fn, "w", w));
  const auto out_begin = (uintptr_t)out;
  const auto out_end = out_begin + ((uintptr_t)(m - 1) * out_row_stride + n) * sizeof(float);
  const auto x_begin = (uintptr_t)x, x_end = x_begin + (uintptr_t)m * k * sizeof(float);
  if (out_begin < x_end && x_begin < out_end) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected out not to overlap x, found overlapping buffers", fn);
  }
  return DL_OK;
}

inline int32_t dl_validate_rope(const char* fn, const dl_context* ctx, const float* x, const int32_t* positions,
                                const float* inv_freq, int32_t num_tokens, int32_t num_heads, int32_t head_dim,
                                int32_t rotary_dim, int32_t row_stride, int32_t style) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
  DL_TRY(dl_check_positive(fn, "num_heads", num_heads));
  DL_TRY(dl_check_positive(fn, "head_dim", head_dim));
  DL_TRY(dl_check_positive(fn, "rotary_dim", rotary_dim));
  if (rotary_dim % 2 != 0 || rotary_dim > head_dim) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected an even rotary_dim <= head_dim (%d), found %d", fn,
                   head_dim, rotary_dim);
  }
  if ((int64_t)row_stride < (int64_t)num_heads * head_dim) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected row_stride >= num_heads * head_dim (%lld), found %d", fn,
                   (long long)num_heads * head_dim, row_stride);
  }
  if (style != DL_ROPE_NEOX && style != DL_ROPE_INTERLEAVED) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected style 0 (NEOX) or 1 (INTERLEAVED), found %d", fn, style);
  }
  // Implied by the row_stride check (an int32); kept for the CUDA kernel's int32 indexing.
  if ((int64_t)num_heads * (rotary_dim / 2) > INT32_MAX) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: num_heads * rotary_dim / 2 exceeds INT32_MAX", fn);
  }
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "x", x));
  DL_TRY(dl_check_ptr(fn, "positions", positions));
  DL_TRY(dl_check_ptr(fn, "inv_freq", inv_freq));
  return DL_OK;
}

inline int32_t dl_validate_silu_mul(const char* fn, const dl_context* ctx, const float* out, const float* gate_up,
                                    int32_t num_tokens, int32_t dim) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
  DL_TRY(dl_check_positive(fn, "dim", dim));
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "gate_up", gate_up));
  return DL_OK;
}

inline int32_t dl_validate_add(const char* fn, const dl_context* ctx, const float* out, const float* a,
                               const float* b, uint64_t num_elements) {
  DL_TRY(dl_check_ctx(fn, ctx));
  if (num_elements == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "a", a));
  DL_TRY(dl_check_ptr(fn, "b", b));
  DL_TRY(dl_check_num_elements(fn, num_elements));
  return DL_OK;
}

// rows[i] in [0, num_src_rows) is device metadata: checked by the CPU launcher only.
inline int32_t dl_validate_gather_rows(const char* fn, const dl_context* ctx, const float* out, const float* x,
                                       const int32_t* rows, int32_t num_rows, int32_t num_src_rows, int32_t dim) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_rows", num_rows));
  DL_TRY(dl_check_non_negative(fn, "num_src_rows", num_src_rows));
  DL_TRY(dl_check_positive(fn, "dim", dim));
  if (num_rows == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "x", x));
  DL_TRY(dl_check_ptr(fn, "rows", rows));
  return DL_OK;
}

// slot_mapping bounds are device metadata: checked by the CPU launcher only.
inline int32_t dl_validate_kv_write(const char* fn, const dl_context* ctx, const void* k_cache, const void* v_cache,
                                    int32_t cache_dtype, const float* k, const float* v,
                                    const int32_t* slot_mapping, int32_t num_tokens, int32_t num_kv_heads,
                                    int32_t head_dim, int32_t row_stride, int32_t block_size, int32_t num_blocks) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "cache_dtype", cache_dtype, DL_KV_CACHE_DTYPES));
  DL_TRY(dl_check_non_negative(fn, "num_tokens", num_tokens));
  DL_TRY(dl_check_positive(fn, "num_kv_heads", num_kv_heads));
  DL_TRY(dl_check_positive(fn, "head_dim", head_dim));
  DL_TRY(dl_check_positive(fn, "block_size", block_size));
  DL_TRY(dl_check_positive(fn, "num_blocks", num_blocks));
  if ((int64_t)row_stride < (int64_t)num_kv_heads * head_dim) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected row_stride >= num_kv_heads * head_dim (%lld), found %d",
                   fn, (long long)num_kv_heads * head_dim, row_stride);
  }
  // Implied by the row_stride check (an int32); kept for the CUDA kernel's int32 indexing.
  if ((int64_t)num_kv_heads * head_dim > INT32_MAX) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: num_kv_heads * head_dim exceeds INT32_MAX", fn);
  }
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "k_cache", k_cache));
  DL_TRY(dl_check_ptr(fn, "v_cache", v_cache));
  DL_TRY(dl_check_ptr(fn, "k", k));
  DL_TRY(dl_check_ptr(fn, "v", v));
  DL_TRY(dl_check_ptr(fn, "slot_mapping", slot_mapping));
  return DL_OK;
}

// dl_rope on the Q and K heads and dl_kv_write on K and V of fused QKV rows: the two validations,
// after the row layout check. Slots are device metadata: checked by the CPU launcher only.
inline int32_t dl_validate_rope_kv_write(const char* fn, const dl_context* ctx, const float* qkv,
                                         const int32_t* positions, const float* inv_freq, const void* k_cache,
                                         const void* v_cache, int32_t cache_dtype, const int32_t* slot_mapping,
                                         int32_t num_tokens, int32_t num_heads, int32_t num_kv_heads,
                                         int32_t head_dim, int32_t rotary_dim, int32_t row_stride, int32_t style,
                                         int32_t block_size, int32_t num_blocks) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_positive(fn, "num_heads", num_heads));
  DL_TRY(dl_check_positive(fn, "num_kv_heads", num_kv_heads));
  DL_TRY(dl_check_positive(fn, "head_dim", head_dim));
  const int64_t row = ((int64_t)num_heads + 2 * (int64_t)num_kv_heads) * head_dim;
  if ((int64_t)row_stride < row) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT,
                   "%s: expected row_stride >= (num_heads + 2 * num_kv_heads) * head_dim (%lld), found %d", fn,
                   (long long)row, row_stride);
  }
  if (num_tokens > 0) DL_TRY(dl_check_ptr(fn, "qkv", qkv));
  DL_TRY(dl_validate_rope(fn, ctx, qkv, positions, inv_freq, num_tokens, num_heads + num_kv_heads, head_dim,
                          rotary_dim, row_stride, style));
  const float* k = qkv == nullptr ? nullptr : qkv + (int64_t)num_heads * head_dim;
  const float* v = k == nullptr ? nullptr : k + (int64_t)num_kv_heads * head_dim;
  return dl_validate_kv_write(fn, ctx, k_cache, v_cache, cache_dtype, k, v, slot_mapping, num_tokens, num_kv_heads,
                              head_dim, row_stride, block_size, num_blocks);
}

// Block ids in pairs are device metadata: checked by the CPU launcher only.
inline int32_t dl_validate_copy_blocks(const char* fn, const dl_context* ctx, const void* cache,
                                       const int32_t* pairs, int32_t num_pairs, uint64_t block_bytes,
                                       int32_t num_blocks) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_pairs", num_pairs));
  DL_TRY(dl_check_positive(fn, "num_blocks", num_blocks));
  if (num_pairs == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "cache", cache));
  DL_TRY(dl_check_ptr(fn, "pairs", pairs));
  if (block_bytes == 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected block_bytes > 0, found 0", fn);
  return DL_OK;
}

inline int32_t dl_validate_convert(const char* fn, const dl_context* ctx, const void* dst, int32_t dst_dtype,
                                   const void* src, int32_t src_dtype, uint64_t num_elements) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "dst_dtype", dst_dtype, DL_CONVERT_DTYPES));
  DL_TRY(dl_check_dtype(fn, "src_dtype", src_dtype, DL_CONVERT_DTYPES));
  DL_TRY(dl_check_num_elements(fn, num_elements));
  DL_TRY(dl_check_whole_blocks(fn, "num_elements", (int64_t)num_elements, dst_dtype));
  DL_TRY(dl_check_whole_blocks(fn, "num_elements", (int64_t)num_elements, src_dtype));
  if (num_elements == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "dst", dst));
  DL_TRY(dl_check_ptr(fn, "src", src));
  DL_TRY(dl_check_num_elements(fn, num_elements));
  return DL_OK;
}

// check_metadata() runs once the metadata pointers are known to be non-NULL and num_seqs > 0, before
// the output buffers are checked: the CPU build validates query_start, seq_lens and block_tables
// there; the CUDA build, which cannot read them on the host, passes dl_no_metadata_check.
inline int32_t dl_no_metadata_check() { return DL_OK; }

template <class MetadataCheck>
inline int32_t dl_validate_paged_attention(const char* fn, const dl_context* ctx, const float* out, const float* q,
                                           const void* k_cache, const void* v_cache, int32_t cache_dtype,
                                           const int32_t* block_tables, const int32_t* seq_lens,
                                           const int32_t* query_start, int32_t num_seqs, int32_t num_tokens,
                                           int32_t max_query_len, int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
                                           int32_t q_row_stride, int32_t block_size, int32_t max_blocks_per_seq,
                                           int32_t num_blocks, float scale, MetadataCheck&& check_metadata) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "cache_dtype", cache_dtype, DL_KV_CACHE_DTYPES));
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
  if (max_query_len < (num_tokens > 0 ? 1 : 0) || max_query_len > num_tokens) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected max_query_len in [%d, %d], found %d", fn,
                   num_tokens > 0 ? 1 : 0, num_tokens, max_query_len);
  }
  if (num_seqs == 0 && num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "query_start", query_start));
  DL_TRY(dl_check_ptr(fn, "seq_lens", seq_lens));
  DL_TRY(dl_check_ptr(fn, "block_tables", block_tables));
  if (num_seqs == 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected num_seqs > 0 for %d query tokens, found 0", fn,
                   num_tokens);
  }
  DL_TRY(check_metadata());
  if (num_tokens == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out", out));
  DL_TRY(dl_check_ptr(fn, "q", q));
  DL_TRY(dl_check_ptr(fn, "k_cache", k_cache));
  DL_TRY(dl_check_ptr(fn, "v_cache", v_cache));
  return DL_OK;
}

inline int32_t dl_validate_reserve_workspace(const char* fn, const dl_context* ctx, int32_t max_num_tokens,
                                             int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
                                             int32_t block_size, int32_t max_blocks_per_seq,
                                             int32_t max_matmul_k, const uint64_t* out_bytes) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_positive(fn, "max_num_tokens", max_num_tokens));
  DL_TRY(dl_check_positive(fn, "num_heads", num_heads));
  DL_TRY(dl_check_positive(fn, "num_kv_heads", num_kv_heads));
  DL_TRY(dl_check_positive(fn, "head_dim", head_dim));
  DL_TRY(dl_check_positive(fn, "block_size", block_size));
  DL_TRY(dl_check_positive(fn, "max_blocks_per_seq", max_blocks_per_seq));
  DL_TRY(dl_check_non_negative(fn, "max_matmul_k", max_matmul_k));
  if (num_heads % num_kv_heads != 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected num_heads (%d) to be a multiple of num_kv_heads, found %d",
                   fn, num_heads, num_kv_heads);
  }
  DL_TRY(dl_check_ptr(fn, "out_bytes", out_bytes));
  return DL_OK;
}

// --- Quantized formats

// dl_dequantize reads every format of the table up to INT4; dl_quantize writes the block-quantized
// ones and INT8, plus the plain ones by conversion. The W8A8 and 2:4 formats (from W8A8 on) are
// written on load by src/model/quantize.ts and src/model/sparsity.ts and have neither.
constexpr uint32_t DL_DEQUANTIZE_DTYPES = (uint32_t)((1ull << DL_DTYPE_W8A8) - 1);
constexpr uint32_t DL_QUANTIZE_DTYPES = DL_DEQUANTIZE_DTYPES;

// The [rows, cols] shape of a matrix of `dtype` and the two buffers' bounds; shared by both
// directions (`matrix` is the buffer of that dtype, `floats` the f32 one).
inline int32_t dl_check_quant_shape(const char* fn, int32_t dtype, const char* matrix_name, const void* matrix,
                                    const char* floats_name, const float* floats, int64_t rows, int64_t cols) {
  DL_TRY(dl_check_non_negative(fn, "rows", rows));
  DL_TRY(dl_check_positive(fn, "cols", cols));
  DL_TRY(dl_check_whole_blocks(fn, "cols", cols, dtype));
  if (rows > INT64_MAX / 4 / cols) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: rows * cols (%lld * %lld) is too large", fn, (long long)rows,
                   (long long)cols);
  }
  if (rows == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, floats_name, floats));
  DL_TRY(dl_check_ptr(fn, matrix_name, matrix));
  const auto f_begin = (uintptr_t)floats, f_end = f_begin + (uintptr_t)(rows * cols) * sizeof(float);
  const auto m_begin = (uintptr_t)matrix, m_end = m_begin + (uintptr_t)dl_matrix_bytes(dtype, rows, cols);
  if (f_begin < m_end && m_begin < f_end) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s not to overlap %s, found overlapping buffers", fn,
                   matrix_name, floats_name);
  }
  return DL_OK;
}

inline int32_t dl_validate_dequantize(const char* fn, const dl_context* ctx, const float* dst, const void* src,
                                      int32_t src_dtype, int64_t rows, int64_t cols) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "src_dtype", src_dtype, DL_DEQUANTIZE_DTYPES));
  return dl_check_quant_shape(fn, src_dtype, "src", src, "dst", dst, rows, cols);
}

// The values of src and importance (finite, importance >= 0) are checked by the host quantizer
// (native/dl_quantize.h), which both builds run on host memory.
inline int32_t dl_validate_quantize(const char* fn, const dl_context* ctx, const void* dst, int32_t dst_dtype,
                                    const float* src, int64_t rows, int64_t cols) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "dst_dtype", dst_dtype, DL_QUANTIZE_DTYPES));
  return dl_check_quant_shape(fn, dst_dtype, "dst", dst, "src", src, rows, cols);
}

// dl_repack: Q4_0 to Q4_0_R16 or back (both builds check the arguments; CUDA then has no kernel).
inline int32_t dl_validate_repack(const char* fn, const dl_context* ctx, const void* dst, int32_t dst_dtype,
                                  const void* src, int32_t src_dtype, int64_t rows, int64_t cols) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "src_dtype", src_dtype, ~0u));
  DL_TRY(dl_check_dtype(fn, "dst_dtype", dst_dtype, ~0u));
  const bool pair = (src_dtype == DL_DTYPE_Q4_0 && dst_dtype == DL_DTYPE_Q4_0_R16) ||
                    (src_dtype == DL_DTYPE_Q4_0_R16 && dst_dtype == DL_DTYPE_Q4_0);
  if (!pair) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected q4_0 to q4_0_r16 or back, found %s to %s", fn,
                   DL_DTYPES[src_dtype].name, DL_DTYPES[dst_dtype].name);
  }
  DL_TRY(dl_check_non_negative(fn, "rows", rows));
  DL_TRY(dl_check_positive(fn, "cols", cols));
  DL_TRY(dl_check_whole_blocks(fn, "cols", cols, src_dtype));
  if (rows > INT64_MAX / cols) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: rows * cols (%lld * %lld) is too large", fn, (long long)rows,
                   (long long)cols);
  }
  if (rows == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "dst", dst));
  DL_TRY(dl_check_ptr(fn, "src", src));
  const auto d_begin = (uintptr_t)dst, s_begin = (uintptr_t)src;
  const auto bytes = (uintptr_t)dl_matrix_bytes(src_dtype, rows, cols);
  if (d_begin < s_begin + bytes && s_begin < d_begin + bytes) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected dst not to overlap src, found overlapping buffers", fn);
  }
  return DL_OK;
}

inline int32_t dl_validate_sample(const char* fn, const dl_context* ctx, const int32_t* out_ids, const float* logits,
                                  const float* temperature, const int32_t* top_k, const float* top_p,
                                  const float* min_p, const uint64_t* seeds, const uint64_t* counters,
                                  int32_t num_rows, int32_t vocab_size) {
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_non_negative(fn, "num_rows", num_rows));
  DL_TRY(dl_check_positive(fn, "vocab_size", vocab_size));
  if (num_rows == 0) return DL_OK;
  DL_TRY(dl_check_ptr(fn, "out_ids", out_ids));
  DL_TRY(dl_check_ptr(fn, "logits", logits));
  DL_TRY(dl_check_ptr(fn, "temperature", temperature));
  DL_TRY(dl_check_ptr(fn, "top_k", top_k));
  DL_TRY(dl_check_ptr(fn, "top_p", top_p));
  DL_TRY(dl_check_ptr(fn, "min_p", min_p));
  DL_TRY(dl_check_ptr(fn, "seeds", seeds));
  DL_TRY(dl_check_ptr(fn, "counters", counters));
  return DL_OK;
}
