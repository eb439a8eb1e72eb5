// Quantized dl_matmul: the activation layouts, the kernel signature and the per-ISA kernel tables
// that the driver (quant.cpp) picks from.
//
// Every format's dot product runs on int8 activations: each activation row is first quantized per
// block (round to nearest even of x * 127 / amax, so |q| <= 127; blocks of 32 keep d and s in f16
// precision, as ggml's q8_0 / q8_1 do) into the workspace, then each
// weight block is unpacked once and dotted with up to TILE_M activation rows in integers, and the
// block results are scaled and summed in f32.
#pragma once

#include <cstdint>

#include "dl_quant.h"

// --- Activation layouts

// The legacy formats, INT8 and INT4 use blocks of 32 (ggml's q8_0 / q8_1 idea): x ~ d * qs, and s =
// d * sum(qs) for the formats whose weights carry an offset (w = d * q + m adds m * s per block).
struct dl_act_q8 {
  float d;
  float s;
  int8_t qs[DL_QK];
};
static_assert(sizeof(dl_act_q8) == 40, "q8 activation block");

// The K formats use dl_block_q8_k (blocks of 256, the 16-element sums feed the sub-block mins).
enum class DlActKind { q8, q8_k };

// Bytes of one activation row of k values (k a multiple of 256 for q8_k).
constexpr int64_t dl_act_row_bytes(DlActKind kind, int64_t k) {
  return kind == DlActKind::q8 ? (k + DL_QK - 1) / DL_QK * (int64_t)sizeof(dl_act_q8)
                               : k / DL_QK_K * (int64_t)sizeof(dl_block_q8_k);
}

// --- Kernels

// One call computes out[i * ldo + c] = dot(act row i, w row c) (* row_scale[c]) (+ bias[c]) for all
// m rows and the columns [col_begin, col_end).
struct DlQuantGemm {
  const uint8_t* w;        // [n, w_row_bytes] blocks of the weight format (Q4_0_R16: its groups)
  int64_t w_row_bytes;     // bytes of one weight row's blocks
  const float* row_scale;  // [n] INT8's per-row scales, else NULL
  const uint8_t* act;      // [m, act_row_bytes] quantized activations
  int64_t act_row_bytes;
  int64_t m, n, k;
  float* out;  // [m, ldo]
  int64_t ldo;
  const float* bias;  // [n] or NULL
};
using DlQuantKernel = void (*)(const DlQuantGemm& g, int64_t col_begin, int64_t col_end);

// One activation row quantized: x [k] to dst (dl_act_row_bytes(kind, k) bytes).
using DlQuantizeRow = void (*)(const float* x, int64_t k, uint8_t* dst);

// A kernel set for one instruction set: indexed by dtype id (NULL for the plain formats).
struct DlQuantIsa {
  const char* name;
  DlQuantKernel kernel[DL_DTYPE_COUNT];
  DlQuantizeRow quantize_q8, quantize_q8_k;
};

// The scalar reference (quant_generic.cpp) and the x86 sets (quant_x86.cpp; NULL off x86).
extern const DlQuantIsa dl_quant_generic;
const DlQuantIsa* dl_quant_avx2();
const DlQuantIsa* dl_quant_avx512_vnni();

// The driver: the launcher (float.cpp) hands every quantized w_dtype here after validation.
int32_t dl_matmul_quant(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                        const float* bias, int32_t m, int32_t n, int32_t k);
