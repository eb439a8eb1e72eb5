// RoPE on the Q and K heads of fused QKV rows and the paged KV write of K and V, in one pass.
#include "common.h"
#include "kv_cache.h"
#include "rope.h"

// --- Kernel

// Per token (a thread's share): dl_rope's rotation of its Q and K heads in place, then
// dl_kv_write's store of the rotated K and V, while the row is still in cache.
template <class T, void (*Store)(T*, float)>
static void rope_kv_write_typed(float* scratch, float* qkv, const int32_t* positions,
                                const float* inv_freq, T* k_cache, T* v_cache, const int32_t* slot_mapping,
                                int32_t num_tokens, int32_t num_heads, int32_t num_kv_heads, int32_t head_dim,
                                int32_t rotary_dim, int32_t row_stride, int32_t style, int32_t block_size,
                                int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int32_t t = 0; t < num_tokens; t++) {
    float* row = qkv + (int64_t)t * row_stride;
    dl_rope_token(row, positions[t], inv_freq, num_heads + num_kv_heads, head_dim, rotary_dim, style,
                  scratch + (size_t)dl_thread_id() * rotary_dim);
    const int32_t slot = slot_mapping[t];
    if (slot < 0) continue;  // padding token
    const float* k = row + (int64_t)num_heads * head_dim;
    dl_kv_write_token<T, Store>(k_cache, v_cache, k, k + (int64_t)num_kv_heads * head_dim, slot, num_kv_heads,
                                head_dim, block_size);
  }
}

// --- Launcher

extern "C" DL_API int32_t dl_rope_kv_write(dl_context* ctx, float* qkv, const int32_t* positions,
                                           const float* inv_freq, void* k_cache, void* v_cache, int32_t cache_dtype,
                                           const int32_t* slot_mapping, int32_t num_tokens, int32_t num_heads,
                                           int32_t num_kv_heads, int32_t head_dim, int32_t rotary_dim,
                                           int32_t row_stride, int32_t style, int32_t block_size,
                                           int32_t num_blocks) {
  return dl_guard("dl_rope_kv_write", [&]() -> int32_t {
    const char* fn = "dl_rope_kv_write";
    DL_TRY(dl_validate_rope_kv_write(fn, ctx, qkv, positions, inv_freq, k_cache, v_cache, cache_dtype, slot_mapping,
                                     num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim, row_stride, style,
                                     block_size, num_blocks));
    if (num_tokens == 0) return DL_OK;
    // Bad slots fail the call before anything is rotated or written, as dl_kv_write does.
    DL_TRY(dl_kv_check_slots(fn, slot_mapping, num_tokens, (int64_t)num_blocks * block_size));
    const int64_t work = (int64_t)num_tokens * ((int64_t)(num_heads + num_kv_heads) * rotary_dim * 8 +
                                                (int64_t)num_kv_heads * head_dim * 2);
    const int threads = dl_threads_for(ctx, work);
    void* workspace = nullptr;
    DL_TRY(dl_workspace(fn, ctx, dl_rope_workspace_bytes(threads, rotary_dim), &workspace));
    float* scratch = static_cast<float*>(workspace);  // [threads, rotary_dim]
    if (cache_dtype == DL_DTYPE_F32) {
      rope_kv_write_typed<float, dl_kv_store_f32>(scratch, qkv, positions, inv_freq,
                                                  static_cast<float*>(k_cache), static_cast<float*>(v_cache),
                                                  slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                                  rotary_dim, row_stride, style, block_size, threads);
    } else if (cache_dtype == DL_DTYPE_F16) {
      rope_kv_write_typed<uint16_t, dl_kv_store_f16>(scratch, qkv, positions, inv_freq,
                                                     static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                                     slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                                     rotary_dim, row_stride, style, block_size, threads);
    } else {
      rope_kv_write_typed<uint16_t, dl_kv_store_bf16>(scratch, qkv, positions, inv_freq,
                                                      static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                                      slot_mapping, num_tokens, num_heads, num_kv_heads, head_dim,
                                                      rotary_dim, row_stride, style, block_size, threads);
    }
    return DL_OK;
  });
}
