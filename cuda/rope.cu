// Rotary position embedding, in place, NEOX (rotate_half) or interleaved pairs.
#include <cmath>

#include "common.cuh"

// --- Kernels

// One block per token. The angle is position * inv_freq[i] rounded to f32 and cos/sin are f32
// (cosf/sinf, not the fast intrinsics), as in the CPU build; they are computed once per token into
// shared memory [2, rotary_dim / 2] and shared by its heads. An index i < half of head h rotates
// the pair (i, i + half) for NEOX or (2i, 2i + 1) for interleaved.
__global__ void rope_kernel(float* x,                               // [T, row_stride]
                            const int32_t* __restrict__ positions,  // [T]
                            const float* __restrict__ inv_freq,     // [rotary_dim / 2]
                            int32_t num_heads, int32_t head_dim, int32_t rotary_dim,
                            int32_t row_stride, int32_t style) {
  extern __shared__ float cos_sin[];  // [2, half]
  const int32_t half = rotary_dim / 2;
  const int64_t t = blockIdx.x;
  const int32_t position = positions[t];
  for (int32_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float theta = (float)position * inv_freq[i];
    cos_sin[i] = cosf(theta);
    cos_sin[half + i] = sinf(theta);
  }
  __syncthreads();
  float* row = x + t * row_stride;
  const int32_t items = num_heads * half;
  for (int32_t item = threadIdx.x; item < items; item += blockDim.x) {
    const int32_t h = item / half, i = item % half;
    float* xh = row + (int64_t)h * head_dim;
    const int32_t ia = style == DL_ROPE_NEOX ? i : 2 * i;
    const int32_t ib = style == DL_ROPE_NEOX ? i + half : 2 * i + 1;
    const float a = xh[ia], b = xh[ib];
    const float c = cos_sin[i], s = cos_sin[half + i];
    xh[ia] = a * c - b * s;
    xh[ib] = b * c + a * s;
  }
}

// --- Launcher

extern "C" int32_t dl_rope(dl_context* ctx, float* x, const int32_t* positions,
                           const float* inv_freq, int32_t num_tokens, int32_t num_heads,
                           int32_t head_dim, int32_t rotary_dim, int32_t row_stride,
                           int32_t style) {
  const char* fn = "dl_rope";
  DL_TRY(dl_validate_rope(fn, ctx, x, positions, inv_freq, num_tokens, num_heads, head_dim,
                          rotary_dim, row_stride, style));
  if (num_tokens == 0) return DL_OK;
  const size_t smem = (size_t)rotary_dim * sizeof(float);
  if (smem > 48 * 1024) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: rotary_dim %d is larger than this build supports",
                   fn, rotary_dim);
  }
  const int64_t items = (int64_t)num_heads * (rotary_dim / 2);
  const int threads = items >= 256 ? 256 : (int)((items + 31) / 32 * 32);
  rope_kernel<<<num_tokens, threads, smem, ctx->stream>>>(x, positions, inv_freq, num_heads,
                                                          head_dim, rotary_dim, row_stride, style);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
