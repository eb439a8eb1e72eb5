// Paged KV cache writes (new tokens' K and V heads at their slots) and whole-block copies.
#include "common.cuh"
#include "half.cuh"
#include "kv_cache.cuh"

// --- Kernels

// One block per token (cuda/kv_cache.cuh).
template <int DT>
__global__ void kv_write_kernel(typename Dtype<DT>::T* __restrict__ k_cache,
                                typename Dtype<DT>::T* __restrict__ v_cache,
                                const float* __restrict__ k,  // [T, row_stride]
                                const float* __restrict__ v,  // [T, row_stride]
                                const int32_t* __restrict__ slot_mapping, int32_t num_kv_heads,
                                int32_t head_dim, int32_t row_stride, int32_t block_size,
                                int64_t num_slots, unsigned long long* bad) {
  const int64_t t = blockIdx.x;
  dl_kv_write_token<DT>(k_cache, v_cache, k + t * row_stride, v + t * row_stride, slot_mapping[t],
                        t, num_kv_heads, head_dim, block_size, num_slots, bad, DL_BAD_SLOT);
}

// One block per pair copies block_bytes from the source block to the destination block, 16 bytes
// at a time when VEC (block_bytes and the cache 16-byte aligned), else byte by byte. Pairs with an
// id outside [0, num_blocks) or a block copied onto itself are skipped and reported.
template <bool VEC>
__global__ void copy_blocks_kernel(char* cache, const int32_t* __restrict__ pairs,
                                   uint64_t block_bytes, int32_t num_blocks,
                                   unsigned long long* bad) {
  const int32_t src = pairs[2 * blockIdx.x], dst = pairs[2 * blockIdx.x + 1];
  if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks || src == dst) {
    if (threadIdx.x == 0) {
      if (src < 0 || src >= num_blocks) dl_bad_report(bad, DL_BAD_COPY_PAIR, 2 * blockIdx.x, src);
      else if (dst < 0 || dst >= num_blocks) dl_bad_report(bad, DL_BAD_COPY_PAIR, 2 * blockIdx.x + 1, dst);
      else dl_bad_report(bad, DL_BAD_SELF_COPY, blockIdx.x, src);
    }
    return;
  }
  const char* from = cache + (uint64_t)src * block_bytes;
  char* to = cache + (uint64_t)dst * block_bytes;
  if constexpr (VEC) {
    const uint64_t n = block_bytes / 16;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
      reinterpret_cast<uint4*>(to)[i] = reinterpret_cast<const uint4*>(from)[i];
    }
  } else {
    for (uint64_t i = threadIdx.x; i < block_bytes; i += blockDim.x) to[i] = from[i];
  }
}

// --- Launchers

template <int DT>
static void launch_kv_write(cudaStream_t s, unsigned long long* bad, void* k_cache, void* v_cache, const float* k,
                            const float* v, const int32_t* slot_mapping, int32_t num_tokens,
                            int32_t num_kv_heads, int32_t head_dim, int32_t row_stride,
                            int32_t block_size, int64_t num_slots) {
  using T = typename Dtype<DT>::T;
  const int32_t items = num_kv_heads * head_dim;
  const int threads = items >= 256 ? 256 : (items + 31) / 32 * 32;
  kv_write_kernel<DT><<<num_tokens, threads, 0, s>>>(
      static_cast<T*>(k_cache), static_cast<T*>(v_cache), k, v, slot_mapping, num_kv_heads,
      head_dim, row_stride, block_size, num_slots, bad);
}

extern "C" int32_t dl_kv_write(dl_context* ctx, void* k_cache, void* v_cache, int32_t cache_dtype,
                               const float* k, const float* v, const int32_t* slot_mapping,
                               int32_t num_tokens, int32_t num_kv_heads, int32_t head_dim,
                               int32_t row_stride, int32_t block_size, int32_t num_blocks) {
  const char* fn = "dl_kv_write";
  DL_TRY(dl_validate_kv_write(fn, ctx, k_cache, v_cache, cache_dtype, k, v, slot_mapping,
                              num_tokens, num_kv_heads, head_dim, row_stride, block_size,
                              num_blocks));
  if (num_tokens == 0) return DL_OK;
  const int64_t num_slots = (int64_t)num_blocks * block_size;
  cudaStream_t s = ctx->stream;
  if (cache_dtype == DL_DTYPE_F32) {
    launch_kv_write<DL_DTYPE_F32>(s, ctx->bad_metadata, k_cache, v_cache, k, v, slot_mapping, num_tokens,
                                  num_kv_heads, head_dim, row_stride, block_size, num_slots);
  } else if (cache_dtype == DL_DTYPE_F16) {
    launch_kv_write<DL_DTYPE_F16>(s, ctx->bad_metadata, k_cache, v_cache, k, v, slot_mapping, num_tokens,
                                  num_kv_heads, head_dim, row_stride, block_size, num_slots);
  } else {
    launch_kv_write<DL_DTYPE_BF16>(s, ctx->bad_metadata, k_cache, v_cache, k, v, slot_mapping, num_tokens,
                                   num_kv_heads, head_dim, row_stride, block_size, num_slots);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}

extern "C" int32_t dl_copy_blocks(dl_context* ctx, void* cache, const int32_t* pairs,
                                  int32_t num_pairs, uint64_t block_bytes, int32_t num_blocks) {
  const char* fn = "dl_copy_blocks";
  DL_TRY(dl_validate_copy_blocks(fn, ctx, cache, pairs, num_pairs, block_bytes, num_blocks));
  if (num_pairs == 0) return DL_OK;
  constexpr int threads = 256;
  char* base = static_cast<char*>(cache);
  if (block_bytes % 16 == 0 && dl_is_aligned(cache, 16)) {
    copy_blocks_kernel<true><<<num_pairs, threads, 0, ctx->stream>>>(base, pairs, block_bytes,
                                                                     num_blocks, ctx->bad_metadata);
  } else {
    copy_blocks_kernel<false><<<num_pairs, threads, 0, ctx->stream>>>(base, pairs, block_bytes,
                                                                      num_blocks, ctx->bad_metadata);
  }
  DL_CUDA_CHECK(cudaGetLastError());
  return DL_OK;
}
