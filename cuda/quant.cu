// Quantized formats on CUDA: dl_dequantize (a kernel over the blocks of a matrix, through the
// per-block dequantizers the CPU build uses, native/dl_dequant.h) and dl_quantize (the CPU build's
// host quantizers, native/dl_quantize.h, on a host copy).
#include <new>
#include <vector>

#include "common.cuh"
#include "dl_quantize.h"
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
  // Through the host, with the CPU build's quantizers: the same bytes from both builds, and the
  // scale searches are branchy scalar code that a GPU would not speed up much (it runs once, at
  // load or offline).
  const char* fn = "dl_quantize";
  DL_TRY(dl_validate_quantize(fn, ctx, dst, dst_dtype, src, rows, cols));
  DL_TRY(ctx->graphs.forbid(fn));  // copies through the host and synchronizes
  if (rows == 0) return DL_OK;
  const size_t num_src = (size_t)(rows * cols), dst_bytes = (size_t)dl_matrix_bytes(dst_dtype, rows, cols);
  std::vector<float> h_src, h_importance;
  std::vector<uint8_t> h_dst;
  try {
    h_src.resize(num_src);
    h_dst.resize(dst_bytes);
    if (importance != nullptr) h_importance.resize((size_t)cols);
  } catch (const std::bad_alloc&) {
    return dl_fail(DL_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of host staging", fn,
                   num_src * sizeof(float) + dst_bytes);
  }
  cudaStream_t s = ctx->stream;
  DL_CUDA_CHECK(cudaMemcpyAsync(h_src.data(), src, num_src * sizeof(float), cudaMemcpyDeviceToHost, s));
  if (importance != nullptr) {
    DL_CUDA_CHECK(cudaMemcpyAsync(h_importance.data(), importance, (size_t)cols * sizeof(float),
                                  cudaMemcpyDeviceToHost, s));
  }
  DL_CUDA_CHECK(cudaStreamSynchronize(s));
  // One host thread: the CUDA build has no OpenMP.
  DL_TRY(dl_quantize_host(fn, 1, h_dst.data(), dst_dtype, h_src.data(), rows, cols,
                          importance != nullptr ? h_importance.data() : nullptr));
  DL_CUDA_CHECK(cudaMemcpyAsync(dst, h_dst.data(), dst_bytes, cudaMemcpyHostToDevice, s));
  DL_CUDA_CHECK(cudaStreamSynchronize(s));  // h_dst must outlive the copy
  return DL_OK;
}

extern "C" int32_t dl_dequantize(dl_context* ctx, float* dst, const void* src, int32_t src_dtype, int64_t rows,
                                 int64_t cols) {
  const char* fn = "dl_dequantize";
  DL_TRY(dl_validate_dequantize(fn, ctx, dst, src, src_dtype, rows, cols));
  if (rows == 0) return DL_OK;
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

// Q4_0_R16 is the CPU kernels' layout: the CUDA kernels read Q4_0 as it is, so the loader keeps it.
extern "C" int32_t dl_repack(dl_context* ctx, void* dst, int32_t dst_dtype, const void* src, int32_t src_dtype,
                             int64_t rows, int64_t cols) {
  const char* fn = "dl_repack";
  DL_TRY(dl_validate_repack(fn, ctx, dst, dst_dtype, src, src_dtype, rows, cols));
  return dl_fail(DL_ERR_UNSUPPORTED, "%s: the CUDA build has no q4_0_r16 kernels; its kernels read q4_0", fn);
}
