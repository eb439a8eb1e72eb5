// Block layouts of the quantized rows of DL_DTYPE_TABLE, shared by the CPU build, the CUDA build
// (host and device code) and the quantizers. The GGUF types are ggml's layouts byte for byte, so a
// tensor read from a GGUF file is used where it lies; each struct's size is checked against the
// table below. Halves are stored as raw IEEE binary16 bits (dl_half.h converts them).
//
// Element order inside a block, as ggml defines it (the dequantizers in cpu/matmul/ and cuda/
// follow it; tests/quant_blocks_test.ts checks them against llama.cpp's own output):
//   Q4_0 / Q4_1: element j < 16 is the low nibble of qs[j], element j + 16 its high nibble.
//   Q5_0 / Q5_1: as Q4, and the fifth bit of element e is bit e of qh read as a little-endian
//                uint32.
//   Q8_0:        element j is qs[j].
//   K formats:   super-blocks of 256 made of 16 or 8 sub-blocks, with 4- or 6-bit sub-block scales
//                packed as ggml packs them.
#pragma once

#include <cstdint>

#include "denollm.h"

#define DL_QK 32    // elements per block of the legacy formats (Q4_0 … Q8_0)
#define DL_QK_K 256 // elements per super-block of the K formats
#define DL_K_SCALE_SIZE 12
#define DL_INT4_GROUP 128

struct dl_block_q4_0 {
  uint16_t d;               // scale: w = d * (q - 8)
  uint8_t qs[DL_QK / 2];    // 4-bit values
};
struct dl_block_q4_1 {
  uint16_t d, m;            // w = d * q + m
  uint8_t qs[DL_QK / 2];
};
struct dl_block_q5_0 {
  uint16_t d;               // w = d * (q - 16)
  uint8_t qh[4];            // fifth bits, one per element
  uint8_t qs[DL_QK / 2];    // low 4 bits
};
struct dl_block_q5_1 {
  uint16_t d, m;            // w = d * q + m
  uint8_t qh[4];
  uint8_t qs[DL_QK / 2];
};
struct dl_block_q8_0 {
  uint16_t d;               // w = d * q
  int8_t qs[DL_QK];
};
struct dl_block_q2_k {
  uint8_t scales[DL_QK_K / 16];  // 4-bit scale (low) and 4-bit min (high) of 16 sub-blocks
  uint8_t qs[DL_QK_K / 4];       // 2-bit values
  uint16_t d, dmin;              // super-block scales of the scales and of the mins
};
struct dl_block_q3_k {
  uint8_t hmask[DL_QK_K / 8];    // high bits
  uint8_t qs[DL_QK_K / 4];       // low 2 bits
  uint8_t scales[12];            // 16 6-bit scales
  uint16_t d;
};
struct dl_block_q4_k {
  uint16_t d, dmin;
  uint8_t scales[DL_K_SCALE_SIZE];  // 8 6-bit scales and 8 6-bit mins
  uint8_t qs[DL_QK_K / 2];
};
struct dl_block_q5_k {
  uint16_t d, dmin;
  uint8_t scales[DL_K_SCALE_SIZE];
  uint8_t qh[DL_QK_K / 8];
  uint8_t qs[DL_QK_K / 2];
};
struct dl_block_q6_k {
  uint8_t ql[DL_QK_K / 2];       // low 4 bits
  uint8_t qh[DL_QK_K / 4];       // high 2 bits
  int8_t scales[DL_QK_K / 16];   // 8-bit sub-block scales
  uint16_t d;
};
struct dl_block_q8_k {
  float d;
  int8_t qs[DL_QK_K];
  int16_t bsums[DL_QK_K / 16];   // sums of each 16 qs
};
struct dl_block_int4 {
  uint16_t d, m;                 // w = d * q + m, q in [0, 15]
  uint8_t qs[DL_INT4_GROUP / 2]; // element j < 64: low nibble of qs[j]; j + 64: its high nibble
};

// Each layout must be exactly the table's block_bytes (no padding).
static_assert(sizeof(dl_block_q4_0) == 18, "Q4_0 block");
static_assert(sizeof(dl_block_q4_1) == 20, "Q4_1 block");
static_assert(sizeof(dl_block_q5_0) == 22, "Q5_0 block");
static_assert(sizeof(dl_block_q5_1) == 24, "Q5_1 block");
static_assert(sizeof(dl_block_q8_0) == 34, "Q8_0 block");
static_assert(sizeof(dl_block_q2_k) == 84, "Q2_K block");
static_assert(sizeof(dl_block_q3_k) == 110, "Q3_K block");
static_assert(sizeof(dl_block_q4_k) == 144, "Q4_K block");
static_assert(sizeof(dl_block_q5_k) == 176, "Q5_K block");
static_assert(sizeof(dl_block_q6_k) == 210, "Q6_K block");
static_assert(sizeof(dl_block_q8_k) == 292, "Q8_K block");
static_assert(sizeof(dl_block_int4) == 68, "INT4 block");
