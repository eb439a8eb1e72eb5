// Token embedding lookup: copies (widens or dequantizes to f32) one table row per token.
#include "common.h"
#include "dl_dequant.h"
#include "dl_dtype.h"
#include "dl_half.h"
#include "dl_repack.h"

// --- Kernel

template <class T, float (*Load)(const T*, int64_t)>
static void embedding_rows(const dl_context* ctx, float* out, const T* table, const int32_t* token_ids,
                           int32_t num_tokens, int32_t dim) {
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_tokens * dim)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    const T* row = table + (int64_t)token_ids[t] * dim;  // [dim]
    float* dst = out + (int64_t)t * dim;                 // [dim]
#pragma omp simd
    for (int32_t i = 0; i < dim; i++) dst[i] = Load(row, i);
  }
}

// Quantized tables: each row dequantized block by block (native/dl_dequant.h, the same expansion as
// dl_dequantize); INT8's per-row scales follow all vocab_size rows.
static void embedding_quantized(const dl_context* ctx, float* out, const void* table, int32_t dtype,
                                const int32_t* token_ids, int32_t num_tokens, int32_t vocab_size, int32_t dim) {
  const uint8_t* base = static_cast<const uint8_t*>(table);
  const int64_t row_bytes = (int64_t)dl_dtype_bytes(dtype, (uint64_t)dim);
  const int64_t block_len = DL_DTYPES[dtype].block_len;
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_tokens * dim)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    const uint8_t* row = base + (int64_t)token_ids[t] * row_bytes;  // [row_bytes]
    float* dst = out + (int64_t)t * dim;                            // [dim]
    if (dtype == DL_DTYPE_Q4_0_R16) {
      for (int64_t b = 0; b < dim / block_len; b++) {
        const dl_block_q4_0 blk = dl_r16_block(base, vocab_size, dim, token_ids[t], b);
        dl_dequant_q4_0(&blk, dst + b * block_len);
      }
    } else if (dtype == DL_DTYPE_INT8) {
      float scale;
      __builtin_memcpy(&scale, base + (int64_t)vocab_size * row_bytes + (int64_t)token_ids[t] * 4, 4);
      dl_dequant_int8_row(reinterpret_cast<const int8_t*>(row), scale, dst, dim);
    } else {
      for (int64_t b = 0; b < dim / block_len; b++) dl_dequant_block(dtype, row, b, dst + b * block_len);
    }
  }
}

// --- Launcher

extern "C" DL_API int32_t dl_embedding(dl_context* ctx, float* out, const void* table, int32_t table_dtype,
                                       const int32_t* token_ids, int32_t num_tokens, int32_t vocab_size,
                                       int32_t dim) {
  const char* fn = "dl_embedding";
  DL_TRY(dl_validate_embedding(fn, ctx, out, table, dl_dtype_unpacked(table_dtype), token_ids, num_tokens, vocab_size,
                               dim));
  if (num_tokens == 0) return DL_OK;
  for (int32_t t = 0; t < num_tokens; t++) {
    if (token_ids[t] < 0 || token_ids[t] >= vocab_size) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected token_ids[%d] in [0, %d), found %d", fn, t, vocab_size,
                     token_ids[t]);
    }
  }
  if (dl_dtype_is_quantized(table_dtype)) {
    embedding_quantized(ctx, out, table, table_dtype, token_ids, num_tokens, vocab_size, dim);
  } else if (table_dtype == DL_DTYPE_F32) {
    embedding_rows<float, dl_load_f32>(ctx, out, static_cast<const float*>(table), token_ids, num_tokens, dim);
  } else if (table_dtype == DL_DTYPE_F16) {
    embedding_rows<uint16_t, dl_load_f16>(ctx, out, static_cast<const uint16_t*>(table), token_ids, num_tokens, dim);
  } else {
    embedding_rows<uint16_t, dl_load_bf16>(ctx, out, static_cast<const uint16_t*>(table), token_ids, num_tokens,
                                           dim);
  }
  return DL_OK;
}
