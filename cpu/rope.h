// The RoPE of one token's row, shared by dl_rope (cpu/rope.cpp) and dl_rope_kv_write
// (cpu/rope_kv_write.cpp).
#pragma once

#include <cstdint>

// Rotates the first num_heads heads of `row` in place by `position` (NEOX or interleaved pairs),
// with cos_sin [2, rotary_dim / 2] as scratch. One out-of-line definition, so both kernels run the
// same code and give the same bits.
void dl_rope_token(float* row, int32_t position, const float* inv_freq, int32_t num_heads, int32_t head_dim,
                   int32_t rotary_dim, int32_t style, float* cos_sin);
