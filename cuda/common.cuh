// Shared helpers of the CUDA build: error recording and argument checks at the ABI boundary.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>

#include "../ffi/denollm.h"

// Records a formatted message for dl_last_error() on this thread and returns `status`.
int32_t dl_fail(int32_t status, const char* fmt, ...);

// Turns a CUDA error into DL_ERR_DEVICE with file, line and CUDA's own error string.
#define DL_CUDA_CHECK(call)                                                              \
  do {                                                                                   \
    cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) {                                                           \
      return dl_fail(DL_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,          \
                     cudaGetErrorString(err_));                                          \
    }                                                                                    \
  } while (0)

struct dl_context {
  int device;
  cudaStream_t stream;
};
