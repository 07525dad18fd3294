// The math kernels (softmax, LayerNorm, GELU, attention), written once against a vector type V
// (math_simd.h) and compiled once per ISA: math_ops.cpp includes this file three times, each time
// with EMBER_MATH_NS (the namespace), EMBER_MATH_VEC (the vector type) and EMBER_MATH_TARGET (the
// function attribute of that ISA) defined. No include guard on purpose, except for the shared
// declarations at the top.
//
// Everything here is single-threaded over the range it is given; math_ops.cpp splits the work
// over OpenMP threads and picks the ISA.

#ifndef EMBER_MATH_KERNELS_SHARED
#define EMBER_MATH_KERNELS_SHARED

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "math_simd.h"

namespace ember::math {

// One multi-head attention call. Element strides; the head dimension of q, k, v and out is
// contiguous. Head h of batch b reads q[b, :, h*D:(h+1)*D], k likewise, v[b, :, h*Dv:(h+1)*Dv].
struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  const float* mask;  // nullptr, or a [B, H, Sq, Sk] view whose strides may be 0 (broadcast)
  float* out;         // [B, Sq, H*Dv]
  std::int64_t B, H, Sq, Sk, D, Dv;
  std::int64_t q_sb, q_ss, k_sb, k_ss, v_sb, v_ss, o_sb, o_ss;
  std::int64_t m_sb, m_sh, m_sq, m_sk;  // m_sk is 0 or 1
  float scale;
  std::int64_t ldkt;  // Sk rounded up to a multiple of 16: the row stride of packed K^T
};

// Per-thread scratch of an attention call: packed K^T of one head and the score rows of one
// row tile. `packed` remembers which (b, h) sits in kt, so consecutive row blocks of one head
// (a static OpenMP schedule hands them to the same thread) pack K once.
struct AttentionScratch {
  float* kt;      // [D, ldkt]
  float* scores;  // [kMaxRowTile, ldkt]
  std::int64_t packed = -1;
};

constexpr int kMaxRowTile = 8;

// Cephes' rational approximation of erfc(a) exp(a^2) (see src/ember/ops/special.py), highest
// power first; Q has a leading 1.
constexpr float kErfcP[] = {2.46196981473530512524e-10f, 5.64189564831068821977e-1f,
                            7.46321056442269912687e0f,   4.86371970985681366614e1f,
                            1.96520832956077098242e2f,   5.26445194995477358631e2f,
                            9.34528527171957607540e2f,   1.02755188689515710272e3f,
                            5.57535335369399327526e2f};
constexpr float kErfcQ[] = {1.32281951154744992508e1f, 8.67072140885989742329e1f,
                            3.54937778887819891062e2f, 9.75708501743205489753e2f,
                            1.82390916687909736289e3f, 2.24633760818710981792e3f,
                            1.65666309194161350182e3f, 5.57535340817727675546e2f};

}  // namespace ember::math

#endif  // EMBER_MATH_KERNELS_SHARED

