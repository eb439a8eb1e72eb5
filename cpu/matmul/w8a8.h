// W8A8 and 2:4 sparse dl_matmul (the formats from W8A8 on in DL_DTYPE_TABLE): activation layouts,
// kernel signatures and the per-ISA kernel sets the drivers (w8a8.cpp, sparse.cpp) pick from.
//
// W8A8 quantizes each activation row whole: s = max|x| / 127, q = round-half-even(x * (127 /
// max|x|)) (0 for an all-zero row), so |q| <= 127, and the row's int8 products are summed in int32
// (exact: k <= DL_W8A8_MAX_K keeps 127 * 127 * k below 2^31); the result is (float)acc * (s_x *
// s_w). W8A8_MIXED leaves its outlier columns out of the row's scale (they quantize to 0) and adds
// their products in f32.
#pragma once

#include <cstdint>

#include "common.h"
#include "dl_half.h"

// The int32 sum of k products of |q| <= 127 stays exact up to this k.
constexpr int64_t DL_W8A8_MAX_K = 131072;
// Outlier channels per W8A8_MIXED matrix, and the id of an unused slot.
constexpr int DL_W8A8_OUTLIERS = 16;
constexpr uint16_t DL_W8A8_NO_OUTLIER = 0xFFFF;
// Bytes of a W8A8_MIXED row's data after all rows: scale, ids, f16 weights (the table's row_bytes).
constexpr int64_t DL_W8A8_MIXED_ROW_BYTES = 8 + DL_W8A8_OUTLIERS * 2 + DL_W8A8_OUTLIERS * 2;
// Offsets in a row's data: the f32 scale, the int32 sum of its int8 values (W8A8 formats), the
// outlier ids and their f16 weights (W8A8_MIXED).
constexpr int64_t DL_W8A8_SUM_AT = 4, DL_W8A8_IDS_AT = 8, DL_W8A8_OUTLIER_W_AT = 8 + 2 * DL_W8A8_OUTLIERS;

// One quantized activation row in the workspace: this header, then round_up(k, 64) int8 values
// (zero past k, and at the outlier columns).
struct DlW8a8Row {
  float scale;
  int32_t unused[15];
  float outlier[DL_W8A8_OUTLIERS];  // x at the matrix's outlier columns (0 for unused slots)
};
static_assert(sizeof(DlW8a8Row) == 128, "W8A8 activation row header");

constexpr int64_t dl_w8a8_padded_k(int64_t k) { return (k + 63) / 64 * 64; }
constexpr int64_t dl_w8a8_row_bytes(int64_t k) { return (int64_t)sizeof(DlW8a8Row) + dl_w8a8_padded_k(k); }

// One call computes out[i * ldo + c] for the m activation rows and the columns [col_begin, col_end).
struct DlW8a8Gemm {
  const int8_t* w;             // [n, w_row_bytes]: W8A8's int8 rows, or the 2:4 formats' blocks
  int64_t w_row_bytes;         // bytes of one weight row
  const uint8_t* row_data;     // [n, row_data_bytes] after all rows: the f32 scale first
  int64_t row_data_bytes;      // 4, or DL_W8A8_MIXED_ROW_BYTES
  const uint16_t* outlier_id;  // [DL_W8A8_OUTLIERS] of row 0 (W8A8_MIXED), else NULL
  const uint8_t* act;          // [m, act_row_bytes] quantized activation rows
  int64_t act_row_bytes;
  int64_t m, k;
  float* out;  // [m, ldo]
  int64_t ldo;
  const float* bias;  // [n] or NULL
  // Per-thread scratch of DL_W8A8_PANEL expanded 2:4 weight rows (padded k each), from thread
  // slot omp_get_thread_num() * panel_bytes; NULL when the call has none.
  uint8_t* panel;
  int64_t panel_bytes;
};
// Columns a 2:4 kernel expands at once (prefill: each stored block expanded once per call).
constexpr int64_t DL_W8A8_PANEL = 16;
using DlW8a8Kernel = void (*)(const DlW8a8Gemm& g, int64_t col_begin, int64_t col_end);

