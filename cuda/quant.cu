// Quantized formats on CUDA: dl_dequantize (a kernel over the blocks of a matrix, through the
// per-block dequantizers the CPU build uses, native/dl_dequant.h) and dl_quantize.
#include "common.cuh"
#include "half.cuh"
#include "quant.cuh"

// --- Kernels

// Block-quantized rows: thread t of the grid-stride loop expands block t % blocks_per_row of row
// t / blocks_per_row, so neighbouring threads read neighbouring blocks.
template <int DT>
__global__ void dequantize_blocks_kernel(float* __restrict__ dst,        // [rows, cols]
                                         const uint8_t* __restrict__ src,  // [rows, cols] of DT
                                         int64_t rows, int64_t cols) {
  using Q = QuantTraits<DT>;
  const int64_t blocks_per_row = cols / Q::BLOCK_LEN;
  const int64_t total = rows * blocks_per_row;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / blocks_per_row, b = t % blocks_per_row;
    dl_dequant_block(DT, src + r * blocks_per_row * Q::BLOCK_BYTES, b, dst + r * cols + b * Q::BLOCK_LEN);
  }
}

// INT8: element t of row r is scale[r] * q, the scales stored after all rows (dl_matrix_bytes).
__global__ void dequantize_int8_kernel(float* __restrict__ dst, const uint8_t* __restrict__ src,
                                       int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / cols;
    const float scale = dl_load_f32_unaligned(src + total + 4 * r);
    dl_dequant_int8_row(reinterpret_cast<const int8_t*>(src) + t, scale, dst + t, 1);
  }
}

// The plain formats: widened exactly, as dl_convert does.
template <int DT>
__global__ void dequantize_plain_kernel(float* __restrict__ dst,
                                        const typename Dtype<DT>::T* __restrict__ src, int64_t total) {
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (int64_t)gridDim.x * blockDim.x) {
    if constexpr (DT == DL_DTYPE_F16) {
      dst[t] = dl_f16_to_f32(src[t]);
    } else {
      dst[t] = Dtype<DT>::load(src[t]);
    }
  }
}

// --- Launchers

extern "C" int32_t dl_quantize(dl_context* ctx, void* dst, int32_t dst_dtype, const float* src, int64_t rows,
                               int64_t cols, const float* importance) {
  // Meant to copy to the host and run the CPU build's quantizers (native/dl_quantize.h), so both
  // builds write the same bytes; that header has not landed yet.
  (void)ctx, (void)dst, (void)src, (void)rows, (void)cols, (void)importance;
  return dl_fail(DL_ERR_NOT_IMPLEMENTED, "dl_quantize: no quantizer for %s yet", dl_dtype_name(dst_dtype));
}

extern "C" int32_t dl_dequantize(dl_context* ctx, float* dst, const void* src, int32_t src_dtype, int64_t rows,
                                 int64_t cols) {
  const char* fn = "dl_dequantize";
  DL_TRY(dl_check_ctx(fn, ctx));
  DL_TRY(dl_check_dtype(fn, "src_dtype", src_dtype, DL_FLOAT_DTYPES | DL_CUDA_QUANT_DTYPES));
  DL_TRY(dl_check_non_negative(fn, "rows", rows));
  DL_TRY(dl_check_positive(fn, "cols", cols));
  DL_TRY(dl_check_whole_blocks(fn, "cols", cols, src_dtype));
  if (rows == 0) return DL_OK;
  if (rows > INT64_MAX / cols) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected rows * cols to fit in 64 bits, found %lld * %lld", fn,
                   (long long)rows, (long long)cols);
  }
  DL_TRY(dl_check_ptr(fn, "dst", dst));
  DL_TRY(dl_check_ptr(fn, "src", src));
  const int threads = 256;
  cudaStream_t s = ctx->stream;
  const uint8_t* bytes = static_cast<const uint8_t*>(src);
  const int64_t total = rows * cols;
  const unsigned grid = dl_grid_for(total, threads);
  if (src_dtype == DL_DTYPE_F32) {
    dequantize_plain_kernel<DL_DTYPE_F32><<<grid, threads, 0, s>>>(dst, static_cast<const float*>(src), total);
  } else if (src_dtype == DL_DTYPE_F16) {
    dequantize_plain_kernel<DL_DTYPE_F16><<<grid, threads, 0, s>>>(dst, static_cast<const uint16_t*>(src), total);
  } else if (src_dtype == DL_DTYPE_BF16) {
    dequantize_plain_kernel<DL_DTYPE_BF16><<<grid, threads, 0, s>>>(dst, static_cast<const uint16_t*>(src), total);
  } else if (src_dtype == DL_DTYPE_INT8) {
    dequantize_int8_kernel<<<grid, threads, 0, s>>>(dst, bytes, rows, cols);
  } else {
    const int64_t num_blocks = total / DL_DTYPES[src_dtype].block_len;
    dl_dispatch_quant(src_dtype, [&](auto tag) {
      constexpr int DT = decltype(tag)::value;
      if constexpr (DT != DL_DTYPE_INT8) {
        dequantize_blocks_kernel<DT><<<dl_grid_for(num_blocks, threads), threads, 0, s>>>(dst, bytes, rows, cols);
      }
    });
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