namespace ember::math::EMBER_MATH_NS {

using V = EMBER_MATH_VEC;
using R = V::R;
constexpr int W = V::W;
// Register tiles of the attention micro-kernels: MR query rows x NV vectors of keys (Q K^T) or of
// value columns (P V). AVX-512: 6 x 4 = 24 accumulators of 32 registers; AVX2: 6 x 2 of 16.
constexpr int MR = W == 8 ? 6 : W == 16 ? 6 : 4;
constexpr int NV = W == 8 ? 2 : 4;
static_assert(MR <= kMaxRowTile, "row tile exceeds the scratch");

constexpr float kInf = std::numeric_limits<float>::infinity();

// The first n lanes of p (all W when n >= W), the others `fill`.
EMBER_MATH_TARGET EMBER_INLINE static R load_or(const float* p, std::size_t n, float fill) {
  return n >= static_cast<std::size_t>(W) ? V::load(p) : V::loadn_or(p, n, fill);
}

template <std::size_t N>
EMBER_MATH_TARGET EMBER_INLINE static R horner(R x, const float (&c)[N]) {
  R p = V::set1(c[0]);
  for (std::size_t i = 1; i < N; ++i) p = V::fma(p, x, V::set1(c[i]));
  return p;
}

// Horner for a polynomial with an implicit leading coefficient 1.
template <std::size_t N>
EMBER_MATH_TARGET EMBER_INLINE static R horner1(R x, const float (&c)[N]) {
  R p = V::add(x, V::set1(c[0]));
  for (std::size_t i = 1; i < N; ++i) p = V::fma(p, x, V::set1(c[i]));
  return p;
}

// exp(x), Cephes expf: x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, so r is exact to a few
// ulp of x), a degree-6 polynomial for e^r (about 1 ulp), then a scale by 2^n that rounds
// denormal results once. exp(+inf) = inf, exp(-inf) = 0, exp(nan) = nan.
EMBER_MATH_TARGET EMBER_INLINE static R vexp(R x) {
  x = V::max(V::set1(-104.0f), x);  // exp(-104) < 2^-150: rounds to 0
  x = V::min(V::set1(89.0f), x);    // exp(89) > FLT_MAX: overflows to inf in ldexp
  const R n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  R r = V::fnma(n, V::set1(0.693359375f), x);
  r = V::fnma(n, V::set1(-2.12194440e-4f), r);
  R p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::ldexp(p, n);
}

// Gelu(x) = 0.5 x erfc(-x / sqrt 2), the form without cancellation for x << 0. With a = -x/sqrt2,
// erfc(|a|) = exp(-a^2) P(|a|) / Q(|a|) (Cephes' rational for 1 <= |a| < 8, which also holds to
// 1e-8 relative on [0, 1) and [8, 10.1], past which erfc underflows), and erfc(a) = 2 - erfc(|a|)
// for a < 0. One branch for every lane: no data-dependent paths. exp(-a^2) = exp(-x^2/2) takes
// x^2 as hi + lo (an FMA gives lo), so the exponent carries no rounding error.
EMBER_MATH_TARGET EMBER_INLINE static R gelu_erf(R x) {
  const R one = V::set1(1.0f);
  // Past |x| = 20 erfc is 0 or 2 in float; clamping keeps inf out of the rational (NaN stays).
  const R xc = V::min(V::set1(20.0f), V::max(V::set1(-20.0f), x));
  const R a = V::mul(xc, V::set1(-0.70710678118654752f));
  const R ab = V::abs(a);
  const R hi = V::mul(xc, xc);
  const R lo = V::fms(xc, xc, hi);
  const R e = V::mul(vexp(V::mul(hi, V::set1(-0.5f))), V::fnma(lo, V::set1(0.5f), one));
  const R tail = V::mul(e, V::div(horner(ab, kErfcP), horner1(ab, kErfcQ)));  // erfc(|a|)
  const R erfc = V::select(V::lt(a, V::zero()), V::sub(V::set1(2.0f), tail), tail);
  return V::mul(V::mul(V::set1(0.5f), x), erfc);
}

// The tanh form: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3);
// no cancellation for x << 0, and exp overflowing to inf gives the right limit 0.
EMBER_MATH_TARGET EMBER_INLINE static R gelu_tanh(R x) {
  const R x2 = V::mul(x, x);
  const R m2u = V::mul(x, V::fma(x2, V::set1(-2.0f * 0.7978845608028654f * 0.044715f),
                                 V::set1(-2.0f * 0.7978845608028654f)));
  return V::div(x, V::add(V::set1(1.0f), vexp(m2u)));
}

// --- softmax -------------------------------------------------------------------------------------

// The shift of a softmax row: its max, or 0 when the max is +-inf or nan. A row of -inf then
// gives exp = 0 everywhere, sum 0 and 0 * (1/0) = nan, as the NumPy reference's 0/0 does.
static inline float softmax_shift(float m) { return std::isfinite(m) ? m : 0.0f; }

EMBER_MATH_TARGET static float row_max(const float* x, std::size_t n) {
  R m0 = V::set1(-kInf), m1 = m0;
  std::size_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    m0 = V::max(m0, V::load(x + j));
    m1 = V::max(m1, V::load(x + j + W));
  }
  for (; j < n; j += W) m0 = V::max(m0, load_or(x + j, n - j, -kInf));
  return V::hmax(V::max(m0, m1));
}

// y = exp(x - shift) over n elements; returns their sum. y may be x.
EMBER_MATH_TARGET static float exp_shifted(const float* x, float* y, std::size_t n, float shift) {
  const R s = V::set1(shift);
  R acc0 = V::zero(), acc1 = V::zero();
  std::size_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const R e0 = vexp(V::sub(V::load(x + j), s));
    const R e1 = vexp(V::sub(V::load(x + j + W), s));
    V::store(y + j, e0);
    V::store(y + j + W, e1);
    acc0 = V::add(acc0, e0);
    acc1 = V::add(acc1, e1);
  }
  for (; j < n; j += W) {
    const std::size_t left = n - j;
    const R e = vexp(V::sub(load_or(x + j, left, -kInf), s));  // padding lanes: exp(-inf) = 0
    V::storen(y + j, e, left);
    acc0 = V::add(acc0, e);
  }
  return V::hsum(V::add(acc0, acc1));
}

