// RMS normalization, row by row: out = x / sqrt(mean(x^2) + eps) * weight (sum of squares in double),
// alone or fused with the residual add before it.
#include <cmath>

#include "common.h"

// --- Kernel

// Like llama.cpp's CPU rms_norm: squares summed in double, the scale applied in f32.
DL_TARGET_CLONES
static void rmsnorm_row(float* out, const float* x, const float* weight, int32_t dim, float eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int32_t i = 0; i < dim; i++) sum += (double)x[i] * (double)x[i];
  const float mean = (float)(sum / dim);
  const float scale = 1.0f / std::sqrt(mean + eps);
#pragma omp simd
  for (int32_t i = 0; i < dim; i++) out[i] = x[i] * scale * weight[i];
}

// --- Launcher

extern "C" DL_API int32_t dl_rmsnorm(dl_context* ctx, float* out, const float* x, const float* weight,
                                     int32_t num_tokens, int32_t dim, float eps) {
  const char* fn = "dl_rmsnorm";
  DL_TRY(dl_validate_rmsnorm(fn, ctx, out, x, weight, num_tokens, dim, eps));
  if (num_tokens == 0) return DL_OK;
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_tokens * dim)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    rmsnorm_row(out + (int64_t)t * dim, x + (int64_t)t * dim, weight, dim, eps);
  }
  return DL_OK;
}

// Each row's add, then the same rmsnorm_row as dl_rmsnorm on the updated residual: the same f32
// adds as dl_add and the same norm, so bit-identical to the two calls, while the row is in cache.
extern "C" DL_API int32_t dl_add_rmsnorm(dl_context* ctx, float* out, float* residual, const float* x,
                                         const float* weight, int32_t num_tokens, int32_t dim, float eps) {
  const char* fn = "dl_add_rmsnorm";
  DL_TRY(dl_validate_add_rmsnorm(fn, ctx, out, residual, x, weight, num_tokens, dim, eps));
  if (num_tokens == 0) return DL_OK;
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_tokens * dim)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    float* r = residual + (int64_t)t * dim;
    const float* xr = x + (int64_t)t * dim;
#pragma omp simd
    for (int32_t i = 0; i < dim; i++) r[i] = r[i] + xr[i];
    rmsnorm_row(out + (int64_t)t * dim, r, weight, dim, eps);
  }
  return DL_OK;
}
