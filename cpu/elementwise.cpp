// Elementwise kernels: SwiGLU activation (silu_mul), residual add, row gather.
#include <cmath>
#include <cstring>

#include "common.h"

// --- silu_mul

extern "C" DL_API int32_t dl_silu_mul(dl_context* ctx, float* out, const float* gate_up, int32_t num_tokens,
                                      int32_t dim) {
  const char* fn = "dl_silu_mul";
  DL_TRY(dl_validate_silu_mul(fn, ctx, out, gate_up, num_tokens, dim));
  if (num_tokens == 0) return DL_OK;
  // expf dominates: count each element as a few units of work.
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_tokens * dim * 8)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    const float* gate = gate_up + (int64_t)t * 2 * dim;  // [dim]
    const float* up = gate + dim;                        // [dim]
    float* dst = out + (int64_t)t * dim;                 // [dim]
    for (int32_t i = 0; i < dim; i++) dst[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  return DL_OK;
}

// --- add

extern "C" DL_API int32_t dl_add(dl_context* ctx, float* out, const float* a, const float* b,
                                 uint64_t num_elements) {
  const char* fn = "dl_add";
  DL_TRY(dl_validate_add(fn, ctx, out, a, b, num_elements));
  if (num_elements == 0) return DL_OK;
  const int64_t n = (int64_t)num_elements;
#pragma omp parallel for simd num_threads(dl_threads_for(ctx, n)) schedule(static)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  return DL_OK;
}

// --- gather_rows

extern "C" DL_API int32_t dl_gather_rows(dl_context* ctx, float* out, const float* x, const int32_t* rows,
                                         int32_t num_rows, int32_t num_src_rows, int32_t dim) {
  const char* fn = "dl_gather_rows";
  DL_TRY(dl_validate_gather_rows(fn, ctx, out, x, rows, num_rows, num_src_rows, dim));
  if (num_rows == 0) return DL_OK;
  for (int32_t i = 0; i < num_rows; i++) {
    if (rows[i] < 0 || rows[i] >= num_src_rows) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected rows[%d] in [0, %d), found %d", fn, i, num_src_rows,
                     rows[i]);
    }
  }
#pragma omp parallel for num_threads(dl_threads_for(ctx, (int64_t)num_rows * dim)) schedule(static)
  for (int32_t i = 0; i < num_rows; i++) {
    std::memcpy(out + (int64_t)i * dim, x + (int64_t)rows[i] * dim, (size_t)dim * sizeof(float));
  }
  return DL_OK;
}