EMBER_MATH_TARGET static void scale_row(float* y, std::size_t n, float factor) {
  const R f = V::set1(factor);
  std::size_t j = 0;
  for (; j + W <= n; j += W) V::store(y + j, V::mul(V::load(y + j), f));
  if (j < n) V::storen(y + j, V::mul(V::loadn(y + j, n - j), f), n - j);
}

// Softmax over each of `rows` contiguous rows of n elements. y may be x.
EMBER_MATH_TARGET void softmax_rows(const float* x, float* y, std::size_t rows, std::size_t n) {
  for (std::size_t r = 0; r < rows; ++r, x += n, y += n) {
    const float shift = softmax_shift(row_max(x, n));
    const float sum = exp_shifted(x, y, n, shift);
    scale_row(y, n, 1.0f / sum);
  }
}

// --- LayerNorm -----------------------------------------------------------------------------------

// LayerNorm over each of `rows` rows of n elements: y = (x - mean) / sqrt(var + eps) * scale +
// bias. With a residual, the row is x + residual, which is also written to sum (LayerNorm(x +
// residual) with one pass less over memory). bias and residual may be null; y may be x.
//
// Mean and variance take two passes, the second corrected: m1 = sum(x) / n carries the rounding
// error of a long float32 sum (large when the row sits far from 0), d = x - m1 is then exact to
// a few ulp, and mean = m1 + sum(d) / n, var = sum(d^2) / n - (sum(d) / n)^2 recover what m1 lost.
// The result is as accurate as float64 statistics, up to the rounding of the output.
EMBER_MATH_TARGET void layer_norm_rows(const float* x, const float* residual, float* sum,
                                       const float* scale, const float* bias, float epsilon,
                                       float* y, std::size_t rows, std::size_t n) {
  const R zero = V::zero();
  const float inv_n = 1.0f / static_cast<float>(n);
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    if (residual) {
      const float* rr = residual + r * n;
      float* sr = sum + r * n;
      std::size_t j = 0;
      for (; j + W <= n; j += W) V::store(sr + j, V::add(V::load(xr + j), V::load(rr + j)));
      if (j < n) V::storen(sr + j, V::add(V::loadn(xr + j, n - j), V::loadn(rr + j, n - j)), n - j);
      xr = sr;
    }
    R a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    std::size_t j = 0;
    for (; j + 4 * W <= n; j += 4 * W) {
      a0 = V::add(a0, V::load(xr + j));
      a1 = V::add(a1, V::load(xr + j + W));
      a2 = V::add(a2, V::load(xr + j + 2 * W));
      a3 = V::add(a3, V::load(xr + j + 3 * W));
    }
    for (; j < n; j += W) a0 = V::add(a0, V::loadn(xr + j, n - j));
    const float m1 = V::hsum(V::add(V::add(a0, a1), V::add(a2, a3))) * inv_n;
    const R m = V::set1(m1);
    R s0 = zero, s1 = zero;  // sum(d)
    a0 = a1 = zero;          // sum(d^2)
    j = 0;
    for (; j + 2 * W <= n; j += 2 * W) {
      const R d0 = V::sub(V::load(xr + j), m), d1 = V::sub(V::load(xr + j + W), m);
      s0 = V::add(s0, d0);
      s1 = V::add(s1, d1);
      a0 = V::fma(d0, d0, a0);
      a1 = V::fma(d1, d1, a1);
    }
    for (; j < n; j += W) {
      const R d = V::sub(load_or(xr + j, n - j, m1), m);  // padding lanes: d = 0
      s0 = V::add(s0, d);
      a0 = V::fma(d, d, a0);
    }
    const float dm = V::hsum(V::add(s0, s1)) * inv_n;
    const float var = std::max(V::hsum(V::add(a0, a1)) * inv_n - dm * dm, 0.0f);
    // x - (m1 + dm) as (x - m1) - dm: m1 + dm rounded to a float would lose what dm adds.
    const R dmv = V::set1(dm);
    const R rstd = V::set1(1.0f / std::sqrt(var + epsilon));
    j = 0;
    for (; j + W <= n; j += W) {
      const R d = V::sub(V::sub(V::load(xr + j), m), dmv);
      const R t = V::mul(V::mul(d, rstd), V::load(scale + j));
      V::store(yr + j, bias ? V::add(t, V::load(bias + j)) : t);
    }
    if (j < n) {
      const std::size_t left = n - j;
      const R d = V::sub(V::sub(V::loadn(xr + j, left), m), dmv);
      const R t = V::mul(V::mul(d, rstd), V::loadn(scale + j, left));
      V::storen(yr + j, bias ? V::add(t, V::loadn(bias + j, left)) : t, left);
    }
  }
}

