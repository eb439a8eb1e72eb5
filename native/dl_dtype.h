// The storage formats of DL_DTYPE_TABLE (ffi/denollm.h) as a traits array, for host code of both
// builds: validation, byte counts, and the kernel families' lists of supported formats.
#pragma once

#include <cstdint>

#include "denollm.h"

struct dl_dtype_info {
  int32_t id;
  const char* name;       // lower-case: "f32"
  int32_t ggml_type;      // GGUF / ggml type id
  const char* gguf_name;  // as GGUF and safetensors spell it: "F32"
  int64_t block_len;      // elements per block (1 for plain types)
  int64_t block_bytes;    // bytes per block
  int64_t row_bytes;      // per-row data after all rows' blocks (INT8's f32 scales), else 0
};

inline constexpr dl_dtype_info DL_DTYPES[] = {
#define DL_DTYPE_INFO_ROW_(suffix, id, name, ggml_type, gguf_name, block_len, block_bytes, row_bytes) \
  {id, name, ggml_type, gguf_name, block_len, block_bytes, row_bytes},
    DL_DTYPE_TABLE(DL_DTYPE_INFO_ROW_)
#undef DL_DTYPE_INFO_ROW_
};

constexpr bool dl_dtype_table_is_dense() {
  for (int32_t i = 0; i < DL_DTYPE_COUNT; i++) {
    if (DL_DTYPES[i].id != i || DL_DTYPES[i].block_len < 1 || DL_DTYPES[i].block_bytes < 1) return false;
  }
  return true;
}
static_assert(sizeof(DL_DTYPES) / sizeof(DL_DTYPES[0]) == DL_DTYPE_COUNT, "DL_DTYPE_COUNT counts the table");
static_assert(dl_dtype_table_is_dense(), "dl_dtype ids are 0, 1, 2, ... in table order, blocks non-empty");

// The row of a valid dtype id, or NULL.
inline const dl_dtype_info* dl_dtype_find(int32_t dtype) {
  return dtype >= 0 && dtype < DL_DTYPE_COUNT ? &DL_DTYPES[dtype] : nullptr;
}

// Name of a dtype id for messages: "f16", or "an unknown dtype" outside the table.
inline const char* dl_dtype_name(int32_t dtype) {
  const dl_dtype_info* info = dl_dtype_find(dtype);
  return info != nullptr ? info->name : "an unknown dtype";
}

// Bytes of num_elements elements of a valid dtype (num_elements a multiple of its block_len), not
// counting per-row data: the whole size of a format without row_bytes.
inline uint64_t dl_dtype_bytes(int32_t dtype, uint64_t num_elements) {
  const dl_dtype_info& info = DL_DTYPES[dtype];
  return num_elements / (uint64_t)info.block_len * (uint64_t)info.block_bytes;
}

// Bytes of a [rows, cols] matrix of a valid dtype (cols a multiple of its block_len), per-row data
// included.
inline uint64_t dl_matrix_bytes(int32_t dtype, uint64_t rows, uint64_t cols) {
  return rows * (dl_dtype_bytes(dtype, cols) + (uint64_t)DL_DTYPES[dtype].row_bytes);
}

// True for the block-quantized formats (every row after BF16).
inline bool dl_dtype_is_quantized(int32_t dtype) { return dtype > DL_DTYPE_BF16 && dtype < DL_DTYPE_COUNT; }

// The format a repacked row of the table (Q4_0_R16) holds the values of: the same shapes and byte
// counts, so the CPU launchers validate it as that format. Other formats map to themselves. The
// bit sets below leave the repacked rows out: only the CPU launchers admit them, through this.
inline int32_t dl_dtype_unpacked(int32_t dtype) { return dtype == DL_DTYPE_Q4_0_R16 ? DL_DTYPE_Q4_0 : dtype; }

// True for the 2:4 sparse rows.
inline bool dl_dtype_is_sparse_2_4(int32_t dtype) { return dtype >= DL_DTYPE_F16_2_4 && dtype <= DL_DTYPE_INT4_2_4; }

// --- The formats each kernel family has kernels for, as bit sets of dtype ids. Extending one is
// adding the format's kernels to both builds' dispatch, then its bit here.

constexpr uint32_t dl_dtype_bit(int32_t dtype) { return 1u << dtype; }

// Plain floating-point element types: every kernel that stores or reads per-element values.
constexpr uint32_t DL_FLOAT_DTYPES = dl_dtype_bit(DL_DTYPE_F32) | dl_dtype_bit(DL_DTYPE_F16) |
                                     dl_dtype_bit(DL_DTYPE_BF16);
// Weight matrices read by dl_matmul and embedding tables read by dl_embedding.
// The quantized formats: every block format of the table and INT8.
constexpr uint32_t DL_QUANTIZED_DTYPES =
    dl_dtype_bit(DL_DTYPE_Q4_0) | dl_dtype_bit(DL_DTYPE_Q4_1) | dl_dtype_bit(DL_DTYPE_Q5_0) |
    dl_dtype_bit(DL_DTYPE_Q5_1) | dl_dtype_bit(DL_DTYPE_Q8_0) | dl_dtype_bit(DL_DTYPE_Q2_K) |
    dl_dtype_bit(DL_DTYPE_Q3_K) | dl_dtype_bit(DL_DTYPE_Q4_K) | dl_dtype_bit(DL_DTYPE_Q5_K) |
    dl_dtype_bit(DL_DTYPE_Q6_K) | dl_dtype_bit(DL_DTYPE_Q8_K) | dl_dtype_bit(DL_DTYPE_INT8) |
    dl_dtype_bit(DL_DTYPE_INT4);
// Those this build has matmul and embedding kernels for: all, on the CPU and under nvcc
// (cuda/matmul_quant.cu, cuda/embedding.cu).
constexpr uint32_t DL_BUILD_QUANTIZED_DTYPES = DL_QUANTIZED_DTYPES;
// The W8A8 and 2:4 formats (issue 11): dl_matmul only (embedding tables never take them). Both
// builds have kernels for all (cpu/matmul/w8a8*, sparse*; cuda/matmul_w8a8.cu, matmul_quant.cu).
constexpr uint32_t DL_W8A8_SPARSE_DTYPES =
    dl_dtype_bit(DL_DTYPE_W8A8) | dl_dtype_bit(DL_DTYPE_W8A8_MIXED) | dl_dtype_bit(DL_DTYPE_F16_2_4) |
    dl_dtype_bit(DL_DTYPE_INT8_2_4) | dl_dtype_bit(DL_DTYPE_W8A8_2_4) | dl_dtype_bit(DL_DTYPE_INT4_2_4);
constexpr uint32_t DL_BUILD_W8A8_SPARSE_DTYPES = DL_W8A8_SPARSE_DTYPES;
constexpr uint32_t DL_MATMUL_DTYPES = DL_FLOAT_DTYPES | DL_BUILD_QUANTIZED_DTYPES | DL_BUILD_W8A8_SPARSE_DTYPES;
constexpr uint32_t DL_EMBEDDING_DTYPES = DL_FLOAT_DTYPES | DL_BUILD_QUANTIZED_DTYPES;
// dl_convert, on either side.
constexpr uint32_t DL_CONVERT_DTYPES = DL_FLOAT_DTYPES;
// KV cache formats of dl_kv_write and dl_paged_attention.
constexpr uint32_t DL_KV_CACHE_DTYPES = DL_FLOAT_DTYPES;
static_assert(DL_DTYPE_COUNT <= 32, "the supported-format bit sets are 32 bits wide");
