// The paged KV write of one token, shared by dl_kv_write (cuda/kv_cache.cu) and dl_rope_kv_write
// (cuda/rope_kv_write.cu).
#pragma once

#include "common.cuh"
#include "half.cuh"

// Token t's num_kv_heads * head_dim K and V values (k_row, v_row), rounded to the cache dtype, at
// (block, head, offset) of `slot`, by the block's threads. A negative slot is padding; a slot past
// the cache (which the host cannot check, the mapping being device memory) is skipped too, so
// nothing is written out of bounds, and reported (dl_bad_report) as `bad_kind`.
template <int DT>
__device__ __forceinline__ void dl_kv_write_token(typename Dtype<DT>::T* __restrict__ k_cache,
                                                  typename Dtype<DT>::T* __restrict__ v_cache,
                                                  const float* k_row, const float* v_row,
                                                  int32_t slot, int64_t t, int32_t num_kv_heads,
                                                  int32_t head_dim, int32_t block_size,
                                                  int64_t num_slots, unsigned long long* bad,
                                                  unsigned bad_kind) {
  if (slot < 0) return;  // padding
  if (slot >= num_slots) {
    if (threadIdx.x == 0) dl_bad_report(bad, bad_kind, t, slot);
    return;
  }
  const int64_t block = slot / block_size, offset = slot % block_size;
  const int32_t items = num_kv_heads * head_dim;
  for (int32_t item = threadIdx.x; item < items; item += blockDim.x) {
    const int32_t h = item / head_dim, d = item % head_dim;
    // [num_blocks, num_kv_heads, block_size, head_dim] at (block, h, offset, d)
    const int64_t dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim + d;
    k_cache[dst] = Dtype<DT>::store(k_row[item]);
    v_cache[dst] = Dtype<DT>::store(v_row[item]);
  }
}
