#include "elementwise.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_info.h"

namespace ember {
namespace {

void bias_relu_scalar(const float* x, const float* bias, std::size_t bias_len, float* y,
                      std::size_t begin, std::size_t end) {
  for (std::size_t i = begin; i < end; ++i) {
    float v = x[i] + (bias_len ? bias[i % bias_len] : 0.0f);
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

#if defined(__x86_64__)
// The vector paths handle the bias row by row (bias_len consecutive elements share one bias
// pattern), so the bias load stays contiguous; the scalar tail finishes each row.
__attribute__((target("avx512f"))) void bias_relu_avx512(const float* x, const float* bias,
                                                         std::size_t bias_len, float* y,
                                                         std::size_t n) {
  const __m512 zero = _mm512_setzero_ps();
  const std::size_t row = bias_len ? bias_len : n;
  for (std::size_t start = 0; start < n; start += row) {
    const std::size_t len = std::min(row, n - start);
    std::size_t i = 0;
    for (; i + 16 <= len; i += 16) {
      __m512 v = _mm512_loadu_ps(x + start + i);
      if (bias_len) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + i));
      _mm512_storeu_ps(y + start + i, _mm512_max_ps(v, zero));
    }
    if (i < len) {
      const __mmask16 m = static_cast<__mmask16>((1u << (len - i)) - 1u);
      __m512 v = _mm512_maskz_loadu_ps(m, x + start + i);
      if (bias_len) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + i));
      _mm512_mask_storeu_ps(y + start + i, m, _mm512_max_ps(v, zero));
    }
  }
}

__attribute__((target("avx2"))) void bias_relu_avx2(const float* x, const float* bias,
                                                    std::size_t bias_len, float* y, std::size_t n) {
  const __m256 zero = _mm256_setzero_ps();
  const std::size_t row = bias_len ? bias_len : n;
  for (std::size_t start = 0; start < n; start += row) {
    const std::size_t len = std::min(row, n - start);
    std::size_t i = 0;
    for (; i + 8 <= len; i += 8) {
      __m256 v = _mm256_loadu_ps(x + start + i);
      if (bias_len) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + i));
      _mm256_storeu_ps(y + start + i, _mm256_max_ps(v, zero));
    }
    if (bias_len) {
      for (; i < len; ++i) {
        float v = x[start + i] + bias[i];
        y[start + i] = v > 0.0f ? v : 0.0f;
      }
    } else {
      bias_relu_scalar(x + start, nullptr, 0, y + start, i, len);
    }
  }
}
#endif

}  // namespace

const char* bias_relu_f32_isa() {
#if defined(__x86_64__)
  if (cpu_info().avx512f) return "avx512";
  if (cpu_info().avx2) return "avx2";
#endif
  return "scalar";
}

void bias_relu_f32(const float* x, const float* bias, std::size_t bias_len, float* y,
                   std::size_t n) {
#if defined(__x86_64__)
  if (cpu_info().avx512f) return bias_relu_avx512(x, bias, bias_len, y, n);
  if (cpu_info().avx2) return bias_relu_avx2(x, bias, bias_len, y, n);
#endif
  bias_relu_scalar(x, bias, bias_len, y, 0, n);
}

}  // namespace ember
