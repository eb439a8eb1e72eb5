// W8A8 dl_matmul (W8A8, W8A8_MIXED, W8A8_2_4): per-token int8 activations into the workspace, then
// the ISA's kernel over column ranges; plus the scalar reference kernels every other set matches.
#include <algorithm>
#include <cstring>

#include "common.h"
#include "dl_dtype.h"
#include "dl_half.h"
#include "quant.h"
#include "w8a8.h"

// Activation rows, then one panel of expanded 2:4 rows per thread.
static size_t panel_bytes(int64_t k) { return (size_t)(DL_W8A8_PANEL * dl_w8a8_padded_k(k)); }
size_t dl_w8a8_workspace_bytes(int threads, int64_t max_rows, int64_t max_k) {
  if (max_rows <= 0 || max_k <= 0) return 0;
  return dl_align64((size_t)max_rows * (size_t)dl_w8a8_row_bytes(max_k)) + (size_t)threads * panel_bytes(max_k);
}

// amax over x[begin, end) (plain loops, cloned per target: vectorized, rintf a vroundps instead
// of a libm call per element; the same IEEE results on every ISA).
DL_TARGET_CLONES static float span_amax(const float* x, int64_t begin, int64_t end, float amax) {
  for (int64_t j = begin; j < end; j++) {
    const float a = x[j] < 0.0f ? -x[j] : x[j];
    amax = amax > a ? amax : a;
  }
  return amax;
}

DL_TARGET_CLONES static void span_round(const float* x, int64_t begin, int64_t end, float id, int8_t* q) {
  for (int64_t j = begin; j < end; j++) q[j] = (int8_t)(int32_t)__builtin_rintf(x[j] * id);
}

void dl_w8a8_quantize_row(const float* x, int64_t k, const uint16_t* sorted_ids, uint8_t* dst) {
  DlW8a8Row& row = *reinterpret_cast<DlW8a8Row*>(dst);
  int8_t* q = reinterpret_cast<int8_t*>(dst + sizeof(DlW8a8Row));
  std::memset(&row, 0, sizeof row);
  // The spans between outlier columns (none without ids): the scale and the int8 values come from
  // them alone, the outlier columns quantize to 0 and keep their f32 value in the header.
  float amax = 0.0f;
  int64_t begin = 0;
  for (int t = 0; t <= DL_W8A8_OUTLIERS; t++) {
    const bool last = sorted_ids == nullptr || t == DL_W8A8_OUTLIERS || sorted_ids[t] == DL_W8A8_NO_OUTLIER;
    const int64_t end = last ? k : sorted_ids[t];
    amax = span_amax(x, begin, end, amax);
    if (last) break;
    begin = end + 1;
  }
  const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
  row.scale = amax / 127.0f;
  begin = 0;
  for (int t = 0; t <= DL_W8A8_OUTLIERS; t++) {
    const bool last = sorted_ids == nullptr || t == DL_W8A8_OUTLIERS || sorted_ids[t] == DL_W8A8_NO_OUTLIER;
    const int64_t end = last ? k : sorted_ids[t];
    span_round(x, begin, end, id, q);
    if (last) break;
    q[end] = 0;
    begin = end + 1;
  }
  std::memset(q + k, 0, (size_t)(dl_w8a8_padded_k(k) - k));
}

// --- Scalar reference kernels

static void generic_dense(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c++) {
    const int8_t* w = g.w + c * g.w_row_bytes;
    for (int64_t i = 0; i < g.m; i++) {
      const int8_t* q = dl_w8a8_act_q(g, i);
      int32_t acc = 0;
      for (int64_t j = 0; j < g.k; j++) acc += (int32_t)q[j] * (int32_t)w[j];
      dl_w8a8_store(g, i, c, acc);
    }
  }
}

// W8A8_2_4: each block of 32 holds 16 int8 values and 4 bytes of 2-bit positions.
static void generic_sparse(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c++) {
    const int8_t* w = g.w + c * g.w_row_bytes;
    for (int64_t i = 0; i < g.m; i++) {
      const int8_t* q = dl_w8a8_act_q(g, i);
      int32_t acc = 0;
      for (int64_t b = 0; b < g.k / 32; b++) {
        const int8_t* v = w + b * 20;
        const uint8_t* pos = reinterpret_cast<const uint8_t*>(v + 16);
        const int8_t* qb = q + b * 32;
        for (int grp = 0; grp < 8; grp++) {
          const int nib = dl_2_4_nibble(pos, grp);
          acc += (int32_t)v[2 * grp] * qb[4 * grp + (nib & 3)] + (int32_t)v[2 * grp + 1] * qb[4 * grp + (nib >> 2)];
        }
      }
      dl_w8a8_store(g, i, c, acc);
    }
  }
}

