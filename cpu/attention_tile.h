// Attention tile kernels, written once and included once per instruction set (no guard), after vexp.h.
//
// The including namespace provides LANES, the vector types `vf` / `vi`, vfma(a, b, c), vload(const
// float*), vstore(float*, vf), vsum(v) (horizontal sum) and vexp(v). Everything here is then
// compiled for that target. A query's result depends only on its own scores and the cache, never on
// the other queries of the batch: each step below has a fixed order per query.

// dst[n] = src[n] widened to f32 (f16 or bf16 cache blocks).
static void widen(float* dst, const uint16_t* src, int64_t n, int32_t dtype) {
  if (dtype == DL_DTYPE_F16) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = dl_f16_to_f32(src[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = dl_bf16_to_f32(src[i]);
  }
}

// scores[r] = scale * q · k[r] for num_keys rows, four keys at a time for independent FMA chains.
// Each score sums LANES-wide partials over head_dim in order, then vsum, then the scalar tail: the
// same order whichever of the four slots the key takes.
static void score_keys(const float* q, const float* k, int32_t num_keys, int32_t head_dim, float scale,
                       float* scores) {
  const int32_t body = head_dim / LANES * LANES;
  int32_t r = 0;
  for (; r + 4 <= num_keys; r += 4) {
    const float* k0 = k + (int64_t)r * head_dim;
    vf s0 = vf{}, s1 = vf{}, s2 = vf{}, s3 = vf{};
    for (int32_t d = 0; d < body; d += LANES) {
      const vf qv = vload(q + d);
      s0 = vfma(qv, vload(k0 + d), s0);
      s1 = vfma(qv, vload(k0 + head_dim + d), s1);
      s2 = vfma(qv, vload(k0 + 2 * head_dim + d), s2);
      s3 = vfma(qv, vload(k0 + 3 * head_dim + d), s3);
    }
    const vf* sv[4] = {&s0, &s1, &s2, &s3};
    for (int i = 0; i < 4; i++) {
      float total = vsum(*sv[i]);
      for (int32_t d = body; d < head_dim; d++) total += q[d] * k0[i * (int64_t)head_dim + d];
      scores[r + i] = total * scale;
    }
  }
  for (; r < num_keys; r++) {
    const float* kr = k + (int64_t)r * head_dim;
    vf s0 = vf{};
    for (int32_t d = 0; d < body; d += LANES) s0 = vfma(vload(q + d), vload(kr + d), s0);
    float total = vsum(s0);
    for (int32_t d = body; d < head_dim; d++) total += q[d] * kr[d];
    scores[r] = total * scale;
  }
}

// a[d] = a[d] * c + sum_r p[r] v[r][d], keys in order for every d; up to four vectors of a stay in
// registers while the keys stream past.
static void accumulate_values(float* a, float c, const float* p, const float* v, int32_t num_keys,
                              int32_t head_dim) {
  int32_t d = 0;
  for (; d + 4 * LANES <= head_dim; d += 4 * LANES) {
    vf a0 = vload(a + d) * c, a1 = vload(a + d + LANES) * c;
    vf a2 = vload(a + d + 2 * LANES) * c, a3 = vload(a + d + 3 * LANES) * c;
    for (int32_t r = 0; r < num_keys; r++) {
      const float* vr = v + (int64_t)r * head_dim + d;
      const vf pr = vf{} + p[r];
      a0 = vfma(pr, vload(vr), a0);
      a1 = vfma(pr, vload(vr + LANES), a1);
      a2 = vfma(pr, vload(vr + 2 * LANES), a2);
      a3 = vfma(pr, vload(vr + 3 * LANES), a3);
    }
    vstore(a + d, a0);
    vstore(a + d + LANES, a1);
    vstore(a + d + 2 * LANES, a2);
    vstore(a + d + 3 * LANES, a3);
  }
  for (; d + LANES <= head_dim; d += LANES) {
    vf a0 = vload(a + d) * c;
    for (int32_t r = 0; r < num_keys; r++) a0 = vfma(vf{} + p[r], vload(v + (int64_t)r * head_dim + d), a0);
    vstore(a + d, a0);
  }
  for (; d < head_dim; d++) {
    float a0 = a[d] * c;
    for (int32_t r = 0; r < num_keys; r++) a0 += p[r] * v[(int64_t)r * head_dim + d];
    a[d] = a0;
  }
}

// One cache tile for the `group` query heads that share a KV head (flash-attention update):
// scores s = scale * q·k, then with the new running max m' = max(m, max s):
// l = l * exp(m - m') + sum exp(s - m'), acc = acc * exp(m - m') + sum exp(s - m') v.
// The exps of a tile run as one vector pass over its scores (padded with -inf, whose exp is 0).
static void attend_tile(const float* q,  // [group, head_dim]
                        const float* k,  // [num_keys, head_dim]
                        const float* v,  // [num_keys, head_dim]
                        int32_t num_keys, int32_t group, int32_t head_dim, float scale,
                        float* scores,   // [num_keys rounded up to LANES] scratch
                        float* m,        // [group] running max
                        float* l,        // [group] running sum of exp
                        float* acc) {    // [group, head_dim] unnormalized output
  const int32_t padded = (num_keys + LANES - 1) / LANES * LANES;
  for (int32_t j = 0; j < group; j++) {
    score_keys(q + (int64_t)j * head_dim, k, num_keys, head_dim, scale, scores);
    float tile_max = -std::numeric_limits<float>::infinity();
    for (int32_t r = 0; r < num_keys; r++) tile_max = scores[r] > tile_max ? scores[r] : tile_max;
    for (int32_t r = num_keys; r < padded; r++) scores[r] = -std::numeric_limits<float>::infinity();
    const float m_new = m[j] > tile_max ? m[j] : tile_max;
    const float correction = vexp(vf{} + (m[j] - m_new))[0];  // exp(-inf) = 0 on the first tile
    vf sum = vf{};
    for (int32_t r = 0; r < padded; r += LANES) {
      const vf p = vexp(vload(scores + r) - m_new);
      vstore(scores + r, p);
      sum += p;
    }
    accumulate_values(acc + (int64_t)j * head_dim, correction, scores, v, num_keys, head_dim);
    l[j] = l[j] * correction + vsum(sum);
    m[j] = m_new;
  }
}
