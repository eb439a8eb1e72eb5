// Scalar per-block dequantizers of every quantized format (native/dl_quant.h layouts), shared by the
// CPU build's reference paths and CUDA device code, so both expand a block to the same floats. For
// GGUF's types they follow ggml's element order and arithmetic (each product written in ggml's
// order); tests/quant_blocks_test.ts checks them bit for bit against the floats of llama.cpp's own
// dequantize_row_* (tests/fixtures/quant/blocks.json).
//
// Contraction: ggml's prebuilt x86-64 libggml-base (node-llama-cpp 3.21.1) has no FMA (each
// `q * d + m` is a mulss then an addss), while nvcc, and GCC in AVX2/FMA target_clones code, may
// fuse ours into one FMA. That cannot change a bit here: every product that meets an add is exact
// in f32 (an f16 scale has 11 significant bits, a sub-block scale at most 6, q at most 5: at most
// 22 bits), so the add is the only rounding either way. Q6_K's d * sc * q (11 + 8 + 6 bits) has no
// add, and d * sc is exact, so it rounds once in any order.
#pragma once

#include <cstdint>
#include <cstring>

#include "dl_half.h"
#include "dl_quant.h"

// Reads 4 bytes as a little-endian uint32 (blocks are only 2-byte aligned).
DL_HD uint32_t dl_load_u32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// --- Legacy formats: blocks of 32

DL_HD void dl_dequant_q4_0(const dl_block_q4_0* b, float* y) {
  const float d = dl_f16_to_f32(b->d);
  for (int j = 0; j < DL_QK / 2; j++) {
    y[j] = (float)((b->qs[j] & 0x0F) - 8) * d;
    y[j + DL_QK / 2] = (float)((b->qs[j] >> 4) - 8) * d;
  }
}

DL_HD void dl_dequant_q4_1(const dl_block_q4_1* b, float* y) {
  const float d = dl_f16_to_f32(b->d), m = dl_f16_to_f32(b->m);
  for (int j = 0; j < DL_QK / 2; j++) {
    y[j] = (float)(b->qs[j] & 0x0F) * d + m;
    y[j + DL_QK / 2] = (float)(b->qs[j] >> 4) * d + m;
  }
}

DL_HD void dl_dequant_q5_0(const dl_block_q5_0* b, float* y) {
  const float d = dl_f16_to_f32(b->d);
  const uint32_t qh = dl_load_u32(b->qh);
  for (int j = 0; j < DL_QK / 2; j++) {
    const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
    y[j] = (float)(((b->qs[j] & 0x0F) | h0) - 16) * d;
    y[j + DL_QK / 2] = (float)(((b->qs[j] >> 4) | h1) - 16) * d;
  }
}

DL_HD void dl_dequant_q5_1(const dl_block_q5_1* b, float* y) {
  const float d = dl_f16_to_f32(b->d), m = dl_f16_to_f32(b->m);
  const uint32_t qh = dl_load_u32(b->qh);
  for (int j = 0; j < DL_QK / 2; j++) {
    const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
    y[j] = (float)((b->qs[j] & 0x0F) | h0) * d + m;
    y[j + DL_QK / 2] = (float)((b->qs[j] >> 4) | h1) * d + m;
  }
}

DL_HD void dl_dequant_q8_0(const dl_block_q8_0* b, float* y) {
  const float d = dl_f16_to_f32(b->d);
  for (int j = 0; j < DL_QK; j++) y[j] = (float)b->qs[j] * d;
}

// --- K formats: super-blocks of 256

DL_HD void dl_dequant_q2_k(const dl_block_q2_k* b, float* y) {
  const float d = dl_f16_to_f32(b->d), dmin = dl_f16_to_f32(b->dmin);
  const uint8_t* q = b->qs;
  int is = 0;
  for (int half = 0; half < 2; half++) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; part++) {
        const uint8_t sc = b->scales[is++];
        const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
        for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l + 16 * part] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

// The 16 6-bit scales of a Q3_K block, unpacked from its 12 bytes (biased by 32).
DL_HD void dl_q3_k_scales(const uint8_t* packed, int8_t* scales) {
  for (int j = 0; j < 16; j++) {
    const int low = j < 8 ? (packed[j] & 0xF) : (packed[j - 8] >> 4);
    const int high = (packed[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    scales[j] = (int8_t)(low | (high << 4));
  }
}

DL_HD void dl_dequant_q3_k(const dl_block_q3_k* b, float* y) {
  const float d = dl_f16_to_f32(b->d);
  int8_t scales[16];
  dl_q3_k_scales(b->scales, scales);
  const uint8_t* q = b->qs;
  uint8_t m = 1;
  int is = 0;
  for (int half = 0; half < 2; half++) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; part++) {
        const float dl = d * (float)(scales[is++] - 32);
        for (int l = 0; l < 16; l++) {
          const int i = l + 16 * part;
          *y++ = dl * (float)(((q[i] >> shift) & 3) - ((b->hmask[i] & m) ? 0 : 4));
        }
      }
      m <<= 1;
    }
    q += 32;
  }
}

// Sub-block j's 6-bit scale and min of a Q4_K / Q5_K block.
DL_HD void dl_k4_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

