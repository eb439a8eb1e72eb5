// RoPE on the Q and K heads of fused QKV rows and the paged KV write of K and V, in one launch.
#include "common.cuh"
#include "half.cuh"
#include "kv_cache.cuh"
#include "rope.cuh"

// --- Kernel

// One block per token: dl_rope's steps on its num_heads + num_kv_heads Q and K heads, a barrier
// (the rotated K of every thread), then dl_kv_write's step on K and V. The same device functions
// as rope_kernel and kv_write_kernel, so the same bits.
template <int DT>
__global__ void rope_kv_write_kernel(float* qkv,                                  // [T, row_stride]
                                     const int32_t* __restrict__ positions,       // [T]
                                     const float* __restrict__ inv_freq,          // [rotary_dim / 2]
                                     typename Dtype<DT>::T* __restrict__ k_cache,
                                     typename Dtype<DT>::T* __restrict__ v_cache,
                                     const int32_t* __restrict__ slot_mapping,    // [T]
                                     int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
                                     int32_t rotary_dim, int32_t row_stride, int32_t style,
                                     int32_t block_size, int64_t num_slots,
                                     unsigned long long* bad) {
  extern __shared__ float cos_sin[];  // [2, half]
  const int32_t half = rotary_dim / 2;
  const int64_t t = blockIdx.x;
  float* row = qkv + t * row_stride;
  dl_rope_cos_sin(cos_sin, positions[t], inv_freq, half);
  __syncthreads();
  dl_rope_heads(row, cos_sin, num_heads + num_kv_heads, head_dim, half, style);
  __syncthreads();
  const float* k = row + (int64_t)num_heads * head_dim;
  dl_kv_write_token<DT>(k_cache, v_cache, k, k + (int64_t)num_kv_heads * head_dim, slot_mapping[t],
                        t, num_kv_heads, head_dim, block_size, num_slots, bad,
                        DL_BAD_ROPE_KV_SLOT);
}

// --- Launcher

template <int DT>
static void launch_rope_kv_write(dl_context* ctx, float* qkv, const int32_t* positions,
                                 const float* inv_freq, void* k_cache, void* v_cache,
                                 const int32_t* slot_mapping, int32_t num_tokens,
                                 int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
                                 int32_t rotary_dim, int32_t row_stride, int32_t style,
                                 int32_t block_size, int64_t num_slots) {
  using T = typename Dtype<DT>::T;
  const int64_t rope_items = (int64_t)(num_heads + num_kv_heads) * (rotary_dim / 2);
  const int64_t kv_items = (int64_t)num_kv_heads * head_dim;
  const int threads = dl_rope_threads(rope_items > kv_items ? rope_items : kv_items);
  const size_t smem = (size_t)rotary_dim * sizeof(float);
  rope_kv_write_kernel<DT><<<num_tokens, threads, smem, ctx->stream>>>(
      qkv, positions, inv_freq, static_cast<T*>(k_cache), static_cast<T*>(v_cache), slot_mapping,
      num_heads, num_kv_heads, head_dim, rotary_dim, row_stride, style, block_size, num_slots,
      ctx->bad_metadata);
}

extern "C" int32_t dl_rope_kv_write(dl_context* ctx, float* qkv, const int32_t* positions,
                                    const float* inv_freq, void* k_cache, void* v_cache,
                                    int32_t cache_dtype, const int32_t* slot_mapping,
                                    int32_t num_tokens, int32_t num_heads, int32_t num_kv_heads,
                                    int32_t head_dim, int32_t rotary_dim, int32_t row_stride,
                                    int32_t style, int32_t block_size, int32_t num_blocks) {
  const char* fn = "dl_rope_kv_write";
  DL_TRY(dl_validate_rope_kv_write(fn, ctx, qkv, positions, inv_freq, k_cache, v_cache, cache_dtype,
                                   slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                   rotary_dim, row_stride, style, block_size, num_blocks));
  if (num_tokens == 0) return DL_OK;
  if ((size_t)rotary_dim * sizeof(float) > 48 * 1024) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: rotary_dim %d is larger than this build supports",
                   fn, rotary_dim);
  }
  const int64_t num_slots = (int64_t)num_blocks * block_size;
  if (cache_dtype == DL_DTYPE_F32) {
    launch_rope_kv_write<DL_DTYPE_F32>(ctx, qkv, positions, inv_freq, k_cache, v_cache,
                                       slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                       rotary_dim, row_stride, style, block_size, num_slots);
  } else if (cache_dtype == DL_DTYPE_F16) {
    launch_rope_kv_write<DL_DTYPE_F16>(ctx, qkv, positions, inv_freq, k_cache, v_cache,
                                       slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                       rotary_dim, row_stride, style, block_size, num_slots);
  } else {
    launch_rope_kv_write<DL_DTYPE_BF16>(ctx, qkv, positions, inv_freq, k_cache, v_cache,
                                        slot_mapping, num_tokens, num_heads, num_kv_heads,
                                        head_dim, rotary_dim, row_stride, style, block_size,
                                        num_slots);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
