// dl_dequantize on the CPU: a [rows, cols] matrix of any format of the table to f32, one row per
// work item, through native/dl_dequant.h's per-block reference (the same floats as ggml).
#include <cstring>

#include "common.h"
#include "dl_dequant.h"
#include "dl_half.h"
#include "dl_repack.h"

// --- Kernels

// One row of a blocked format other than INT8.
static void dequantize_block_row(int32_t dtype, const uint8_t* row, float* y, int64_t cols) {
  const int64_t block_len = DL_DTYPES[dtype].block_len;
  for (int64_t b = 0; b < cols / block_len; b++) dl_dequant_block(dtype, row, b, y + b * block_len);
}

static void dequantize_plain_row(int32_t dtype, const uint8_t* row, float* y, int64_t cols) {
  if (dtype == DL_DTYPE_F32) {
    std::memcpy(y, row, (size_t)cols * sizeof(float));
    return;
  }
  // Halves may lie at any even offset of a file: read them bytewise.
  for (int64_t j = 0; j < cols; j++) {
    uint16_t h;
    std::memcpy(&h, row + 2 * j, 2);
    y[j] = dtype == DL_DTYPE_F16 ? dl_f16_to_f32(h) : dl_bf16_to_f32(h);
  }
}

// --- Launcher

extern "C" DL_API int32_t dl_dequantize(dl_context* ctx, float* dst, const void* src, int32_t src_dtype, int64_t rows,
                                        int64_t cols) {
  const char* fn = "dl_dequantize";
  DL_TRY(dl_validate_dequantize(fn, ctx, dst, src, dl_dtype_unpacked(src_dtype), rows, cols));
  if (rows == 0) return DL_OK;
  const auto* bytes = static_cast<const uint8_t*>(src);
  const int64_t row_stride = (int64_t)dl_dtype_bytes(src_dtype, (uint64_t)cols);  // bytes of one row's blocks
  const int threads = dl_threads_for(ctx, rows * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t* row = bytes + r * row_stride;
    float* y = dst + r * cols;
    if (src_dtype == DL_DTYPE_Q4_0_R16) {
      for (int64_t b = 0; b < cols / DL_QK; b++) {
        const dl_block_q4_0 blk = dl_r16_block(bytes, rows, cols, r, b);
        dl_dequant_q4_0(&blk, y + b * DL_QK);
      }
    } else if (src_dtype == DL_DTYPE_INT8) {
      // The row scales follow all rows, so they are 4-byte aligned only when rows * cols is.
      float scale;
      std::memcpy(&scale, bytes + rows * row_stride + r * 4, 4);
      dl_dequant_int8_row(reinterpret_cast<const int8_t*>(row), scale, y, cols);
    } else if (dl_dtype_is_quantized(src_dtype)) {
      dequantize_block_row(src_dtype, row, y, cols);
    } else {
      dequantize_plain_row(src_dtype, row, y, cols);
    }
  }
  return DL_OK;
}
