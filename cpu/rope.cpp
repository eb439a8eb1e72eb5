// Rotary position embedding, in place, NEOX (rotate_half) or interleaved pairs.
#include <cmath>

#include "common.h"
#include "rope.h"

// --- Kernel

// The angle is position * inv_freq[i] rounded to f32 and cos/sin are f32 (cosf/sinf), as in
// Hugging Face's float32 rotary embedding. cos/sin are computed once per token, shared by its heads.
__attribute__((noinline)) void dl_rope_token(float* row, int32_t position, const float* inv_freq, int32_t num_heads,
                                             int32_t head_dim, int32_t rotary_dim, int32_t style,
                                             float* cos_sin /* [2, rotary_dim / 2] */) {
  const int32_t half = rotary_dim / 2;
  float* cos_v = cos_sin;
  float* sin_v = cos_sin + half;
  for (int32_t i = 0; i < half; i++) {
    const float theta = (float)position * inv_freq[i];
    cos_v[i] = std::cos(theta);
    sin_v[i] = std::sin(theta);
  }
  for (int32_t h = 0; h < num_heads; h++) {
    float* x = row + (int64_t)h * head_dim;  // [head_dim]
    if (style == DL_ROPE_NEOX) {
#pragma omp simd
      for (int32_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos_v[i] - b * sin_v[i];
        x[i + half] = b * cos_v[i] + a * sin_v[i];
      }
    } else {
      for (int32_t i = 0; i < half; i++) {
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cos_v[i] - b * sin_v[i];
        x[2 * i + 1] = b * cos_v[i] + a * sin_v[i];
      }
    }
  }
}

// --- Launcher

size_t dl_rope_workspace_bytes(int threads, int64_t rotary_dim) {
  return (size_t)threads * (size_t)rotary_dim * sizeof(float);  // cos and sin, rotary_dim / 2 each
}

extern "C" DL_API int32_t dl_rope(dl_context* ctx, float* x, const int32_t* positions, const float* inv_freq,
                                  int32_t num_tokens, int32_t num_heads, int32_t head_dim, int32_t rotary_dim,
                                  int32_t row_stride, int32_t style) {
  return dl_guard("dl_rope", [&]() -> int32_t {
    const char* fn = "dl_rope";
    DL_TRY(dl_validate_rope(fn, ctx, x, positions, inv_freq, num_tokens, num_heads, head_dim, rotary_dim,
                            row_stride, style));
    if (num_tokens == 0) return DL_OK;
    const int threads = dl_threads_for(ctx, (int64_t)num_tokens * num_heads * rotary_dim * 8);
    void* workspace = nullptr;
    DL_TRY(dl_workspace(fn, ctx, dl_rope_workspace_bytes(threads, rotary_dim), &workspace));
    float* scratch = static_cast<float*>(workspace);  // [threads, rotary_dim]
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int32_t t = 0; t < num_tokens; t++) {
      dl_rope_token(x + (int64_t)t * row_stride, positions[t], inv_freq, num_heads, head_dim, rotary_dim, style,
                    scratch + (size_t)dl_thread_id() * rotary_dim);
    }
    return DL_OK;
  });
}
