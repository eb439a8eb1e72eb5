// The paged KV write of one token, shared by dl_kv_write (cpu/kv_cache.cpp) and dl_rope_kv_write
// (cpu/rope_kv_write.cpp).
#pragma once

#include <cstdint>

#include "dl_half.h"

inline void dl_kv_store_f32(float* dst, float v) { *dst = v; }
inline void dl_kv_store_f16(uint16_t* dst, float v) { *dst = dl_f32_to_f16(v); }
inline void dl_kv_store_bf16(uint16_t* dst, float v) { *dst = dl_f32_to_bf16(v); }

// Token's K and V heads (k_src, v_src: num_kv_heads * head_dim floats each) into the cache at
// `slot` >= 0, converted by Store.
template <class T, void (*Store)(T*, float)>
inline void dl_kv_write_token(T* k_cache, T* v_cache, const float* k_src, const float* v_src, int32_t slot,
                              int32_t num_kv_heads, int32_t head_dim, int32_t block_size) {
  const int64_t block = slot / block_size, offset = slot % block_size;
  for (int32_t h = 0; h < num_kv_heads; h++) {
    // [num_blocks, num_kv_heads, block_size, head_dim] -> [head_dim] at (block, h, offset)
    const int64_t dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim;
    const float* k = k_src + (int64_t)h * head_dim;
    const float* v = v_src + (int64_t)h * head_dim;
    for (int32_t i = 0; i < head_dim; i++) {
      Store(k_cache + dst + i, k[i]);
      Store(v_cache + dst + i, v[i]);
    }
  }
}

// Fails unless every slot_mapping[t] is negative or below num_slots (the CPU build reads the
// metadata on the host and writes nothing on a bad value).
int32_t dl_kv_check_slots(const char* fn, const int32_t* slot_mapping, int32_t num_tokens, int64_t num_slots);
