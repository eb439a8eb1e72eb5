// Shared helpers of the CUDA build: the context, error recording and argument checks at the ABI
// boundary (the same checks and messages as cpu/common.h, minus those that would read device memory).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "../ffi/denollm.h"

// Records a formatted message for dl_last_error() on this thread and returns `status`.
int32_t dl_fail(int32_t status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Turns a CUDA error into DL_ERR_DEVICE with file, line and CUDA's own error string.
#define DL_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) {                                                           \
      return dl_fail(DL_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,          \
                     cudaGetErrorString(err_));                                          \
    }                                                                                    \
  } while (0)

// Evaluates a check and returns its status from the enclosing function when it fails.
#define DL_TRY(expr)                            \
  do {                                          \
    int32_t dl_status_ = (expr);                \
    if (dl_status_ != DL_OK) return dl_status_; \
  } while (0)

struct dl_context {
  int device;
  cudaStream_t stream;
  // Grow-only device scratch for kernels that need a workspace (split attention partials).
  void* scratch;
  size_t scratch_bytes;
  // Opt-in shared memory per block of this device (bytes).
  int max_smem_optin;
};

// A device workspace of at least `bytes` on ctx, valid until the next call. Growing it waits for
// the stream, so kernels still reading the old buffer finish first.
int32_t dl_scratch(dl_context* ctx, size_t bytes, void** out);

// --- Argument checks: each returns DL_OK or fails with a message naming the argument.

inline int32_t dl_check_ctx(const char* fn, const dl_context* ctx) {
  if (ctx == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a context, found NULL", fn);
  }
  return DL_OK;
}

inline int32_t dl_check_ptr(const char* fn, const char* name, const void* p) {
  if (p == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be non-NULL, found NULL", fn, name);
  }
  return DL_OK;
}

inline int32_t dl_check_positive(const char* fn, const char* name, int64_t v) {
  if (v <= 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s > 0, found %lld", fn, name,
                   (long long)v);
  }
  return DL_OK;
}

inline int32_t dl_check_non_negative(const char* fn, const char* name, int64_t v) {
  if (v < 0) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s >= 0, found %lld", fn, name,
                   (long long)v);
  }
  return DL_OK;
}

inline int32_t dl_check_dtype(const char* fn, const char* name, int32_t dtype) {
  if (dtype != DL_DTYPE_F32 && dtype != DL_DTYPE_F16 && dtype != DL_DTYPE_BF16) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT,
                   "%s: expected %s to be a dl_dtype (0 f32, 1 f16, 2 bf16), found %d", fn, name,
                   dtype);
  }
  return DL_OK;
}

inline size_t dl_dtype_size(int32_t dtype) { return dtype == DL_DTYPE_F32 ? 4 : 2; }

inline bool dl_is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for a grid-stride loop over n items: enough to fill the GPU, within gridDim.x's limit.
inline unsigned dl_grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return (unsigned)(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}
