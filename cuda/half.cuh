// Device f16 / bf16 <-> f32 conversions, bit for bit the same as cpu/half.h (round to nearest even,
// NaNs quieted with their payload), and dtype traits for kernels templated on the storage type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common.cuh"

// --- f16

// Exact for every input, like cpu/half.h: normals rebias the exponent, subnormals go through a
// magic-number subtraction, Inf/NaN keep their payload.
__device__ __forceinline__ float dl_f16_to_f32(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = __uint_as_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = __uint_as_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      two_w < (1u << 27) ? __float_as_uint(denormalized) : __float_as_uint(normalized);
  return __uint_as_float(sign | magnitude);
}

__device__ __forceinline__ uint16_t dl_f32_to_f16(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 and Inf
  if (ax >= 0x38800000u) {                                    // normal f16
    uint32_t r = ax - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
  }
  if (ax < 0x33000000u) return sign;  // below 2^-25: rounds to zero
  const uint32_t e = ax >> 23;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

// --- bf16

__device__ __forceinline__ float dl_bf16_to_f32(uint16_t h) {
  return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ uint16_t dl_f32_to_bf16(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // NaN, quieted
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

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
