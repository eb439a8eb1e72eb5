// RMS normalization, one block per row: out = x / sqrt(mean(x^2) + eps) * weight, alone or fused
// with the residual add before it.
#include <cmath>

#include "common.cuh"
#include "reduce.cuh"

// --- Kernels

// Each thread sums the squares of its strided elements in f32, a warp-shuffle block reduction
// gives the row's sum, and the same thread then scales exactly the elements it read, so out may
// alias x. The scale is applied as (x * scale) * weight, in the CPU build's order.
__global__ void rmsnorm_kernel(float* out,                        // [T, dim]
                               const float* x,                    // [T, dim]
                               const float* __restrict__ weight,  // [dim]
                               int32_t dim, float eps) {
  __shared__ float partial[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  float* outr = out + row * dim;
  float sum = 0.0f;
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) sum = fmaf(xr[i], xr[i], sum);
  sum = dl_block_sum(sum, partial);
  const float scale = 1.0f / sqrtf(sum / (float)dim + eps);
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) outr[i] = xr[i] * scale * weight[i];
}

// residual += x, then rmsnorm_kernel's exact operations on the new residual: each thread adds,
// stores and squares its strided elements, and after the reduction rescales the same elements
// (reading back what it stored), so out may alias x and the result matches dl_add + dl_rmsnorm.
__global__ void add_rmsnorm_kernel(float* out,                        // [T, dim]
                                   float* __restrict__ residual,      // [T, dim]
                                   const float* x,                    // [T, dim]
                                   const float* __restrict__ weight,  // [dim]
                                   int32_t dim, float eps) {
  __shared__ float partial[32];
  const int64_t row = blockIdx.x;
  float* rr = residual + row * dim;
  const float* xr = x + row * dim;
  float* outr = out + row * dim;
  float sum = 0.0f;
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = rr[i] + xr[i];
    rr[i] = v;
    sum = fmaf(v, v, sum);
  }
  sum = dl_block_sum(sum, partial);
  const float scale = 1.0f / sqrtf(sum / (float)dim + eps);
  for (int32_t i = threadIdx.x; i < dim; i += blockDim.x) outr[i] = rr[i] * scale * weight[i];
}

// --- Launchers

// Enough threads for about 4 elements each, a whole number of warps, at most 1024.
static int rmsnorm_threads(int32_t dim) {
  const int threads = ((dim + 3) / 4 + 31) / 32 * 32;
  return threads > 1024 ? 1024 : threads;
}

extern "C" int32_t dl_rmsnorm(dl_context* ctx, float* out, const float* x, const float* weight,
                              int32_t num_tokens, int32_t dim, float eps) {
  const char* fn = "dl_rmsnorm";
  DL_TRY(dl_validate_rmsnorm(fn, ctx, out, x, weight, num_tokens, dim, eps));
  if (num_tokens == 0) return DL_OK;
  rmsnorm_kernel<<<num_tokens, rmsnorm_threads(dim), 0, ctx->stream>>>(out, x, weight, dim, eps);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

extern "C" int32_t dl_add_rmsnorm(dl_context* ctx, float* out, float* residual, const float* x, const float* weight,
                                  int32_t num_tokens, int32_t dim, float eps) {
  const char* fn = "dl_add_rmsnorm";
  DL_TRY(dl_validate_add_rmsnorm(fn, ctx, out, residual, x, weight, num_tokens, dim, eps));
  if (num_tokens == 0) return DL_OK;
  add_rmsnorm_kernel<<<num_tokens, rmsnorm_threads(dim), 0, ctx->stream>>>(out, residual, x, weight, dim, eps);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
