// Three vector types with one interface (Vec512: AVX-512, 16 lanes; Vec256: AVX2+FMA, 8 lanes;
// Vec1: portable scalar), so math_kernels.h writes each kernel once and is compiled per ISA.
// Every method is always_inline and carries its ISA's target attribute: it may only be called from
// a function compiled for that ISA (math_kernels.h marks its functions with EMBER_MATH_TARGET).
//
// min/max follow the x86 rule "if either operand is NaN, the second one is returned", so
// min(limit, x) keeps a NaN x: clamps written that way let NaN through to the result.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define EMBER_AVX512_TARGET __attribute__((target("avx512f,fma")))
#define EMBER_AVX2_TARGET __attribute__((target("avx2,fma")))
#define EMBER_INLINE inline __attribute__((always_inline))

namespace ember::simd {

#if defined(__x86_64__)

struct Vec512 {
  using R = __m512;
  using M = __mmask16;
  static constexpr int W = 16;

  EMBER_AVX512_TARGET EMBER_INLINE static R zero() { return _mm512_setzero_ps(); }
  EMBER_AVX512_TARGET EMBER_INLINE static R set1(float v) { return _mm512_set1_ps(v); }
  EMBER_AVX512_TARGET EMBER_INLINE static R load(const float* p) { return _mm512_loadu_ps(p); }
  EMBER_AVX512_TARGET EMBER_INLINE static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  // The first n lanes (0 <= n <= W); the others read as 0 and are never touched in memory.
  EMBER_AVX512_TARGET EMBER_INLINE static M first(std::size_t n) {
    return n >= 16 ? static_cast<M>(0xFFFF) : static_cast<M>((1u << n) - 1u);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static R loadn(const float* p, std::size_t n) {
    return _mm512_maskz_loadu_ps(first(n), p);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static R loadn_or(const float* p, std::size_t n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first(n), p);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static void storen(float* p, R v, std::size_t n) {
    _mm512_mask_storeu_ps(p, first(n), v);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static R add(R a, R b) { return _mm512_add_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R div(R a, R b) { return _mm512_div_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  EMBER_AVX512_TARGET EMBER_INLINE static R fnma(R a, R b, R c) {
    return _mm512_fnmadd_ps(a, b, c);  // c - a * b
  }
  EMBER_AVX512_TARGET EMBER_INLINE static R fms(R a, R b, R c) { return _mm512_fmsub_ps(a, b, c); }
  EMBER_AVX512_TARGET EMBER_INLINE static R min(R a, R b) { return _mm512_min_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R max(R a, R b) { return _mm512_max_ps(a, b); }
  EMBER_AVX512_TARGET EMBER_INLINE static R abs(R a) { return _mm512_abs_ps(a); }
  EMBER_AVX512_TARGET EMBER_INLINE static R round(R a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // p * 2^n for integral n in [-151, 128]: scalef rounds denormals and overflows correctly.
  EMBER_AVX512_TARGET EMBER_INLINE static R ldexp(R p, R n) { return _mm512_scalef_ps(p, n); }
  EMBER_AVX512_TARGET EMBER_INLINE static M lt(R a, R b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static M le(R a, R b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static bool any(M m) { return m != 0; }
  EMBER_AVX512_TARGET EMBER_INLINE static bool all(M m) { return m == 0xFFFF; }
  // m ? a : b, lane by lane
  EMBER_AVX512_TARGET EMBER_INLINE static R select(M m, R a, R b) {
    return _mm512_mask_blend_ps(m, b, a);
  }
  EMBER_AVX512_TARGET EMBER_INLINE static float hsum(R a) { return _mm512_reduce_add_ps(a); }
  EMBER_AVX512_TARGET EMBER_INLINE static float hmax(R a) { return _mm512_reduce_max_ps(a); }
};

struct Vec256 {
  using R = __m256;
  using M = __m256;
  static constexpr int W = 8;

  EMBER_AVX2_TARGET EMBER_INLINE static R zero() { return _mm256_setzero_ps(); }
  EMBER_AVX2_TARGET EMBER_INLINE static R set1(float v) { return _mm256_set1_ps(v); }
  EMBER_AVX2_TARGET EMBER_INLINE static R load(const float* p) { return _mm256_loadu_ps(p); }
  EMBER_AVX2_TARGET EMBER_INLINE static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  EMBER_AVX2_TARGET EMBER_INLINE static __m256i first(std::size_t n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n > 8 ? 8 : n)), lanes);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static R loadn(const float* p, std::size_t n) {
    return _mm256_maskload_ps(p, first(n));
  }
  EMBER_AVX2_TARGET EMBER_INLINE static R loadn_or(const float* p, std::size_t n, float fill) {
    const __m256i m = first(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  EMBER_AVX2_TARGET EMBER_INLINE static void storen(float* p, R v, std::size_t n) {
    _mm256_maskstore_ps(p, first(n), v);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static R add(R a, R b) { return _mm256_add_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R div(R a, R b) { return _mm256_div_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  EMBER_AVX2_TARGET EMBER_INLINE static R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  EMBER_AVX2_TARGET EMBER_INLINE static R fms(R a, R b, R c) { return _mm256_fmsub_ps(a, b, c); }
  EMBER_AVX2_TARGET EMBER_INLINE static R min(R a, R b) { return _mm256_min_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R max(R a, R b) { return _mm256_max_ps(a, b); }
  EMBER_AVX2_TARGET EMBER_INLINE static R abs(R a) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static R round(R a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // p * 2^n for integral n in [-252, 254], as two exact power-of-two factors so that results in
  // the denormal range round once and 2^128 overflows to inf.
  EMBER_AVX2_TARGET EMBER_INLINE static R ldexp(R p, R n) {
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1);
    const __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const R s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const R s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static M lt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  EMBER_AVX2_TARGET EMBER_INLINE static M le(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  EMBER_AVX2_TARGET EMBER_INLINE static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  EMBER_AVX2_TARGET EMBER_INLINE static bool all(M m) { return _mm256_movemask_ps(m) == 0xFF; }
  EMBER_AVX2_TARGET EMBER_INLINE static R select(M m, R a, R b) {
    return _mm256_blendv_ps(b, a, m);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static float hsum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  EMBER_AVX2_TARGET EMBER_INLINE static float hmax(R a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

#endif  // __x86_64__

// One lane, plain C++: the reference path and the fallback for CPUs without AVX2. No FMA here
// (baseline x86-64 has none and std::fma would be a slow libm call), so fma(a, b, c) rounds twice.
struct Vec1 {
  using R = float;
  using M = bool;
  static constexpr int W = 1;

  EMBER_INLINE static R zero() { return 0.0f; }
  EMBER_INLINE static R set1(float v) { return v; }
  EMBER_INLINE static R load(const float* p) { return *p; }
  EMBER_INLINE static void store(float* p, R v) { *p = v; }
  EMBER_INLINE static R loadn(const float* p, std::size_t n) { return n ? *p : 0.0f; }
  EMBER_INLINE static R loadn_or(const float* p, std::size_t n, float fill) {
    return n ? *p : fill;
  }
  EMBER_INLINE static void storen(float* p, R v, std::size_t n) {
    if (n) *p = v;
  }
  EMBER_INLINE static R add(R a, R b) { return a + b; }
  EMBER_INLINE static R sub(R a, R b) { return a - b; }
  EMBER_INLINE static R mul(R a, R b) { return a * b; }
  EMBER_INLINE static R div(R a, R b) { return a / b; }
  EMBER_INLINE static R fma(R a, R b, R c) { return a * b + c; }
  EMBER_INLINE static R fnma(R a, R b, R c) { return c - a * b; }
  EMBER_INLINE static R fms(R a, R b, R c) { return a * b - c; }
  EMBER_INLINE static R min(R a, R b) { return a < b ? a : b; }
  EMBER_INLINE static R max(R a, R b) { return a > b ? a : b; }
  EMBER_INLINE static R abs(R a) { return std::fabs(a); }
  EMBER_INLINE static R round(R a) { return std::nearbyint(a); }
  static R ldexp(R p, R n) {
    if (!(n == n)) return n;  // NaN: a float -> int conversion of it would be undefined
    return std::ldexp(p, static_cast<int>(n));
  }
  EMBER_INLINE static M lt(R a, R b) { return a < b; }
  EMBER_INLINE static M le(R a, R b) { return a <= b; }
  EMBER_INLINE static bool any(M m) { return m; }
  EMBER_INLINE static bool all(M m) { return m; }
  EMBER_INLINE static R select(M m, R a, R b) { return m ? a : b; }
  EMBER_INLINE static float hsum(R a) { return a; }
  EMBER_INLINE static float hmax(R a) { return a; }
};

}  // namespace ember::simd
