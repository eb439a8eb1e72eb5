// Quantized formats on the CPU: the driver of quantized dl_matmul (activation quantization into the
// workspace, then the format's kernel over column ranges). dl_quantize and dl_dequantize are in
// cpu/quant/.
#include <algorithm>
#include <cstring>

#include "common.h"
#include "dl_dtype.h"
#include "dl_quant.h"
#include "quant.h"

// --- Quantized matmul

// The activation layout of each weight format (ggml's vec_dot_type column): blocks of 256 for the
// K formats, blocks of 32 for the rest.
static DlActKind act_kind(int32_t w_dtype) {
  return DL_DTYPES[w_dtype].block_len == DL_QK_K ? DlActKind::q8_k : DlActKind::q8;
}

// The quantized rows of the largest call: q8 rows are the larger layout for every k (40 bytes per
// 32 values against 292 per 256), so they bound both.
size_t dl_matmul_workspace_bytes(int64_t max_rows, int64_t max_k) {
  if (max_rows <= 0 || max_k <= 0) return 0;
  return dl_align64((size_t)max_rows * (size_t)dl_act_row_bytes(DlActKind::q8, max_k));
}
static_assert(sizeof(dl_act_q8) * DL_QK_K / DL_QK >= sizeof(dl_block_q8_k), "q8 rows bound q8_k rows");

// The kernel set for this CPU: a plain AVX-512F CPU (no VNNI) takes the AVX2 kernels.
static const DlQuantIsa& quant_isa() {
  static const DlQuantIsa* isa =
      dl_pick_kernel_set(&dl_quant_generic, dl_quant_avx2(), dl_quant_avx512_vnni(), false);
  return *isa;
}

int32_t dl_matmul_quant(dl_context* ctx, float* out, int64_t ldo, const float* x, const void* w, int32_t w_dtype,
                        const float* bias, int32_t m, int32_t n, int32_t k) {
  const char* fn = "dl_matmul";
  const DlQuantIsa& isa = quant_isa();
  const DlQuantKernel kernel = isa.kernel[w_dtype];
  if (kernel == nullptr) {
    return dl_fail(DL_ERR_UNSUPPORTED, "%s: no %s kernel for w_dtype %s", fn, isa.name, dl_dtype_name(w_dtype));
  }
  const DlActKind kind = act_kind(w_dtype);
  const int64_t act_row_bytes = dl_act_row_bytes(kind, k);
  void* scratch = nullptr;
  DL_TRY(dl_workspace(fn, ctx, (size_t)(m * act_row_bytes), &scratch));
  const DlQuantizeRow quantize = kind == DlActKind::q8 ? isa.quantize_q8 : isa.quantize_q8_k;

  const int64_t w_row_bytes = (int64_t)dl_dtype_bytes(w_dtype, (uint64_t)k);
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const DlQuantGemm g{wb,
                      w_row_bytes,
                      w_dtype == DL_DTYPE_INT8 ? reinterpret_cast<const float*>(wb + (int64_t)n * w_row_bytes) : nullptr,
                      static_cast<uint8_t*>(scratch),
                      act_row_bytes,
                      m,
                      n,
                      k,
                      out,
                      ldo,
                      bias};
  // Columns go to threads in whole cache lines of output where n allows, so threads never share
  // the lines they write; each weight row is read by one thread.
  const int threads = dl_threads_for(ctx, (int64_t)m * n * k);
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t nt = 1, tid = 0;
#endif
    for (int64_t r = tid; r < m; r += nt) quantize(x + r * k, k, static_cast<uint8_t*>(scratch) + r * act_row_bytes);
#pragma omp barrier
    const int64_t units = (n + 15) / 16;
    const int64_t c0 = std::min<int64_t>(n, units * tid / nt * 16);
    const int64_t c1 = std::min<int64_t>(n, units * (tid + 1) / nt * 16);
    if (c0 < c1) kernel(g, c0, c1);
  }
  return DL_OK;
}