// --- GELU ----------------------------------------------------------------------------------------

// y = Gelu(x + bias) over n elements; bias (length bias_len, 0 = none) repeats along the
// buffer, which must then hold whole rows of bias_len. y may be x.
EMBER_MATH_TARGET void gelu(const float* x, const float* bias, std::size_t bias_len, float* y,
                            std::size_t n, bool tanh_form) {
  const std::size_t row = bias_len ? bias_len : n;
  for (std::size_t start = 0; start < n; start += row) {
    const std::size_t len = row < n - start ? row : n - start;
    const float* xr = x + start;
    float* yr = y + start;
    std::size_t j = 0;
    for (; j < len; j += W) {
      const std::size_t left = len - j;
      R v = left >= static_cast<std::size_t>(W) ? V::load(xr + j) : V::loadn(xr + j, left);
      if (bias_len) v = V::add(v, left >= static_cast<std::size_t>(W) ? V::load(bias + j)
                                                                        : V::loadn(bias + j, left));
      const R g = tanh_form ? gelu_tanh(v) : gelu_erf(v);
      if (left >= static_cast<std::size_t>(W))
        V::store(yr + j, g);
      else
        V::storen(yr + j, g, left);
    }
  }
}

// --- attention -----------------------------------------------------------------------------------

// kt[d, j] = k[j, d] for one head, columns Sk..ldkt zero.
EMBER_MATH_TARGET static void pack_kt(const float* k, std::int64_t k_ss, std::int64_t Sk,
                                      std::int64_t D, std::int64_t ldkt, float* kt) {
  for (std::int64_t d = 0; d < D; ++d)
    for (std::int64_t j = Sk; j < ldkt; ++j) kt[d * ldkt + j] = 0.0f;
  // Blocks of 16 keys: their rows are read once, and the 16-float runs written per d stay in L1.
  for (std::int64_t j0 = 0; j0 < Sk; j0 += 16) {
    const std::int64_t j1 = j0 + 16 < Sk ? j0 + 16 : Sk;
    for (std::int64_t d = 0; d < D; ++d) {
      float* dst = kt + d * ldkt;
      for (std::int64_t j = j0; j < j1; ++j) dst[j] = k[j * k_ss + d];
    }
  }
}

// s[i, j0 + c*W + lane] = (q_i . k_j) * scale + mask_i[j] for MR rows and C vectors of keys.
template <int C>
EMBER_MATH_TARGET EMBER_INLINE static void scores_tile(const AttentionArgs& a,
                                                       const float* const* qr,
                                                       const float* const* mr, const float* kt,
                                                       std::int64_t j0, float* s) {
  R acc[MR][C];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[i][c] = V::zero();
  const float* ktp = kt + j0;
  for (std::int64_t d = 0; d < a.D; ++d, ktp += a.ldkt) {
    R kv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) kv[c] = V::load(ktp + c * W);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const R qv = V::set1(qr[i][d]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[i][c] = V::fma(qv, kv[c], acc[i][c]);
    }
  }
  const R scale = V::set1(a.scale);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const std::int64_t j = j0 + c * W;
      R val = V::mul(acc[i][c], scale);
      if (mr) {
        if (a.m_sk == 0) {
          val = V::add(val, V::set1(mr[i][0]));
        } else if (j + W <= a.Sk) {
          val = V::add(val, V::load(mr[i] + j));
        } else if (j < a.Sk) {
          val = V::add(val, V::loadn(mr[i] + j, static_cast<std::size_t>(a.Sk - j)));
        }
      }
      V::store(s + i * a.ldkt + j, val);
    }
  }
}

// o_i[dv0 + ...] = (sum_j p[i, j] v_j[dv0 + ...]) * inv[i] for MR rows (the first `rows` are
// stored) and C vectors of value columns, the last of which holds `last` valid lanes.
template <int C>
EMBER_MATH_TARGET EMBER_INLINE static void pv_tile(const AttentionArgs& a, const float* s,
                                                   const float* v, std::int64_t dv0,
                                                   std::size_t last, float* const* orow,
                                                   const float* inv, int rows) {
  R acc[MR][C];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[i][c] = V::zero();
  const float* vp = v + dv0;
  const bool full = last == static_cast<std::size_t>(W);
  for (std::int64_t j = 0; j < a.Sk; ++j, vp += a.v_ss) {
    R vv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C - 1; ++c) vv[c] = V::load(vp + c * W);
    vv[C - 1] = full ? V::load(vp + (C - 1) * W) : V::loadn(vp + (C - 1) * W, last);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const R p = V::set1(s[i * a.ldkt + j]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[i][c] = V::fma(p, vv[c], acc[i][c]);
    }
  }
  // Constant indices only (the loop is unrolled; `rows` cuts it short): acc stays in registers.
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    const R f = V::set1(inv[i]);
    float* o = orow[i] + dv0;