// INT8_2_4 with q8 activation blocks: each block's int32 sum times its d, the row's sum times the
// weight row's scale.
static void generic_int8_2_4(const DlW8a8Gemm& g, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c++) {
    const int8_t* w = g.w + c * g.w_row_bytes;
    for (int64_t i = 0; i < g.m; i++) {
      const auto* a = reinterpret_cast<const dl_act_q8*>(g.act + i * g.act_row_bytes);
      float acc = 0.0f;
      for (int64_t b = 0; b < g.k / 32; b++) {
        const int8_t* v = w + b * 20;
        const uint8_t* pos = reinterpret_cast<const uint8_t*>(v + 16);
        int32_t sum = 0;
        for (int grp = 0; grp < 8; grp++) {
          const int nib = dl_2_4_nibble(pos, grp);
          sum += (int32_t)v[2 * grp] * a[b].qs[4 * grp + (nib & 3)] +
                 (int32_t)v[2 * grp + 1] * a[b].qs[4 * grp + (nib >> 2)];
        }
        acc += (float)sum * a[b].d;
      }
      float out = acc * dl_w8a8_row_scale(g, c);
      if (g.bias != nullptr) out += g.bias[c];
      g.out[i * g.ldo + c] = out;
    }
  }
}

const DlW8a8Isa dl_w8a8_generic = {"generic", generic_dense, generic_sparse, generic_int8_2_4};

// --- Driver

// The kernel set for this CPU, picked as the quantized formats pick theirs; the VNNI set also uses
// VBMI and VBMI2 (the 2:4 expansion).
const DlW8a8Isa& dl_w8a8_isa() {
  static const DlW8a8Isa* isa =
      dl_pick_kernel_set(&dl_w8a8_generic, dl_w8a8_avx2(), dl_w8a8_avx512_vnni(), true);
  return *isa;
}

int32_t dl_matmul_w8a8(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                       const float* bias, int32_t m, int32_t n, int32_t k) {
  const char* fn = "dl_matmul";
  if (k > DL_W8A8_MAX_K) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: %s needs k <= %lld for an exact int32 sum, found %d", fn,
                   dl_dtype_name(w_dtype), (long long)DL_W8A8_MAX_K, k);
  }
  const DlW8a8Isa& isa = dl_w8a8_isa();
  const bool is_sparse = w_dtype == DL_DTYPE_W8A8_2_4;
  const DlW8a8Kernel kernel = is_sparse ? isa.sparse_2_4 : isa.dense;
  const auto* wb = static_cast<const uint8_t*>(w);
  const int64_t w_row_bytes = (int64_t)dl_dtype_bytes(w_dtype, (uint64_t)k);
  const uint8_t* row_data = wb + (int64_t)n * w_row_bytes;
  const int64_t row_data_bytes = DL_DTYPES[w_dtype].row_bytes;

  // W8A8_MIXED: row 0's outlier ids, checked (in range, distinct) and sorted for the quantizer.
  uint16_t ids[DL_W8A8_OUTLIERS], sorted[DL_W8A8_OUTLIERS];
  const bool mixed = w_dtype == DL_DTYPE_W8A8_MIXED;
  if (mixed) {
    std::memcpy(ids, row_data + DL_W8A8_IDS_AT, sizeof ids);
    std::memcpy(sorted, ids, sizeof ids);
    std::sort(sorted, sorted + DL_W8A8_OUTLIERS);
    for (int t = 0; t < DL_W8A8_OUTLIERS && sorted[t] != DL_W8A8_NO_OUTLIER; t++) {
      if (sorted[t] >= k || (t > 0 && sorted[t] == sorted[t - 1])) {
        return dl_fail(DL_ERR_INVALID_ARGUMENT,
                       "%s: expected w8a8_mixed outlier column ids distinct and below k = %d (or 0xFFFF), found %u",
                       fn, k, (unsigned)sorted[t]);
      }
    }
  }
  const int64_t act_row_bytes = dl_w8a8_row_bytes(k);
  const int threads = dl_threads_for(ctx, (int64_t)m * n * k);
  const size_t act_bytes = dl_align64((size_t)(m * act_row_bytes));
  const size_t panels = is_sparse ? (size_t)threads * panel_bytes(k) : 0;
  void* scratch = nullptr;
  DL_TRY(dl_workspace(fn, ctx, act_bytes + panels, &scratch));
  auto* act = static_cast<uint8_t*>(scratch);
  const DlW8a8Gemm g{reinterpret_cast<const int8_t*>(wb),
                     w_row_bytes,
                     row_data,
                     row_data_bytes,
                     mixed ? ids : nullptr,
                     act,
                     act_row_bytes,
                     m,
                     k,
                     out,
                     ldo,
                     bias,
                     is_sparse ? act + act_bytes : nullptr,
                     (int64_t)panel_bytes(k)};
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t nt = 1, tid = 0;
#endif
    for (int64_t r = tid; r < m; r += nt) {
      uint8_t* row = act + r * act_row_bytes;
      dl_w8a8_quantize_row(x + r * k, k, mixed ? sorted : nullptr, row);
      if (mixed) {
        float* xo = reinterpret_cast<DlW8a8Row*>(row)->outlier;
        for (int t = 0; t < DL_W8A8_OUTLIERS; t++) xo[t] = ids[t] == DL_W8A8_NO_OUTLIER ? 0.0f : x[r * k + ids[t]];
      }
    }
#pragma omp barrier
    // Whole cache lines of output per thread where n allows, as the quantized formats split them.
    const int64_t units = (n + 15) / 16;
    const int64_t c0 = std::min<int64_t>(n, units * tid / nt * 16);
    const int64_t c1 = std::min<int64_t>(n, units * (tid + 1) / nt * 16);
    if (c0 < c1) kernel(g, c0, c1);
  }
  return DL_OK;
}
