// Quantized formats on CUDA: dl_quantize, dl_dequantize.
// (Wave 2 placeholder: the kernels land with the quantized-weights issue.)
#include "common.cuh"
#include "dl_dtype.h"
#include "dl_quant.h"

extern "C" int32_t dl_quantize(dl_context* ctx, void* dst, int32_t dst_dtype, const float* src, int64_t rows,
                               int64_t cols, const float* importance) {
  (void)ctx, (void)dst, (void)src, (void)rows, (void)cols, (void)importance;
  return dl_fail(DL_ERR_NOT_IMPLEMENTED, "dl_quantize: no quantizer for %s yet", dl_dtype_name(dst_dtype));
}

extern "C" int32_t dl_dequantize(dl_context* ctx, float* dst, const void* src, int32_t src_dtype, int64_t rows,
                                 int64_t cols) {
  (void)ctx, (void)dst, (void)src, (void)rows, (void)cols;
  return dl_fail(DL_ERR_NOT_IMPLEMENTED, "dl_dequantize: no dequantizer for %s yet", dl_dtype_name(src_dtype));
}
