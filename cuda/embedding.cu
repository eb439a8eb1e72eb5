// Token embedding lookup: one block per token copies (and widens or dequantizes to f32) its table
// row.
#include "common.cuh"
#include "half.cuh"
#include "quant.cuh"

// --- Kernels

// out[t] = table[token_ids[t]]. The ids live in device memory and cannot be checked on the host:
// a row whose id is outside [0, vocab_size) is written as zeros instead of reading out of bounds,
// and reported (dl_bad_report) so the next synchronize fails.
template <int DT>
__global__ void embedding_kernel(float* __restrict__ out,                       // [T, dim]
                                 const typename Dtype<DT>::T* __restrict__ table,  // [V, dim]
                                 const int32_t* __restrict__ token_ids,         // [T]
                                 int32_t vocab_size, int32_t dim, unsigned long long* bad) {
  const int64_t t = blockIdx.x;
  const int32_t id = token_ids[t];
  float* dst = out + t * dim;
  if (id < 0 || id >= vocab_size) {
    if (threadIdx.x == 0) dl_bad_report(bad, DL_BAD_TOKEN_ID, t, id);
    for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  const typename Dtype<DT>::T* row = table + (int64_t)id * dim;
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) {
    if constexpr (DT == DL_DTYPE_F16) {
      dst[i] = dl_f16_to_f32(row[i]);  // exact, like the CPU build
    } else {
      dst[i] = Dtype<DT>::load(row[i]);
    }
  }
}

// A quantized table: the threads of token t's block expand the blocks of its row with the
// per-block dequantizers of dl_dequantize (native/dl_dequant.h), so the floats are the same.
template <int DT>
__global__ void embedding_quant_kernel(float* __restrict__ out,            // [T, dim]
                                       const uint8_t* __restrict__ table,  // [V, dim] of DT
                                       const int32_t* __restrict__ token_ids,  // [T]
                                       int32_t vocab_size, int32_t dim, unsigned long long* bad) {
  using Q = QuantTraits<DT>;
  const int64_t t = blockIdx.x;
  const int32_t id = token_ids[t];
  float* dst = out + t * dim;
  if (id < 0 || id >= vocab_size) {
    if (threadIdx.x == 0) dl_bad_report(bad, DL_BAD_TOKEN_ID, t, id);
    for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  if constexpr (DT == DL_DTYPE_INT8) {
    const int8_t* row = reinterpret_cast<const int8_t*>(table) + (int64_t)id * dim;
    const float scale = dl_load_f32_unaligned(table + (int64_t)vocab_size * dim + 4 * (int64_t)id);
    for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) dl_dequant_int8_row(row + i, scale, dst + i, 1);
  } else {
    const int64_t blocks_per_row = dim / Q::BLOCK_LEN;
    const uint8_t* row = table + (int64_t)id * blocks_per_row * Q::BLOCK_BYTES;
    for (int64_t b = threadIdx.x; b < blocks_per_row; b += blockDim.x) {
      dl_dequant_block(DT, row, b, dst + b * Q::BLOCK_LEN);
    }
  }
}

// --- Launcher

extern "C" int32_t dl_embedding(dl_context* ctx, float* out, const void* table,
                                int32_t table_dtype, const int32_t* token_ids, int32_t num_tokens,
                                int32_t vocab_size, int32_t dim) {
  const char* fn = "dl_embedding";
  DL_TRY(dl_validate_embedding(fn, ctx, out, table, table_dtype, token_ids, num_tokens, vocab_size, dim));
  if (num_tokens == 0) return DL_OK;
  const int threads = dim >= 256 ? 256 : ((dim + 31) / 32) * 32;
  cudaStream_t s = ctx->stream;
  if (dl_dtype_is_quantized(table_dtype)) {
    const uint8_t* bytes = static_cast<const uint8_t*>(table);
    // One thread per block of the row (per element for INT8), at least a warp.
    const int64_t per_row = dim / DL_DTYPES[table_dtype].block_len;
    const int qthreads = per_row >= 256 ? 256 : (int)((per_row + 31) / 32) * 32;
    dl_dispatch_quant(table_dtype, [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      embedding_quant_kernel<DT><<<num_tokens, qthreads, 0, s>>>(out, bytes, token_ids, vocab_size, dim, ctx->bad_metadata);
    });
  } else if (table_dtype == DL_DTYPE_F32) {
    embedding_kernel<DL_DTYPE_F32><<<num_tokens, threads, 0, s>>>(
        out, static_cast<const float*>(table), token_ids, vocab_size, dim, ctx->bad_metadata);
  } else if (table_dtype == DL_DTYPE_F16) {
    embedding_kernel<DL_DTYPE_F16><<<num_tokens, threads, 0, s>>>(
        out, static_cast<const uint16_t*>(table), token_ids, vocab_size, dim, ctx->bad_metadata);
  } else {
    embedding_kernel<DL_DTYPE_BF16><<<num_tokens, threads, 0, s>>>(
        out, static_cast<const uint16_t*>(table), token_ids, vocab_size, dim, ctx->bad_metadata);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
