// Vectorized expf, written once and included once per instruction set (no guard), like matmul/float_tile.h.
//
// The including namespace provides LANES, the GCC vector types `vf` (LANES floats) and `vi` (LANES
// int32), and vfma(a, b, c) = a * b + c (fused where the target has FMA). Every path evaluates the
// same Cephes-style formula in the same order, so AVX-512, AVX2 and the portable path agree to the
// last bit where they all fuse, and within an ulp otherwise.
//
// exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two so
// n * ln2_hi is exact), p a degree-7 polynomial (Cephes expf: degree-5 fit for (e^r - 1 - r) / r²).
// Max error about 1 ulp for results >= FLT_MIN (checked exhaustively against exp in double). 2^n is
// applied as 2^(n >> 1) * 2^(n - (n >> 1)) so overflow gives +inf, subnormal results round once and
// x <= -104 (exp(-inf) too) gives +0. NaN stays NaN.

inline vf vexp(vf x) {
  const vf lo = vf{} - 104.0f, hi = vf{} + 89.0f;
  const vf xc = x < lo ? lo : (x > hi ? hi : x);  // NaN fails both tests and passes through
  // Round x / ln 2 to nearest: adding 1.5 * 2^23 leaves the integer in the low mantissa bits.
  const vf magic = vf{} + 12582912.0f;
  const vf t = vfma(xc, vf{} + 1.44269504088896341f, magic);
  const vf n = t - magic;
  vi ni;
  __builtin_memcpy(&ni, &t, sizeof ni);
  ni -= 0x4b400000;  // bits of 1.5 * 2^23
  vf r = vfma(n, vf{} - 0.693359375f, xc);
  r = vfma(n, vf{} + 2.12194440e-4f, r);
  const vf r2 = r * r;
  vf p = vf{} + 1.9875691500e-4f;
  p = vfma(p, r, vf{} + 1.3981999507e-3f);
  p = vfma(p, r, vf{} + 8.3334519073e-3f);
  p = vfma(p, r, vf{} + 4.1665795894e-2f);
  p = vfma(p, r, vf{} + 1.6666665459e-1f);
  p = vfma(p, r, vf{} + 5.0000001201e-1f);
  p = vfma(p, r2, r) + 1.0f;
  const vi na = ni >> 1, nb = ni - na;
  const vi sa = (na + 127) << 23, sb = (nb + 127) << 23;
  vf fa, fb;
  __builtin_memcpy(&fa, &sa, sizeof fa);
  __builtin_memcpy(&fb, &sb, sizeof fb);
  const vf y = p * fa * fb;
  return x != x ? x : y;
}