DL_HD void dl_dequant_q4_k(const dl_block_q4_k* b, float* y) {
  const float d = dl_f16_to_f32(b->d), dmin = dl_f16_to_f32(b->dmin);
  const uint8_t* q = b->qs;
  for (int is = 0; is < 8; is += 2) {
    uint8_t sc, mn;
    dl_k4_scale_min(is, b->scales, &sc, &mn);
    const float d1 = d * (float)sc, m1 = dmin * (float)mn;
    dl_k4_scale_min(is + 1, b->scales, &sc, &mn);
    const float d2 = d * (float)sc, m2 = dmin * (float)mn;
    for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
    q += 32;
  }
}

DL_HD void dl_dequant_q5_k(const dl_block_q5_k* b, float* y) {
  const float d = dl_f16_to_f32(b->d), dmin = dl_f16_to_f32(b->dmin);
  const uint8_t* ql = b->qs;
  uint8_t u1 = 1, u2 = 2;
  for (int is = 0; is < 8; is += 2) {
    uint8_t sc, mn;
    dl_k4_scale_min(is, b->scales, &sc, &mn);
    const float d1 = d * (float)sc, m1 = dmin * (float)mn;
    dl_k4_scale_min(is + 1, b->scales, &sc, &mn);
    const float d2 = d * (float)sc, m2 = dmin * (float)mn;
    for (int l = 0; l < 32; l++) *y++ = d1 * (float)((ql[l] & 0xF) + ((b->qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; l++) *y++ = d2 * (float)((ql[l] >> 4) + ((b->qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    u1 = (uint8_t)(u1 << 2);
    u2 = (uint8_t)(u2 << 2);
  }
}

DL_HD void dl_dequant_q6_k(const dl_block_q6_k* b, float* y) {
  const float d = dl_f16_to_f32(b->d);
  const uint8_t* ql = b->ql;
  const uint8_t* qh = b->qh;
  const int8_t* sc = b->scales;
  for (int half = 0; half < 2; half++) {
    for (int l = 0; l < 32; l++) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * (float)sc[is] * (float)q1;
      y[l + 32] = d * (float)sc[is + 2] * (float)q2;
      y[l + 64] = d * (float)sc[is + 4] * (float)q3;
      y[l + 96] = d * (float)sc[is + 6] * (float)q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

DL_HD void dl_dequant_q8_k(const dl_block_q8_k* b, float* y) {
  for (int j = 0; j < DL_QK_K; j++) y[j] = b->d * (float)b->qs[j];
}

// --- denollm's formats

DL_HD void dl_dequant_int4(const dl_block_int4* b, float* y) {
  const float d = dl_f16_to_f32(b->d), m = dl_f16_to_f32(b->m);
  for (int j = 0; j < DL_INT4_GROUP / 2; j++) {
    y[j] = (float)(b->qs[j] & 0x0F) * d + m;
    y[j + DL_INT4_GROUP / 2] = (float)(b->qs[j] >> 4) * d + m;
  }
}

// One INT8 row of k values with its scale (the scales follow all rows: dl_matrix_bytes).
DL_HD void dl_dequant_int8_row(const int8_t* q, float scale, float* y, int64_t k) {
  for (int64_t j = 0; j < k; j++) y[j] = scale * (float)q[j];
}

// --- By dtype

// Expands block `index` of a row of blocks of a quantized dtype other than INT8 (block_len floats
// to y). Returns false for a dtype without blocks here (plain types, INT8).
DL_HD bool dl_dequant_block(int32_t dtype, const void* row, int64_t index, float* y) {
  const uint8_t* p = static_cast<const uint8_t*>(row);
  switch (dtype) {
    case DL_DTYPE_Q4_0: dl_dequant_q4_0(reinterpret_cast<const dl_block_q4_0*>(p) + index, y); return true;
    case DL_DTYPE_Q4_1: dl_dequant_q4_1(reinterpret_cast<const dl_block_q4_1*>(p) + index, y); return true;
    case DL_DTYPE_Q5_0: dl_dequant_q5_0(reinterpret_cast<const dl_block_q5_0*>(p) + index, y); return true;
    case DL_DTYPE_Q5_1: dl_dequant_q5_1(reinterpret_cast<const dl_block_q5_1*>(p) + index, y); return true;
    case DL_DTYPE_Q8_0: dl_dequant_q8_0(reinterpret_cast<const dl_block_q8_0*>(p) + index, y); return true;
    case DL_DTYPE_Q2_K: dl_dequant_q2_k(reinterpret_cast<const dl_block_q2_k*>(p) + index, y); return true;
    case DL_DTYPE_Q3_K: dl_dequant_q3_k(reinterpret_cast<const dl_block_q3_k*>(p) + index, y); return true;
    case DL_DTYPE_Q4_K: dl_dequant_q4_k(reinterpret_cast<const dl_block_q4_k*>(p) + index, y); return true;
    case DL_DTYPE_Q5_K: dl_dequant_q5_k(reinterpret_cast<const dl_block_q5_k*>(p) + index, y); return true;
    case DL_DTYPE_Q6_K: dl_dequant_q6_k(reinterpret_cast<const dl_block_q6_k*>(p) + index, y); return true;
    case DL_DTYPE_Q8_K: dl_dequant_q8_k(reinterpret_cast<const dl_block_q8_k*>(p) + index, y); return true;
    case DL_DTYPE_INT4: dl_dequant_int4(reinterpret_cast<const dl_block_int4*>(p) + index, y); return true;
    default: return false;
  }
}
