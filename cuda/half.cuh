// Dtype traits for CUDA kernels templated on the storage type, over the f16 / bf16 conversions that
// the CPU build shares (native/dl_half.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common.cuh"
#include "dl_half.h"

// --- Dtype traits: Dtype<DL_DTYPE_X>::T is the storage type; load/store widen and round.

template <int DT>
struct Dtype;

template <>
struct Dtype<DL_DTYPE_F32> {
  using T = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Dtype<DL_DTYPE_F16> {
  using T = uint16_t;
  // The hardware conversion: equal to dl_f16_to_f32 for every non-NaN input.
  static __device__ __forceinline__ float load(uint16_t v) {
    return __half2float(__ushort_as_half(v));
  }
  static __device__ __forceinline__ uint16_t store(float v) { return dl_f32_to_f16(v); }
};

template <>
struct Dtype<DL_DTYPE_BF16> {
  using T = uint16_t;
  static __device__ __forceinline__ float load(uint16_t v) { return dl_bf16_to_f32(v); }
  static __device__ __forceinline__ uint16_t store(float v) { return dl_f32_to_bf16(v); }
};

// Widens the 16 bytes of a 128-bit load to 16 / sizeof(T) floats.
template <int DT>
__device__ __forceinline__ void dl_unpack16(const uint4& raw, float* out) {
  if constexpr (DT == DL_DTYPE_F32) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  } else {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      out[2 * i] = Dtype<DT>::load((uint16_t)(words[i] & 0xffffu));
      out[2 * i + 1] = Dtype<DT>::load((uint16_t)(words[i] >> 16));
    }
  }
}
