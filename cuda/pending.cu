// Kernels of the ABI that the CUDA build does not implement yet (the CUDA issue fills them):
// each answers DL_ERR_NOT_IMPLEMENTED so the engine reports it instead of computing garbage.
#include "common.cuh"

#define DL_PENDING(name, ...)                                                              \
  extern "C" int32_t name(__VA_ARGS__) {                                                   \
    return dl_fail(DL_ERR_NOT_IMPLEMENTED, #name " is not implemented in the CUDA build yet"); \
  }

DL_PENDING(dl_convert, dl_context*, void*, int32_t, const void*, int32_t, uint64_t)
DL_PENDING(dl_embedding, dl_context*, float*, const void*, int32_t, const int32_t*, int32_t,
           int32_t, int32_t)
DL_PENDING(dl_rmsnorm, dl_context*, float*, const float*, const float*, int32_t, int32_t, float)
DL_PENDING(dl_matmul, dl_context*, float*, const float*, const void*, int32_t, const float*,
           int32_t, int32_t, int32_t)
DL_PENDING(dl_rope, dl_context*, float*, const int32_t*, const float*, int32_t, int32_t, int32_t,
           int32_t, int32_t, int32_t)
DL_PENDING(dl_silu_mul, dl_context*, float*, const float*, int32_t, int32_t)
DL_PENDING(dl_add, dl_context*, float*, const float*, const float*, uint64_t)
DL_PENDING(dl_gather_rows, dl_context*, float*, const float*, const int32_t*, int32_t, int32_t,
           int32_t)
DL_PENDING(dl_kv_write, dl_context*, void*, void*, int32_t, const float*, const float*,
           const int32_t*, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t)
DL_PENDING(dl_paged_attention, dl_context*, float*, const float*, const void*, const void*,
           int32_t, const int32_t*, const int32_t*, const int32_t*, int32_t, int32_t, int32_t,
           int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, float)
DL_PENDING(dl_copy_blocks, dl_context*, void*, const int32_t*, int32_t, uint64_t, int32_t)
