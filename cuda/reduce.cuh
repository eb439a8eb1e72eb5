// Warp- and block-level reductions with shuffles, shared by the normalization and attention kernels.
#pragma once

#include <cuda_runtime.h>

constexpr unsigned DL_FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float dl_warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(DL_FULL_MASK, v, offset);
  return v;
}

__device__ __forceinline__ float dl_warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(DL_FULL_MASK, v, offset));
  }
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `shared` holds 32 floats; the block must not use it concurrently for anything else.
__device__ __forceinline__ float dl_block_sum(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int num_warps = blockDim.x / 32;
  v = dl_warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < num_warps ? shared[lane] : 0.0f;
  v = dl_warp_sum(v);
  __syncthreads();  // `shared` may be reused right after
  return v;
}
