// Rotary position embedding, in place, NEOX (rotate_half) or interleaved pairs.
#include "common.cuh"
#include "rope.cuh"

// --- Kernels

// One block per token: cos/sin computed once into shared memory [2, rotary_dim / 2] and shared by
// the token's heads (cuda/rope.cuh).
__global__ void rope_kernel(float* x,                               // [T, row_stride]
                            const int32_t* __restrict__ positions,  // [T]
                            const float* __restrict__ inv_freq,     // [rotary_dim / 2]
                            int32_t num_heads, int32_t head_dim, int32_t rotary_dim,
                            int32_t row_stride, int32_t style) {
  extern __shared__ float cos_sin[];  // [2, half]
  const int32_t half = rotary_dim / 2;
  const int64_t t = blockIdx.x;
  dl_rope_cos_sin(cos_sin, positions[t], inv_freq, half);
  __syncthreads();
  dl_rope_heads(x + t * row_stride, cos_sin, num_heads, head_dim, half, style);
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
  const int threads = dl_rope_threads((int64_t)num_heads * (rotary_dim / 2));
  rope_kernel<<<num_tokens, threads, smem, ctx->stream>>>(x, positions, inv_freq, num_heads,
                                                          head_dim, rotary_dim, row_stride, style);
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
