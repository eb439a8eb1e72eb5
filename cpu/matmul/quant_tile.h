// The column driver of the quantized kernels, written once and included once per instruction set
// (no guard), after the format's dot functions, so it is compiled for that target.
//
// The including namespace provides TILE_M. A format is a type F with
//   template <int RM> static void rows(const uint8_t* w_row, const uint8_t* act, int64_t act_row_bytes,
//                                      int64_t k, float* res);
// that writes res[i] = dot(w row, activation row i) for the RM rows from act on: each weight block is
// unpacked once and used RM times, and every row's sum is taken in the same order whatever RM is, so
// a row's result does not depend on the batch around it.

template <class F>
static void rows_dispatch(int rm, const uint8_t* w_row, const uint8_t* act, int64_t act_row_bytes, int64_t k,
                          float* res) {
  static_assert(TILE_M >= 1 && TILE_M <= 8, "rows_dispatch handles tiles of 1 to 8 rows");
  switch (rm) {
    case 8: if constexpr (TILE_M >= 8) return F::template rows<8>(w_row, act, act_row_bytes, k, res); break;
    case 7: if constexpr (TILE_M >= 7) return F::template rows<7>(w_row, act, act_row_bytes, k, res); break;
    case 6: if constexpr (TILE_M >= 6) return F::template rows<6>(w_row, act, act_row_bytes, k, res); break;
    case 5: if constexpr (TILE_M >= 5) return F::template rows<5>(w_row, act, act_row_bytes, k, res); break;
    case 4: if constexpr (TILE_M >= 4) return F::template rows<4>(w_row, act, act_row_bytes, k, res); break;
    case 3: if constexpr (TILE_M >= 3) return F::template rows<3>(w_row, act, act_row_bytes, k, res); break;
    case 2: if constexpr (TILE_M >= 2) return F::template rows<2>(w_row, act, act_row_bytes, k, res); break;
    default: break;
  }
  F::template rows<1>(w_row, act, act_row_bytes, k, res);
}

// Columns [c0, c1) for all rows. Decode (m <= TILE_M) is one sweep over the weight rows, one
// sequential stream. Prefill sweeps a block of weight rows small enough to stay in L2 across every
// tile of TILE_M activation rows before moving on, so each weight byte comes from DRAM once.
template <class F>
static void gemm_cols(const DlQuantGemm& g, int64_t c0, int64_t c1) {
  const int64_t block_cols = g.w_row_bytes >= 256 * 1024 ? 1 : 256 * 1024 / g.w_row_bytes;
  for (int64_t b0 = c0; b0 < c1; b0 += block_cols) {
    const int64_t b1 = b0 + block_cols < c1 ? b0 + block_cols : c1;
    for (int64_t r = 0; r < g.m; r += TILE_M) {
      const int rm = (int)(g.m - r < TILE_M ? g.m - r : TILE_M);
      const uint8_t* act = g.act + r * g.act_row_bytes;  // [rm, act_row_bytes]
      float* out = g.out + r * g.ldo;                     // [rm, ldo]
      for (int64_t c = b0; c < b1; c++) {
        float res[TILE_M];
        rows_dispatch<F>(rm, g.w + c * g.w_row_bytes, act, g.act_row_bytes, g.k, res);
        const float scale = g.row_scale != nullptr ? g.row_scale[c] : 1.0f;
        const float bias = g.bias != nullptr ? g.bias[c] : 0.0f;
        for (int i = 0; i < rm; i++) out[i * g.ldo + c] = res[i] * scale + bias;
      }
    }
  }
}