// The kernels one instruction set has: W8A8 and W8A8_MIXED (one kernel, the outlier part on when
// outlier_id is set), W8A8_2_4, and INT8_2_4 (whose activation rows are q8 blocks of 32, quant.h's
// dl_act_q8, as INT8's).
struct DlW8a8Isa {
  const char* name;
  DlW8a8Kernel dense, sparse_2_4, int8_2_4;
};
extern const DlW8a8Isa dl_w8a8_generic;
const DlW8a8Isa* dl_w8a8_avx2();
const DlW8a8Isa* dl_w8a8_avx512_vnni();
// The set for this CPU (DENOLLM_CPU_ISA lowers it, as for the quantized formats).
const DlW8a8Isa& dl_w8a8_isa();

// Quantizes activation row x [k] into `row` (dl_w8a8_row_bytes(k) bytes): the per-token scale and
// int8 values; outlier ids sorted ascending (DL_W8A8_NO_OUTLIER last) are left out and copied.
void dl_w8a8_quantize_row(const float* x, int64_t k, const uint16_t* sorted_ids, uint8_t* row);

// The W8A8 formats' driver (w8a8.cpp) and the 2:4 formats' driver (sparse.cpp); the launcher
// (float.cpp) hands them every w_dtype from DL_DTYPE_W8A8 on after validation.
int32_t dl_matmul_w8a8(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                       const float* bias, int32_t m, int32_t n, int32_t k);
int32_t dl_matmul_sparse(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                         const float* bias, int32_t m, int32_t n, int32_t k);
// Workspace bytes of their largest call (dl_reserve_workspace takes the larger of this and the
// quantized formats' need).
size_t dl_w8a8_workspace_bytes(int threads, int64_t max_rows, int64_t max_k);

// The f32 scale at the start of row c's data (the data may be unaligned).
inline float dl_w8a8_row_scale(const DlW8a8Gemm& g, int64_t c) {
  float s;
  __builtin_memcpy(&s, g.row_data + c * g.row_data_bytes, 4);
  return s;
}

// The int32 sum of row c's int8 values (the W8A8 formats).
inline int32_t dl_w8a8_row_sum(const DlW8a8Gemm& g, int64_t c) {
  int32_t s;
  __builtin_memcpy(&s, g.row_data + c * g.row_data_bytes + DL_W8A8_SUM_AT, 4);
  return s;
}

// The outlier part of one output: x at each slot's column times the row's f16 weight there (unused
// slots hold 0 in the activation header).
inline float dl_w8a8_outlier_dot(const DlW8a8Gemm& g, const DlW8a8Row& a, int64_t c) {
  if (g.outlier_id == nullptr) return 0.0f;
  const uint8_t* wf = g.row_data + c * g.row_data_bytes + DL_W8A8_OUTLIER_W_AT;
  float s = 0.0f;
  for (int t = 0; t < DL_W8A8_OUTLIERS; t++) {
    uint16_t h;
    __builtin_memcpy(&h, wf + 2 * t, 2);
    s += a.outlier[t] * dl_f16_to_f32(h);
  }
  return s;
}

// Writes output (i, c) from the row's exact int32 sum: (float)acc * (s_x * s_w) + outliers + bias.
inline void dl_w8a8_store(const DlW8a8Gemm& g, int64_t i, int64_t c, int32_t acc) {
  const DlW8a8Row& a = *reinterpret_cast<const DlW8a8Row*>(g.act + i * g.act_row_bytes);
  float v = (float)acc * (a.scale * dl_w8a8_row_scale(g, c)) + dl_w8a8_outlier_dot(g, a, c);
  if (g.bias != nullptr) v += g.bias[c];
  g.out[i * g.ldo + c] = v;
}

// Activation row i's int8 values.
inline const int8_t* dl_w8a8_act_q(const DlW8a8Gemm& g, int64_t i) {
  return reinterpret_cast<const int8_t*>(g.act + i * g.act_row_bytes + sizeof(DlW8a8Row));
}

// 2:4 blocks of 32: 16 values then 4 bytes of positions; the nibble of group grp.
inline int dl_2_4_nibble(const uint8_t* pos, int grp) { return (pos[grp / 2] >> (4 * (grp & 1))) & 15; }