#pragma GCC unroll 4
    for (int c = 0; c < C - 1; ++c) V::store(o + c * W, V::mul(acc[i][c], f));
    V::storen(o + (C - 1) * W, V::mul(acc[i][C - 1], f), last);
  }
}

// One scores tile of the widest width <= C that fits in `left` vectors; returns its width.
template <int C>
EMBER_MATH_TARGET EMBER_INLINE static std::int64_t scores_tiles(const AttentionArgs& a,
                                                                const float* const* qr,
                                                                const float* const* mr,
                                                                const float* kt, std::int64_t j0,
                                                                std::int64_t left, float* s) {
  if constexpr (C > 1) {
    if (left < C) return scores_tiles<C - 1>(a, qr, mr, kt, j0, left, s);
  }
  scores_tile<C>(a, qr, mr, kt, j0, s);
  return C;
}

// One P V tile of the widest width <= C that fits in `left` vectors; returns its width.
template <int C>
EMBER_MATH_TARGET EMBER_INLINE static std::int64_t pv_tiles(const AttentionArgs& a, const float* s,
                                                            const float* v, std::int64_t dv0,
                                                            std::int64_t left, float* const* orow,
                                                            const float* inv, int rows) {
  if constexpr (C > 1) {
    if (left < C) return pv_tiles<C - 1>(a, s, v, dv0, left, orow, inv, rows);
  }
  const std::int64_t tail = a.Dv - dv0 - (C - 1) * W;  // valid lanes of the tile's last vector
  pv_tile<C>(a, s, v, dv0, static_cast<std::size_t>(tail < W ? tail : W), orow, inv, rows);
  return C;
}

// Rows [r0, r1) of head h of batch b: scores = Q K^T * scale + mask, softmax per row, times V,
// straight into out. The query rows go MR at a time; K^T is packed once per head and thread.
EMBER_MATH_TARGET void attention_rows(const AttentionArgs& a, std::int64_t b, std::int64_t h,
                                      std::int64_t r0, std::int64_t r1, AttentionScratch& ws) {
  const std::int64_t bh = b * a.H + h;
  if (ws.packed != bh) {
    pack_kt(a.k + b * a.k_sb + h * a.D, a.k_ss, a.Sk, a.D, a.ldkt, ws.kt);
    ws.packed = bh;
  }
  const float* q = a.q + b * a.q_sb + h * a.D;
  const float* v = a.v + b * a.v_sb + h * a.Dv;
  float* out = a.out + b * a.o_sb + h * a.Dv;
  const float* mask = a.mask ? a.mask + b * a.m_sb + h * a.m_sh : nullptr;
  float* s = ws.scores;
  const std::int64_t nkv = a.ldkt / W;  // vectors of keys, padding included
  const std::int64_t ndv = (a.Dv + W - 1) / W;
  for (std::int64_t i0 = r0; i0 < r1; i0 += MR) {
    const int rows = static_cast<int>(r1 - i0 < MR ? r1 - i0 : MR);
    // A short last tile repeats its last row: computed, never stored.
    const float* qr[MR];
    const float* mr[MR];
    float* orow[MR];
    for (int i = 0; i < MR; ++i) {
      const std::int64_t row = i0 + (i < rows ? i : rows - 1);
      qr[i] = q + row * a.q_ss;
      mr[i] = mask ? mask + row * a.m_sq : nullptr;
      orow[i] = out + row * a.o_ss;
    }
    for (std::int64_t c = 0; c < nkv;) {
      const std::int64_t left = nkv - c;
      c += scores_tiles<NV>(a, qr, mask ? mr : nullptr, ws.kt, c * W, left, s);
    }
    float inv[MR];
    for (int i = 0; i < rows; ++i) {
      float* si = s + i * a.ldkt;
      const float shift = softmax_shift(row_max(si, static_cast<std::size_t>(a.Sk)));
      inv[i] = 1.0f / exp_shifted(si, si, static_cast<std::size_t>(a.Sk), shift);
    }
    for (std::int64_t c = 0; c < ndv;) {
      const std::int64_t left = ndv - c;
      c += pv_tiles<NV>(a, s, v, c * W, left, orow, inv, rows);
    }
  }
}

}  // namespace ember::math::EMBER_MATH_NS
