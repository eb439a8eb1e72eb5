// The x86 kernel sets of W8A8 dl_matmul: w8a8_tile.h compiled twice, AVX2 (maddubs + madd) and
// AVX-512 VNNI on 256-bit vectors (vpdpbusd: one instruction for the 4-product sums).
#include <algorithm>
#include <cstdint>

#include "common.h"
#include "quant.h"
#include "w8a8.h"

// 2:4 positions to pshufb controls, per position byte (two groups): each group's 4 output bytes
// pick value 0 or 1 of its pair (0x80 zeroes a pruned slot), the high group's offset by 2.
struct Expand24 {
  uint64_t ctrl[256] = {};
  constexpr Expand24() {
    for (int b = 0; b < 256; b++) {
      uint64_t c = 0;
      for (int half = 0; half < 2; half++) {
        const int nib = (b >> (4 * half)) & 15;
        for (int p = 0; p < 4; p++) {
          uint64_t sel = 0x80;
          if ((nib & 3) == p) sel = (uint64_t)(2 * half);
          else if ((nib >> 2) == p) sel = (uint64_t)(2 * half + 1);
          c |= sel << (8 * (4 * half + p));
        }
      }
      ctrl[b] = c;
    }
  }
};
static constexpr Expand24 DL_EXPAND_2_4{};

#if defined(__x86_64__)
// GCC 12.2's AVX-512 intrinsics trip -Wuninitialized where they are inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define DL_W8A8_HSUM                                                                      \
  inline int32_t hsum_i32(__m256i v) {                                                    \
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); \
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));                                       \
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));                                        \
    return _mm_cvtsi128_si32(s);                                                          \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace w8a8_avx2 {
DL_W8A8_HSUM
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#include "w8a8_tile.h"
}  // namespace w8a8_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
namespace w8a8_vnni {
DL_W8A8_HSUM
inline __m256i dot_us(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
#include "w8a8_tile.h"
}  // namespace w8a8_vnni
#pragma GCC pop_options

static const DlW8a8Isa avx2_set = {"avx2", w8a8_avx2::dense, w8a8_avx2::sparse_2_4, w8a8_avx2::int8_2_4};
static const DlW8a8Isa vnni_set = {"avx512-vnni", w8a8_vnni::dense, w8a8_vnni::sparse_2_4, w8a8_vnni::int8_2_4};
const DlW8a8Isa* dl_w8a8_avx2() { return &avx2_set; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return &vnni_set; }
#else
const DlW8a8Isa* dl_w8a8_avx2() { return nullptr; }
const DlW8a8Isa* dl_w8a8_avx512_vnni() { return nullptr; }
#endif
