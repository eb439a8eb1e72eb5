// Argument checks at the ABI boundary, shared by the CPU and CUDA builds (each defines dl_fail).
#pragma once

#include <cstddef>
#include <cstdint>

#include "denollm.h"
#include "dl_dtype.h"

// Records a printf-style message as this thread's last error and returns `status`.
int32_t dl_fail(int32_t status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Evaluates a check and returns its status from the enclosing function when it fails.
#define DL_TRY(expr)                            \
  do {                                          \
    int32_t dl_status_ = (expr);                \
    if (dl_status_ != DL_OK) return dl_status_; \
  } while (0)

// --- Each returns DL_OK or fails with DL_ERR_INVALID_ARGUMENT and a message naming the argument.

inline int32_t dl_check_ctx(const char* fn, const dl_context* ctx) {
  if (ctx == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected a context, found NULL", fn);
  return DL_OK;
}

inline int32_t dl_check_ptr(const char* fn, const char* name, const void* p) {
  if (p == nullptr) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be non-NULL, found NULL", fn, name);
  return DL_OK;
}

inline int32_t dl_check_positive(const char* fn, const char* name, int64_t v) {
  if (v <= 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s > 0, found %lld", fn, name, (long long)v);
  return DL_OK;
}

inline int32_t dl_check_non_negative(const char* fn, const char* name, int64_t v) {
  if (v < 0) return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s >= 0, found %lld", fn, name, (long long)v);
  return DL_OK;
}

// A dtype id of DL_DTYPE_TABLE (DL_ERR_INVALID_ARGUMENT otherwise) that this kernel family has
// kernels for (`supported`, a bit set of dtype ids; DL_ERR_UNSUPPORTED naming the format otherwise).
inline int32_t dl_check_dtype(const char* fn, const char* name, int32_t dtype, uint32_t supported) {
  const dl_dtype_info* info = dl_dtype_find(dtype);
  if (info == nullptr) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: expected %s to be a dl_dtype in [0, %d), found %d", fn, name,
                   DL_DTYPE_COUNT, dtype);
  }
  if ((supported & dl_dtype_bit(dtype)) == 0) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: %s %s (%d) has no kernel in this build", fn, name, info->name, dtype);
  }
  return DL_OK;
}

// Guards the int64 element counts that both builds index with.
inline int32_t dl_check_num_elements(const char* fn, uint64_t num_elements) {
  if (num_elements > (uint64_t)INT64_MAX / 4) {
    return dl_fail(DL_ERR_INVALID_ARGUMENT, "%s: num_elements %llu is too large", fn,
                   (unsigned long long)num_elements);
  }
  return DL_OK;
}
