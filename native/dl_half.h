// Exact scalar f16 / bf16 <-> f32 bit conversions (round to nearest even, NaNs quieted with their
// payload), shared by the CPU build and CUDA device code.
#pragma once

#include <cstdint>
#include <cstring>

// Host and device under nvcc, plain inline functions under a host compiler.
#ifdef __CUDACC__
#define DL_HD __host__ __device__ __forceinline__
#else
#define DL_HD inline
#endif

DL_HD uint32_t dl_f32_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

DL_HD float dl_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// --- f16

// Branch-free so `#pragma omp simd` loops vectorize it. Exact for every input: normals rebias the
// exponent, subnormals go through a magic-number subtraction, Inf/NaN keep their payload.
DL_HD float dl_f16_to_f32(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = dl_bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = dl_bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? dl_f32_bits(denormalized) : dl_f32_bits(normalized);
  return dl_bits_f32(sign | magnitude);
}

DL_HD uint16_t dl_f32_to_f16(float f) {
  const uint32_t x = dl_f32_bits(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN, quieted
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 (halfway to 2^16) and Inf
  if (ax >= 0x38800000u) {                                    // normal f16: rebias 127 -> 15
    uint32_t r = ax - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);  // round 23 -> 10 mantissa bits, ties to even
    return (uint16_t)(sign | (r >> 13));
  }
  if (ax < 0x33000000u) return sign;  // below 2^-25: rounds to zero
  // Subnormal f16: count units of 2^-24, rounding the shifted-out bits to even.
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

DL_HD float dl_bf16_to_f32(uint16_t h) { return dl_bits_f32((uint32_t)h << 16); }

DL_HD uint16_t dl_f32_to_bf16(float f) {
  const uint32_t x = dl_f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // NaN, quieted
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // ties to even; overflow gives Inf
}

// --- Typed loads, for kernels templated on the storage type

DL_HD float dl_load_f32(const float* p, int64_t i) { return p[i]; }
DL_HD float dl_load_f16(const uint16_t* p, int64_t i) { return dl_f16_to_f32(p[i]); }
DL_HD float dl_load_bf16(const uint16_t* p, int64_t i) { return dl_bf16_to_f32(p[i]); }
