// Quantized weight rows on CUDA: per-format traits and a decoder of 32 consecutive elements of a
// row (a "chunk"), the unit the matmul kernels dequantize in registers.
//
// A chunk is one block of the legacy formats, a quarter of an INT4 group and an eighth of a K
// super-block. The legacy formats call native/dl_dequant.h's per-block functions; the others
// decode their eighth (quarter) with the same element order and the same expressions, operand for
// operand, so a chunk holds exactly the floats dl_dequantize writes (native/dl_dequant.h says why
// FMA contraction cannot change them). The weight-only 2:4 formats (F16_2_4, INT8_2_4, INT4_2_4)
// are chunks too: a block of 32 (a quarter of INT4_2_4's 128) read from its stored values and 2-bit
// positions only, the pruned elements placed as zeros in registers.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "dl_dequant.h"
#include "dl_dtype.h"
#include "dl_quant.h"

constexpr int DL_CHUNK = 32;  // elements per decoded chunk

// Elements and bytes of one block of DT, from the one table.
template <int DT>
struct QuantTraits {
  static constexpr int64_t BLOCK_LEN = DL_DTYPES[DT].block_len;
  static constexpr int64_t BLOCK_BYTES = DL_DTYPES[DT].block_bytes;
  static constexpr int CHUNKS_PER_BLOCK = DT == DL_DTYPE_INT8 ? 1 : (int)(BLOCK_LEN / DL_CHUNK);
};

// Bytes of one row of k elements, per-row data (INT8's scale) not included (host code).
inline int64_t dl_quant_row_bytes(int32_t dtype, int64_t k) {
  return k / DL_DTYPES[dtype].block_len * DL_DTYPES[dtype].block_bytes;
}

// An f32 at an address that may be only byte aligned (INT8's scales follow n * k bytes).
__device__ __forceinline__ float dl_load_f32_unaligned(const uint8_t* p) {
  return dl_bits_f32(dl_load_u32(p));
}

// One group of 4 of a 2:4 row: its two kept values v0, v1 at positions nib & 3 < nib >> 2, zeros
// elsewhere. Written as selects with constant indices so y stays in registers.
__device__ __forceinline__ void dl_place_2_4(float v0, float v1, int nib, float* y) {
  const int p0 = nib & 3, p1 = nib >> 2;
#pragma unroll
  for (int e = 0; e < 4; e++) y[e] = e == p0 ? v0 : (e == p1 ? v1 : 0.0f);
}

