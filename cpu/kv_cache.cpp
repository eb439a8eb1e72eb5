// Writes new tokens' K and V heads into the paged KV cache, converting to the cache dtype.
#include <cstring>

#include "common.h"
#include "kv_cache.h"

// --- Kernel

template <class T, void (*Store)(T*, float)>
static void kv_write_typed(const dl_context* ctx, T* k_cache, T* v_cache, const float* k, const float* v,
                           const int32_t* slot_mapping, int32_t num_tokens, int32_t num_kv_heads, int32_t head_dim,
                           int32_t row_stride, int32_t block_size) {
  const int64_t work = (int64_t)num_tokens * num_kv_heads * head_dim * 2;
#pragma omp parallel for num_threads(dl_threads_for(ctx, work)) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    const int32_t slot = slot_mapping[t];
    if (slot < 0) continue;  // padding token
    dl_kv_write_token<T, Store>(k_cache, v_cache, k + (int64_t)t * row_stride, v + (int64_t)t * row_stride, slot,
                                num_kv_heads, head_dim, block_size);
  }
}

int32_t dl_kv_check_slots(const char* fn, const int32_t* slot_mapping, int32_t num_tokens, int64_t num_slots) {
  for (int32_t t = 0; t < num_tokens; t++) {
    if (slot_mapping[t] >= num_slots) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT,
                     "%s: expected slot_mapping[%d] < num_blocks * block_size (%lld) or negative, found %d", fn, t,
                     (long long)num_slots, slot_mapping[t]);
    }
  }
  return DL_OK;
}

// --- Launcher

extern "C" DL_API int32_t dl_kv_write(dl_context* ctx, void* k_cache, void* v_cache, int32_t cache_dtype,
                                      const float* k, const float* v, const int32_t* slot_mapping,
                                      int32_t num_tokens, int32_t num_kv_heads, int32_t head_dim,
                                      int32_t row_stride, int32_t block_size, int32_t num_blocks) {
  const char* fn = "dl_kv_write";
  DL_TRY(dl_validate_kv_write(fn, ctx, k_cache, v_cache, cache_dtype, k, v, slot_mapping, num_tokens, num_kv_heads,
                              head_dim, row_stride, block_size, num_blocks));
  if (num_tokens == 0) return DL_OK;
  const int64_t num_slots = (int64_t)num_blocks * block_size;
  DL_TRY(dl_kv_check_slots(fn, slot_mapping, num_tokens, num_slots));
  if (cache_dtype == DL_DTYPE_F32) {
    kv_write_typed<float, dl_kv_store_f32>(ctx, static_cast<float*>(k_cache), static_cast<float*>(v_cache), k, v,
                                           slot_mapping, num_tokens, num_kv_heads, head_dim, row_stride, block_size);
  } else if (cache_dtype == DL_DTYPE_F16) {
    kv_write_typed<uint16_t, dl_kv_store_f16>(ctx, static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                              k, v, slot_mapping, num_tokens, num_kv_heads, head_dim, row_stride,
                                              block_size);
  } else {
    kv_write_typed<uint16_t, dl_kv_store_bf16>(ctx, static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                               k, v, slot_mapping, num_tokens, num_kv_heads, head_dim, row_stride,
                                               block_size);
  }
  return DL_OK;
}

// --- Block copy (copy-on-write)

extern "C" DL_API int32_t dl_copy_blocks(dl_context* ctx, void* cache, const int32_t* pairs, int32_t num_pairs,
                                         uint64_t block_bytes, int32_t num_blocks) {
  const char* fn = "dl_copy_blocks";
  DL_TRY(dl_validate_copy_blocks(fn, ctx, cache, pairs, num_pairs, block_bytes, num_blocks));
  if (num_pairs == 0) return DL_OK;
  for (int32_t i = 0; i < 2 * num_pairs; i++) {
    if (pairs[i] < 0 || pairs[i] >= num_blocks) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected block ids in [0, %d), found %d at pair %d", fn,
                     num_blocks, pairs[i], i / 2);
    }
  }
  for (int32_t i = 0; i < num_pairs; i++) {
    if (pairs[2 * i] == pairs[2 * i + 1]) {
      return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: pair %d copies block %d onto itself", fn, i, pairs[2 * i]);
    }
  }
  char* base = static_cast<char*>(cache);
  const int64_t work = (int64_t)num_pairs * (int64_t)block_bytes / 4;
#pragma omp parallel for num_threads(dl_threads_for(ctx, work)) schedule(static)
  for (int32_t i = 0; i < num_pairs; i++) {
    std::memcpy(base + (uint64_t)pairs[2 * i + 1] * block_bytes, base + (uint64_t)pairs[2 * i] * block_bytes,
                block_bytes);
  }
  return DL_OK;
}
