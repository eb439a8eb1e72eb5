// The Q4_0_R16 layout (ffi/denollm.h, after DL_DTYPE_TABLE): where each Q4_0 block of a row lies,
// and the repack both ways. Host code of the CPU build: the loader's dl_repack, and dl_embedding and
// dl_dequantize reading a block back.
#pragma once

#include <cstdint>
#include <cstring>

#include "dl_quant.h"

// Rows per group, and the bytes of one block of a group (16 scales, then 4 chunks of 16 x 4 bytes).
constexpr int64_t DL_R16_ROWS = 16;
constexpr int64_t DL_R16_BLOCK_BYTES = DL_R16_ROWS * (int64_t)sizeof(dl_block_q4_0);
static_assert(DL_R16_BLOCK_BYTES == 288, "a group's block: 32 bytes of scales, 256 of nibbles");

// Block b of row r of a [rows, cols] Q4_0_R16 matrix at base, as a plain Q4_0 block.
inline dl_block_q4_0 dl_r16_block(const uint8_t* base, int64_t rows, int64_t cols, int64_t r, int64_t b) {
  const int64_t nb = cols / DL_QK, row_bytes = nb * (int64_t)sizeof(dl_block_q4_0);
  const int64_t grouped = rows / DL_R16_ROWS * DL_R16_ROWS;
  dl_block_q4_0 out;
  if (r >= grouped) {
    std::memcpy(&out, base + r * row_bytes + b * (int64_t)sizeof(dl_block_q4_0), sizeof out);
    return out;
  }
  const uint8_t* blk = base + r / DL_R16_ROWS * DL_R16_ROWS * row_bytes + b * DL_R16_BLOCK_BYTES;
  const int64_t lane = r % DL_R16_ROWS;
  std::memcpy(&out.d, blk + 2 * lane, 2);
  for (int t = 0; t < 4; t++) std::memcpy(out.qs + 4 * t, blk + 32 + 64 * t + 4 * lane, 4);
  return out;
}

// Q4_0 [rows, cols] at src to Q4_0_R16 at dst (to_r16) or back; dst and src do not overlap.
inline void dl_r16_repack(uint8_t* dst, const uint8_t* src, int64_t rows, int64_t cols, bool to_r16) {
  const int64_t nb = cols / DL_QK, row_bytes = nb * (int64_t)sizeof(dl_block_q4_0);
  const int64_t grouped = rows / DL_R16_ROWS * DL_R16_ROWS;
  for (int64_t g = 0; g < grouped; g += DL_R16_ROWS) {
    for (int64_t b = 0; b < nb; b++) {
      const int64_t packed = g * row_bytes + b * DL_R16_BLOCK_BYTES;
      for (int64_t lane = 0; lane < DL_R16_ROWS; lane++) {
        const int64_t plain = (g + lane) * row_bytes + b * (int64_t)sizeof(dl_block_q4_0);
        // (offset in the packed block, offset in the plain block, bytes): d, then qs[4t, 4t + 4).
        const int64_t parts[5][3] = {{2 * lane, 0, 2},
                                     {32 + 4 * lane, 2, 4},
                                     {96 + 4 * lane, 6, 4},
                                     {160 + 4 * lane, 10, 4},
                                     {224 + 4 * lane, 14, 4}};
        for (const auto& p : parts) {
          if (to_r16) std::memcpy(dst + packed + p[0], src + plain + p[1], (size_t)p[2]);
          else std::memcpy(dst + plain + p[1], src + packed + p[0], (size_t)p[2]);
        }
      }
    }
  }
  std::memcpy(dst + grouped * row_bytes, src + grouped * row_bytes, (size_t)((rows - grouped) * row_bytes));
}
