// RoPE steps shared by dl_rope (cuda/rope.cu) and dl_rope_kv_write (cuda/rope_kv_write.cu), so both
// rotate with the same operations and give the same bits.
#pragma once

#include <cmath>

#include "common.cuh"

// cos_sin [2, half] of one token, by the block's threads: the angle is position * inv_freq[i]
// rounded to f32 and cos/sin are f32 (cosf/sinf, not the fast intrinsics), as in the CPU build.
// The caller syncs before reading.
__device__ __forceinline__ void dl_rope_cos_sin(float* cos_sin, int32_t position,
                                                const float* __restrict__ inv_freq, int32_t half) {
  for (int32_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float theta = (float)position * inv_freq[i];
    cos_sin[i] = cosf(theta);
    cos_sin[half + i] = sinf(theta);
  }
}

// Rotates the first num_heads heads of one row in place, by the block's threads: index i < half of
// head h rotates the pair (i, i + half) for NEOX or (2i, 2i + 1) for interleaved. Each product and
// sum is rounded on its own (the _rn intrinsics are never contracted into an FMA), as in the CPU
// build, whatever nvcc's --fmad.
__device__ __forceinline__ void dl_rope_heads(float* row, const float* cos_sin, int32_t num_heads,
                                              int32_t head_dim, int32_t half, int32_t style) {
  const int32_t items = num_heads * half;
  for (int32_t item = threadIdx.x; item < items; item += blockDim.x) {
    const int32_t h = item / half, i = item % half;
    float* xh = row + (int64_t)h * head_dim;
    const int32_t ia = style == DL_ROPE_NEOX ? i : 2 * i;
    const int32_t ib = style == DL_ROPE_NEOX ? i + half : 2 * i + 1;
    const float a = xh[ia], b = xh[ib];
    const float c = cos_sin[i], s = cos_sin[half + i];
    xh[ia] = __fadd_rn(__fmul_rn(a, c), -__fmul_rn(b, s));
    xh[ib] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  }
}

// Threads per block for a row of `items` pair rotations: a multiple of 32, at most 256.
inline int dl_rope_threads(int64_t items) {
  return items >= 256 ? 256 : (int)((items + 31) / 32 * 32);
}