// Decodes chunk c (elements 32 c .. 32 c + 31) of a row of DT blocks into y. INT8 is decoded by
// dl_decode_int8_chunk (it has a per-row scale and k need not be a multiple of 32).
template <int DT>
__device__ __forceinline__ void dl_decode_chunk(const uint8_t* row, int64_t c, float* y) {
  using Q = QuantTraits<DT>;
  const uint8_t* block = row + (c / Q::CHUNKS_PER_BLOCK) * Q::BLOCK_BYTES;
  const int s = (int)(c % Q::CHUNKS_PER_BLOCK);  // which 32 of the block
  if constexpr (DT == DL_DTYPE_Q4_0) {
    dl_dequant_q4_0(reinterpret_cast<const dl_block_q4_0*>(block), y);
  } else if constexpr (DT == DL_DTYPE_Q4_1) {
    dl_dequant_q4_1(reinterpret_cast<const dl_block_q4_1*>(block), y);
  } else if constexpr (DT == DL_DTYPE_Q5_0) {
    dl_dequant_q5_0(reinterpret_cast<const dl_block_q5_0*>(block), y);
  } else if constexpr (DT == DL_DTYPE_Q5_1) {
    dl_dequant_q5_1(reinterpret_cast<const dl_block_q5_1*>(block), y);
  } else if constexpr (DT == DL_DTYPE_Q8_0) {
    dl_dequant_q8_0(reinterpret_cast<const dl_block_q8_0*>(block), y);
  } else if constexpr (DT == DL_DTYPE_Q2_K) {
    // Chunk s: half s / 4, 2-bit shift 2 (s % 4), sub-blocks 2 s and 2 s + 1 of 16.
    const dl_block_q2_k* b = reinterpret_cast<const dl_block_q2_k*>(block);
    const float d = dl_f16_to_f32(b->d), dmin = dl_f16_to_f32(b->dmin);
    const uint8_t* q = b->qs + 32 * (s / 4);
    const int shift = 2 * (s % 4);
#pragma unroll
    for (int part = 0; part < 2; part++) {
      const uint8_t sc = b->scales[2 * s + part];
      const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
#pragma unroll
      for (int l = 0; l < 16; l++) y[16 * part + l] = dl * (float)((q[l + 16 * part] >> shift) & 3) - ml;
    }
  } else if constexpr (DT == DL_DTYPE_Q3_K) {
    // As Q2_K; the high bit of element l + 16 part is bit s of hmask[l + 16 part].
    const dl_block_q3_k* b = reinterpret_cast<const dl_block_q3_k*>(block);
    const float d = dl_f16_to_f32(b->d);
    const uint8_t* q = b->qs + 32 * (s / 4);
    const int shift = 2 * (s % 4);
    const uint8_t m = (uint8_t)(1u << s);
#pragma unroll
    for (int part = 0; part < 2; part++) {
      const int j = 2 * s + part;  // scale index, unpacked as dl_q3_k_scales does
      const int low = j < 8 ? (b->scales[j] & 0xF) : (b->scales[j - 8] >> 4);
      const int high = (b->scales[8 + (j % 4)] >> (2 * (j / 4))) & 3;
      const float dl = d * (float)((int8_t)(low | (high << 4)) - 32);
#pragma unroll
      for (int l = 0; l < 16; l++) {
        const int i = l + 16 * part;
        y[i] = dl * (float)(((q[i] >> shift) & 3) - ((b->hmask[i] & m) ? 0 : 4));
      }
    }
  } else if constexpr (DT == DL_DTYPE_Q4_K || DT == DL_DTYPE_Q5_K) {
    // Chunk s is sub-block s: the low (s even) or high nibbles of qs[32 (s / 2) ..], Q5_K's fifth
    // bit is bit s of qh[l].
    const uint8_t* scales;
    const uint8_t* qs;
    const uint8_t* qh = nullptr;
    uint16_t d16, dmin16;
    if constexpr (DT == DL_DTYPE_Q4_K) {
      const dl_block_q4_k* b = reinterpret_cast<const dl_block_q4_k*>(block);
      scales = b->scales, qs = b->qs, d16 = b->d, dmin16 = b->dmin;
    } else {
      const dl_block_q5_k* b = reinterpret_cast<const dl_block_q5_k*>(block);
      scales = b->scales, qs = b->qs, qh = b->qh, d16 = b->d, dmin16 = b->dmin;
    }
    const float d = dl_f16_to_f32(d16), dmin = dl_f16_to_f32(dmin16);
    uint8_t sc, mn;
    dl_k4_scale_min(s, scales, &sc, &mn);
    const float d1 = d * (float)sc, m1 = dmin * (float)mn;
    const uint8_t* q = qs + 32 * (s / 2);
    const int nibble = 4 * (s % 2);
#pragma unroll
    for (int l = 0; l < 32; l++) {
      if constexpr (DT == DL_DTYPE_Q4_K) {
        y[l] = d1 * (float)((q[l] >> nibble) & 0xF) - m1;
      } else {
        y[l] = d1 * (float)(((q[l] >> nibble) & 0xF) + ((qh[l] & (1u << s)) ? 16 : 0)) - m1;
      }
    }
  } else if constexpr (DT == DL_DTYPE_Q6_K) {
    // Chunk s: half h = s / 4, quarter g = s % 4 of it (ggml's q1 .. q4).
    const dl_block_q6_k* b = reinterpret_cast<const dl_block_q6_k*>(block);
    const float d = dl_f16_to_f32(b->d);
    const int h = s / 4, g = s % 4;
    const uint8_t* ql = b->ql + 64 * h + 32 * (g % 2);
    const uint8_t* qh = b->qh + 32 * h;
    const int8_t* sc = b->scales + 8 * h + 2 * g;
    const int nibble = 4 * (g / 2);
#pragma unroll
    for (int l = 0; l < 32; l++) {
      const int q = (((ql[l] >> nibble) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
      y[l] = d * (float)sc[l / 16] * (float)q;
    }
  } else if constexpr (DT == DL_DTYPE_Q8_K) {
    const dl_block_q8_k* b = reinterpret_cast<const dl_block_q8_k*>(block);
    const float d = b->d;
#pragma unroll
    for (int l = 0; l < 32; l++) y[l] = d * (float)b->qs[32 * s + l];
  } else if constexpr (DT == DL_DTYPE_INT4) {
    // Chunks 0 and 1 are low nibbles of qs[0 .. 64), chunks 2 and 3 their high nibbles.
    const dl_block_int4* b = reinterpret_cast<const dl_block_int4*>(block);
    const float d = dl_f16_to_f32(b->d), m = dl_f16_to_f32(b->m);
    const uint8_t* q = b->qs + 32 * (s % 2);
    const int nibble = 4 * (s / 2);
#pragma unroll
    for (int l = 0; l < 32; l++) y[l] = (float)((q[l] >> nibble) & 0x0F) * d + m;
  } else if constexpr (DT == DL_DTYPE_F16_2_4) {
    // 16 kept f16 values, then 4 bytes of 2-bit positions (ffi/denollm.h's 2:4 layout).
    const uint32_t pos = dl_load_u32(block + 32);
#pragma unroll
    for (int grp = 0; grp < 8; grp++) {
      const uint32_t vals = dl_load_u32(block + 4 * grp);
      dl_place_2_4(dl_f16_to_f32((uint16_t)(vals & 0xFFFFu)), dl_f16_to_f32((uint16_t)(vals >> 16)),
                   (int)(pos >> (4 * grp)) & 15, y + 4 * grp);
    }
  } else if constexpr (DT == DL_DTYPE_INT4_2_4) {
    // Quarter s of a group of 128: groups 8 s .. 8 s + 7, their nibble bytes 4 + 8 s .. and their
    // position bytes 36 + 4 s ..; w = d * q + m for a kept value, 0 for a pruned one.
    const float d = dl_f16_to_f32((uint16_t)(block[0] | (block[1] << 8)));
    const float m = dl_f16_to_f32((uint16_t)(block[2] | (block[3] << 8)));
    const uint32_t pos = dl_load_u32(block + 36 + 4 * s);
#pragma unroll
    for (int grp = 0; grp < 8; grp++) {
      const uint8_t q = block[4 + 8 * s + grp];
      dl_place_2_4((float)(q & 15) * d + m, (float)(q >> 4) * d + m, (int)(pos >> (4 * grp)) & 15, y + 4 * grp);
    }
  } else {
    static_assert(DT == DL_DTYPE_Q4_0, "dl_decode_chunk: not a chunked quantized format");
  }
}

// Chunk c (block c) of an INT8_2_4 row: 16 kept int8 values and 4 position bytes, times the row's
// scale (w = scale * q, as INT8).
__device__ __forceinline__ void dl_decode_int8_2_4_chunk(const uint8_t* row, float scale, int64_t c, float* y) {
  const uint8_t* block = row + c * 20;
  const uint32_t pos = dl_load_u32(block + 16);
#pragma unroll
  for (int grp = 0; grp < 8; grp++) {
    dl_place_2_4(scale * (float)(int8_t)block[2 * grp], scale * (float)(int8_t)block[2 * grp + 1],
                 (int)(pos >> (4 * grp)) & 15, y + 4 * grp);
  }
}

// Chunk c of an INT8 row of k values with its scale; elements at or past k are 0.
__device__ __forceinline__ void dl_decode_int8_chunk(const uint8_t* row, float scale, int64_t c,
                                                     int64_t k, float* y) {
  const int8_t* q = reinterpret_cast<const int8_t*>(row) + c * DL_CHUNK;
  const int64_t valid = k - c * DL_CHUNK;
#pragma unroll
  for (int l = 0; l < DL_CHUNK; l++) y[l] = l < valid ? scale * (float)q[l] : 0.0f;
}

// Calls body(DtypeTag<DT>{}) with the dtype as a compile-time constant (tag.value) for a format
// of DL_QUANTIZED_DTYPES; returns false for any other dtype. One switch for every launcher.
template <int DT>
struct DtypeTag {
  static constexpr int value = DT;
};
template <class F>
inline bool dl_dispatch_quant(int32_t dtype, F&& body) {
  switch (dtype) {
    case DL_DTYPE_Q4_0: body(DtypeTag<DL_DTYPE_Q4_0>{}); return true;
    case DL_DTYPE_Q4_1: body(DtypeTag<DL_DTYPE_Q4_1>{}); return true;
    case DL_DTYPE_Q5_0: body(DtypeTag<DL_DTYPE_Q5_0>{}); return true;
    case DL_DTYPE_Q5_1: body(DtypeTag<DL_DTYPE_Q5_1>{}); return true;
    case DL_DTYPE_Q8_0: body(DtypeTag<DL_DTYPE_Q8_0>{}); return true;
    case DL_DTYPE_Q2_K: body(DtypeTag<DL_DTYPE_Q2_K>{}); return true;
    case DL_DTYPE_Q3_K: body(DtypeTag<DL_DTYPE_Q3_K>{}); return true;
    case DL_DTYPE_Q4_K: body(DtypeTag<DL_DTYPE_Q4_K>{}); return true;
    case DL_DTYPE_Q5_K: body(DtypeTag<DL_DTYPE_Q5_K>{}); return true;
    case DL_DTYPE_Q6_K: body(DtypeTag<DL_DTYPE_Q6_K>{}); return true;
    case DL_DTYPE_Q8_K: body(DtypeTag<DL_DTYPE_Q8_K>{}); return true;
    case DL_DTYPE_INT8: body(DtypeTag<DL_DTYPE_INT8>{}); return true;
    case DL_DTYPE_INT4: body(DtypeTag<DL_DTYPE_INT4>{}); return true;
    default: return false;
  }
}

// The weight-only 2:4 formats (f32 activations), which dl_matmul_quant's kernels take as chunks too.
template <class F>
inline bool dl_dispatch_sparse_f32(int32_t dtype, F&& body) {
  switch (dtype) {
    case DL_DTYPE_F16_2_4: body(DtypeTag<DL_DTYPE_F16_2_4>{}); return true;
    case DL_DTYPE_INT8_2_4: body(DtypeTag<DL_DTYPE_INT8_2_4>{}); return true;
    case DL_DTYPE_INT4_2_4: body(DtypeTag<DL_DTYPE_INT4_2_4>{}); return true;
    default: return false;
  }
}

// Quantized dl_matmul (cuda/matmul_quant.cu), called by dl_matmul's launcher after validation:
// w_dtype is one of DL_QUANTIZED_DTYPES or a weight-only 2:4 format (F16_2_4, INT8_2_4, INT4_2_4),
// m > 0.
int32_t dl_matmul_quant(dl_context* ctx, float* out, const float* x, const void* w, int32_t w_dtype,
                        const float* bias, int32_t m, int32_t n, int32_t k, int32_t ldo);
