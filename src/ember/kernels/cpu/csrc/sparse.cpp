// The sparse matmul (sparse.h): building the CSR, the kernels (AVX-512 with a portable fallback,
// chosen at run time), the OpenMP split, and the ember._C bindings (SparseMatMul, a Program step).
#include "sparse.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <utility>

#include "bindings.h"
#include "cpu_info.h"
#include "program.h"
#include "threads.h"

namespace ember::sparse {
namespace {

[[noreturn]] void invalid(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_str(const int64_t* s, std::size_t n) {
  std::string r = "(";
  for (std::size_t i = 0; i < n; ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (n == 1 ? ",)" : ")");
}

constexpr int kLanes = 16;      // rows of a per panel: one AVX-512 vector of floats
constexpr int kMaxPanels = 4;   // panels per pass: 4 independent accumulators per nonzero
constexpr int kWindow = 32;     // k per ELLPACK window: two AVX-512 registers of a
// From this many rows of a on, the panel kernel beats one ELLPACK pass per row.
constexpr int64_t kPanelRowsMin = 4;
// Below this many flops (2 per nonzero per row) one thread runs it: an OpenMP fork/join (~1.3 us
// here) costs more than splitting saves; the same bound as dnnl_common.h's kParallelMinFlops.
constexpr double kParallelMinFlops = 256e3;

Activation parse_activation(const std::string& name, const std::vector<double>& params) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  struct Row {
    const char* name;
    Activation::Kind kind;
    int n_params;
    double alpha, beta;  // ONNX defaults
  };
  static const Row rows[] = {
      {"Relu", Activation::kRelu, 0, 0.0, 0.0},
      {"LeakyRelu", Activation::kLeakyRelu, 1, 0.01, 0.0},
      {"Clip", Activation::kClip, 2, -inf, inf},
      {"HardSigmoid", Activation::kHardSigmoid, 2, 0.2, 0.5},
  };
  Activation act;
  if (name.empty()) {
    if (!params.empty()) invalid("SparseMatMul: activation_params given without an activation");
    return act;
  }
  for (const Row& r : rows) {
    if (name != r.name) continue;
    if (static_cast<int>(params.size()) > r.n_params)
      invalid("SparseMatMul: activation " + name + " takes at most " +
              std::to_string(r.n_params) + " activation_params, got " +
              std::to_string(params.size()));
    double a = params.size() > 0 ? params[0] : r.alpha;
    const double b = params.size() > 1 ? params[1] : r.beta;
    if (r.kind == Activation::kClip && a > b) a = b;  // ONNX Clip with min > max gives max
    act.kind = r.kind;
    act.alpha = static_cast<float>(a);
    act.beta = static_cast<float>(b);
    return act;
  }
  std::string known;
  for (const Row& r : rows) known += std::string(known.empty() ? "" : ", ") + r.name;
  invalid("SparseMatMul: activation '" + name + "' is not supported (supported: " + known +
          "); dnnl.MatMul fuses the others");
}

inline float activate(float x, const Activation& act) {
  switch (act.kind) {
    case Activation::kRelu: return x < 0.0f ? 0.0f : x;
    case Activation::kLeakyRelu: return x < 0.0f ? act.alpha * x : x;
    case Activation::kClip: return std::min(std::max(x, act.alpha), act.beta);
    case Activation::kHardSigmoid:
      return std::max(0.0f, std::min(1.0f, act.alpha * x + act.beta));
    default: return x;
  }
}

// What the kernels read: the CSR over output columns plus the epilogue.
struct Csr {
  const int64_t* start;
  const int32_t* k;
  const float* v;
  const float* bias;
  int64_t K, N;
  Activation act;
};

// The sliced ELLPACK copy (sparse.h).
struct Ell {
  const int32_t* order;
  const uint8_t* steps;
  const int64_t* slice_step;
  const uint8_t* k;
  const float* v;
  int64_t windows, slices;
};

// ---------------------------------------------------------------------------------------------
// Portable kernels (any CPU; gcc vectorizes the panel loop for the baseline ISA)
// ---------------------------------------------------------------------------------------------

// One row of a: y[n] = act(sum_j a[k_j] * v_j + bias[n]) for n in [n0, n1).
void row_portable(const Csr& c, const float* a, int64_t n0, int64_t n1, float* y) {
  for (int64_t n = n0; n < n1; ++n) {
    float s0 = 0.0f, s1 = 0.0f;
    int64_t p = c.start[n];
    const int64_t e = c.start[n + 1];
    for (; p + 2 <= e; p += 2) {
      s0 += a[c.k[p]] * c.v[p];
      s1 += a[c.k[p + 1]] * c.v[p + 1];
    }
    if (p < e) s0 += a[c.k[p]] * c.v[p];
    y[n] = activate(s0 + s1 + c.bias[n], c.act);
  }
}

// `panels` panels of kLanes rows each (`rows` of them real), laid out (panels, K, kLanes); y is
// the first of those rows of the output.
void panels_portable(const Csr& c, const float* panel, int panels, int64_t rows, int64_t n0,
                     int64_t n1, float* y) {
  const int64_t stride = c.K * kLanes;
  for (int64_t n = n0; n < n1; ++n) {
    float acc[kMaxPanels][kLanes] = {};
    for (int64_t p = c.start[n]; p < c.start[n + 1]; ++p) {
      const float v = c.v[p];
      const float* r = panel + static_cast<int64_t>(c.k[p]) * kLanes;
      for (int t = 0; t < panels; ++t)
        for (int i = 0; i < kLanes; ++i) acc[t][i] += v * r[t * stride + i];
    }
    for (int64_t m = 0; m < rows; ++m)
      y[m * c.N + n] = activate(acc[m / kLanes][m % kLanes] + c.bias[n], c.act);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 kernels
// ---------------------------------------------------------------------------------------------
#if defined(__x86_64__)
#define EMBER_SPARSE_AVX512 __attribute__((target("avx512f,fma")))

// One row of a, slices [s0, s1): per window, a's 32 values in two registers, permuted by each
// step's indices. Two accumulators: a step's FMA does not wait for the previous step's.
EMBER_SPARSE_AVX512 void ell_avx512(const Csr& c, const Ell& e, const float* a, int64_t s0,
                                    int64_t s1, float* y) {
  const int64_t full = c.K / kWindow;  // windows read without a mask
  for (int64_t s = s0; s < s1; ++s) {
    const uint8_t* ix = e.k + e.slice_step[s] * kLanes;
    const float* v = e.v + e.slice_step[s] * kLanes;
    const uint8_t* steps = e.steps + s * e.windows;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t w = 0; w < e.windows; ++w) {
      const int n = steps[w];
      if (n == 0) continue;
      const float* aw = a + w * kWindow;
      __m512 lo, hi;
      if (w < full) {
        lo = _mm512_loadu_ps(aw);
        hi = _mm512_loadu_ps(aw + kLanes);
      } else {  // the last, partial window: never read past a's row
        const int64_t rest = c.K - w * kWindow;
        lo = _mm512_maskz_loadu_ps(
            static_cast<__mmask16>(rest >= kLanes ? 0xFFFFu : (1u << rest) - 1u), aw);
        hi = _mm512_maskz_loadu_ps(
            static_cast<__mmask16>(rest > kLanes ? (1u << (rest - kLanes)) - 1u : 0u),
            aw + kLanes);
      }
      int j = 0;
      for (; j + 2 <= n; j += 2) {
        const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ix)));
        const __m512i i1 =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ix + kLanes)));
        acc0 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, i0, hi), _mm512_loadu_ps(v), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, i1, hi), _mm512_loadu_ps(v + kLanes),
                               acc1);
        ix += 2 * kLanes;
        v += 2 * kLanes;
      }
      if (j < n) {
        const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ix)));
        acc0 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, i0, hi), _mm512_loadu_ps(v), acc0);
        ix += kLanes;
        v += kLanes;
      }
    }
    alignas(64) float out[kLanes];
    _mm512_store_ps(out, _mm512_add_ps(acc0, acc1));
    for (int i = 0; i < kLanes; ++i) {
      const int32_t n = e.order[s * kLanes + i];
      if (n >= 0) y[n] = activate(out[i] + c.bias[n], c.act);
    }
  }
}

// P panels at once: each nonzero is one broadcast times P panel rows (P independent FMA chains,
// doubled by splitting even and odd nonzeros).
template <int P>
EMBER_SPARSE_AVX512 void panels_avx512_t(const Csr& c, const float* panel, int64_t rows,
                                         int64_t n0, int64_t n1, float* y) {
  const int64_t stride = c.K * kLanes;
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc0[P], acc1[P];
    for (int t = 0; t < P; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    int64_t p = c.start[n];
    const int64_t e = c.start[n + 1];
    for (; p + 2 <= e; p += 2) {
      const float* r0 = panel + static_cast<int64_t>(c.k[p]) * kLanes;
      const float* r1 = panel + static_cast<int64_t>(c.k[p + 1]) * kLanes;
      const __m512 v0 = _mm512_set1_ps(c.v[p]), v1 = _mm512_set1_ps(c.v[p + 1]);
      for (int t = 0; t < P; ++t) {
        acc0[t] = _mm512_fmadd_ps(v0, _mm512_load_ps(r0 + t * stride), acc0[t]);
        acc1[t] = _mm512_fmadd_ps(v1, _mm512_load_ps(r1 + t * stride), acc1[t]);
      }
    }
    if (p < e) {
      const float* r0 = panel + static_cast<int64_t>(c.k[p]) * kLanes;
      const __m512 v0 = _mm512_set1_ps(c.v[p]);
      for (int t = 0; t < P; ++t)
        acc0[t] = _mm512_fmadd_ps(v0, _mm512_load_ps(r0 + t * stride), acc0[t]);
    }
    const __m512 b = _mm512_set1_ps(c.bias[n]);
    for (int t = 0; t < P; ++t) {
      alignas(64) float out[kLanes];
      _mm512_store_ps(out, _mm512_add_ps(_mm512_add_ps(acc0[t], acc1[t]), b));
      const int64_t m_end = std::min<int64_t>(kLanes, rows - t * kLanes);
      for (int64_t i = 0; i < m_end; ++i)
        y[(t * kLanes + i) * c.N + n] = activate(out[i], c.act);
    }
  }
}

void panels_avx512(const Csr& c, const float* panel, int panels, int64_t rows, int64_t n0,
                   int64_t n1, float* y) {
  switch (panels) {
    case 1: return panels_avx512_t<1>(c, panel, rows, n0, n1, y);
    case 2: return panels_avx512_t<2>(c, panel, rows, n0, n1, y);
    case 3: return panels_avx512_t<3>(c, panel, rows, n0, n1, y);
    default: return panels_avx512_t<4>(c, panel, rows, n0, n1, y);
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// ISA choice, work split
// ---------------------------------------------------------------------------------------------

Isa best_isa() {
#if defined(__x86_64__)
  const CpuInfo& c = cpu_info();
  if (c.avx512f && c.fma) return Isa::avx512;
#endif
  return Isa::scalar;
}

std::atomic<int> g_isa_limit{-1};  // -1: the best there is; tests lower it to check each path

// Output columns [n0, n1) of thread t of nt: equal shares of the nonzeros.
std::pair<int64_t, int64_t> share(const Csr& c, int t, int nt) {
  if (nt == 1) return {0, c.N};
  const int64_t nnz = c.start[c.N];
  const auto at = [&](int i) -> int64_t {
    if (i == nt) return c.N;
    const int64_t want = nnz * i / nt;
    return std::lower_bound(c.start, c.start + c.N, want) - c.start;
  };
  return {at(t), at(t + 1)};
}

// Slices [s0, s1) of thread t of nt: equal shares of the ELLPACK steps.
std::pair<int64_t, int64_t> share_slices(const Ell& e, int t, int nt) {
  if (nt == 1) return {0, e.slices};
  const int64_t steps = e.slice_step[e.slices];
  const auto at = [&](int i) -> int64_t {
    if (i == nt) return e.slices;
    return std::lower_bound(e.slice_step, e.slice_step + e.slices, steps * i / nt) - e.slice_step;
  };
  return {at(t), at(t + 1)};
}

// Rows [m0, m0 + rows) of a transposed into `panels` panels (panels, K, kLanes), rows past
// `rows` zero; this thread's share of k.
void fill_panels(const float* a, int64_t K, int64_t rows, int panels, float* panel, int t,
                 int nt) {
  const int64_t k0 = K * t / nt, k1 = K * (t + 1) / nt;
  for (int p = 0; p < panels; ++p) {
    float* dst = panel + p * K * kLanes;
    for (int i = 0; i < kLanes; ++i) {
      const int64_t m = p * kLanes + i;
      if (m < rows) {
        const float* src = a + m * K;
        for (int64_t k = k0; k < k1; ++k) dst[k * kLanes + i] = src[k];
      } else {
        for (int64_t k = k0; k < k1; ++k) dst[k * kLanes + i] = 0.0f;
      }
    }
  }
}

// A 64-byte aligned scratch buffer of the calling thread (the team's threads share it).
float* panel_buffer(std::size_t floats) {
  static thread_local std::vector<float> buf;
  if (buf.size() < floats + kLanes) buf.resize(floats + kLanes);
  const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

}  // namespace

Isa current_isa() {
  const int limit = g_isa_limit.load(std::memory_order_relaxed);
  const Isa best = best_isa();
  return limit < 0 ? best : static_cast<Isa>(std::min(limit, static_cast<int>(best)));
}

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : "scalar"; }

void set_isa(const std::string& name) {
  if (name == "auto") {
    g_isa_limit = -1;
    return;
  }
  Isa want;
  if (name == "avx512") {
    want = Isa::avx512;
  } else if (name == "scalar") {
    want = Isa::scalar;
  } else {
    invalid("set_sparse_isa: expected 'auto', 'avx512' or 'scalar', got '" + name + "'");
  }
  if (static_cast<int>(want) > static_cast<int>(best_isa()))
    invalid("set_sparse_isa: this CPU cannot run '" + name + "' (its best is '" +
            isa_name(best_isa()) + "')");
  g_isa_limit = static_cast<int>(want);
}

SparseMatMulKernel::SparseMatMulKernel(const float* b, int64_t b_rows, int64_t b_cols,
                                       bool trans_b, const float* bias,
                                       const std::string& activation,
                                       const std::vector<double>& activation_params,
                                       double alpha) {
  K_ = trans_b ? b_cols : b_rows;
  N_ = trans_b ? b_rows : b_cols;
  const int64_t shape[2] = {b_rows, b_cols};
  if (K_ == 0 || N_ == 0) invalid("SparseMatMul: b has shape " + shape_str(shape, 2) +
                                  ", with no elements");
  if (K_ > std::numeric_limits<int32_t>::max())
    invalid("SparseMatMul: K=" + std::to_string(K_) + " does not fit the int32 indices");
  act_ = parse_activation(activation, activation_params);
  // B[k, n] lives at b[n * K + k] under trans_b, else at b[k * N + n].
  const int64_t k_step = trans_b ? 1 : N_, n_step = trans_b ? K_ : 1;
  row_start_.assign(N_ + 1, 0);
  for (int64_t n = 0; n < N_; ++n) {
    int64_t count = 0;
    for (int64_t k = 0; k < K_; ++k) count += b[n * n_step + k * k_step] != 0.0f;
    row_start_[n + 1] = row_start_[n] + count;
  }
  k_.resize(row_start_[N_]);
  values_.resize(row_start_[N_]);
  const float scale = static_cast<float>(alpha);
  for (int64_t n = 0; n < N_; ++n) {
    int64_t p = row_start_[n];
    for (int64_t k = 0; k < K_; ++k) {
      const float v = b[n * n_step + k * k_step];
      if (v == 0.0f) continue;
      k_[p] = static_cast<int32_t>(k);
      values_[p++] = v * scale;
    }
  }
  bias_.assign(N_, 0.0f);
  if (bias) std::copy(bias, bias + N_, bias_.begin());
  build_ell();
}

void SparseMatMulKernel::build_ell() {
  // Outputs sorted by nonzero count (longest first): the rows of a slice are then about equally
  // long, so less padding.
  const int64_t slices = (N_ + kLanes - 1) / kLanes;
  windows_ = (K_ + kWindow - 1) / kWindow;
  std::vector<int32_t> by_count(N_);
  for (int64_t n = 0; n < N_; ++n) by_count[n] = static_cast<int32_t>(n);
  std::stable_sort(by_count.begin(), by_count.end(), [&](int32_t x, int32_t y) {
    return row_start_[x + 1] - row_start_[x] > row_start_[y + 1] - row_start_[y];
  });
  order_.assign(slices * kLanes, -1);
  std::copy(by_count.begin(), by_count.end(), order_.begin());
  steps_.assign(slices * windows_, 0);
  slice_step_.assign(slices + 1, 0);
  ell_k_.clear();
  ell_v_.clear();
  for (int64_t s = 0; s < slices; ++s) {
    int64_t cursor[kLanes], end[kLanes];  // each lane's next nonzero in the CSR (sorted by k)
    for (int i = 0; i < kLanes; ++i) {
      const int32_t n = order_[s * kLanes + i];
      cursor[i] = n < 0 ? 0 : row_start_[n];
      end[i] = n < 0 ? 0 : row_start_[n + 1];
    }
    int64_t total = 0;
    for (int64_t w = 0; w < windows_; ++w) {
      const int64_t k_end = (w + 1) * kWindow;
      int64_t count[kLanes], longest = 0;
      for (int i = 0; i < kLanes; ++i) {
        count[i] = 0;
        while (cursor[i] + count[i] < end[i] && k_[cursor[i] + count[i]] < k_end) ++count[i];
        longest = std::max(longest, count[i]);
      }
      steps_[s * windows_ + w] = static_cast<uint8_t>(longest);  // <= kWindow
      for (int64_t j = 0; j < longest; ++j) {
        for (int i = 0; i < kLanes; ++i) {
          const bool real = j < count[i];
          const int64_t p = cursor[i] + j;
          ell_k_.push_back(real ? static_cast<uint8_t>(k_[p] - w * kWindow) : 0);
          ell_v_.push_back(real ? values_[p] : 0.0f);
        }
      }
      for (int i = 0; i < kLanes; ++i) cursor[i] += count[i];
      total += longest;
    }
    slice_step_[s + 1] = slice_step_[s] + total;
  }
}

void SparseMatMulKernel::run(int64_t M, const float* a, float* y) const {
  if (M <= 0) return;
  const Csr c{row_start_.data(), k_.data(), values_.data(), bias_.data(), K_, N_, act_};
  const bool avx512 = current_isa() == Isa::avx512;
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(std::max(nnz(), N_));
  const int nt = flops < kParallelMinFlops
                     ? 1
                     : static_cast<int>(std::min<int64_t>(
                           thread_target().load(std::memory_order_relaxed), N_));

  if (M < kPanelRowsMin) {
    const int64_t slices = static_cast<int64_t>(slice_step_.size()) - 1;
    const Ell e{order_.data(), steps_.data(), slice_step_.data(), ell_k_.data(), ell_v_.data(),
                windows_, slices};
    const auto body = [&](int t, int n_threads) {
#if defined(__x86_64__)
      if (avx512) {
        const auto [s0, s1] = share_slices(e, t, n_threads);
        for (int64_t m = 0; m < M; ++m) ell_avx512(c, e, a + m * K_, s0, s1, y + m * N_);
        return;
      }
#endif
      const auto [n0, n1] = share(c, t, n_threads);
      for (int64_t m = 0; m < M; ++m) row_portable(c, a + m * K_, n0, n1, y + m * N_);
    };
    if (nt == 1) {
      body(0, 1);
    } else {
#pragma omp parallel num_threads(nt)
      body(omp_get_thread_num(), omp_get_num_threads());
    }
    return;
  }

  // Up to kMaxPanels * kLanes rows of a per pass, transposed into panels the team shares.
  constexpr int64_t kPassRows = kMaxPanels * kLanes;
  const int64_t first_panels = (std::min(M, kPassRows) + kLanes - 1) / kLanes;
  float* panel = panel_buffer(static_cast<std::size_t>(first_panels * K_ * kLanes));
  const auto body = [&](int t, int n_threads) {
    const auto [n0, n1] = share(c, t, n_threads);
    for (int64_t m0 = 0; m0 < M; m0 += kPassRows) {
      const int64_t rows = std::min(kPassRows, M - m0);
      const int panels = static_cast<int>((rows + kLanes - 1) / kLanes);
      fill_panels(a + m0 * K_, K_, rows, panels, panel, t, n_threads);
#pragma omp barrier
#if defined(__x86_64__)
      if (avx512) {
        panels_avx512(c, panel, panels, rows, n0, n1, y + m0 * N_);
      } else {
        panels_portable(c, panel, panels, rows, n0, n1, y + m0 * N_);
      }
#else
      panels_portable(c, panel, panels, rows, n0, n1, y + m0 * N_);
#endif
#pragma omp barrier
    }
  };
  if (nt == 1) {
    body(0, 1);
  } else {
#pragma omp parallel num_threads(nt)
    body(omp_get_thread_num(), omp_get_num_threads());
  }
}

}  // namespace ember::sparse

// -------------------------------------------------------------------------------------------------
// Bindings
// -------------------------------------------------------------------------------------------------

namespace nb = nanobind;
using namespace nb::literals;

namespace ember {
namespace {

using sparse::SparseMatMulKernel;
using ArrayIn = nb::ndarray<const float, nb::device::cpu>;
using ArrayOut = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

[[noreturn]] void invalid(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_of(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// A float32 array read as C-contiguous (a copy only when it is not).
struct Dense {
  const float* data = nullptr;
  std::vector<int64_t> shape;
  nb::object keep;
};

std::string describe(nb::handle h) {
  nb::object dtype = nb::getattr(h, "dtype", nb::none());
  if (dtype.is_none()) return nb::type_name(h.type()).c_str();
  return nb::str(dtype).c_str();
}

Dense read_dense(nb::handle h, const char* name) {
  nb::object obj = nb::borrow(h);
  for (int attempt = 0; attempt < 2; ++attempt) {
    ArrayIn a;
    if (!nb::try_cast(obj, a, false)) break;
    Dense d;
    d.shape.resize(a.ndim());
    bool contiguous = true;
    int64_t expect = 1;
    for (int i = static_cast<int>(a.ndim()) - 1; i >= 0; --i) {
      d.shape[i] = static_cast<int64_t>(a.shape(i));
      if (d.shape[i] != 1 && a.stride(i) != expect) contiguous = false;
      expect *= d.shape[i];
    }
    if (contiguous) {
      d.data = a.data();
      d.keep = std::move(obj);
      return d;
    }
    obj = nb::module_::import_("numpy").attr("ascontiguousarray")(obj);
  }
  throw nb::type_error(("SparseMatMul: " + std::string(name) +
                        " must be a float32 NumPy array, got " + describe(h))
                           .c_str());
}

// The Python wrapper of a bound C++ object: a step keeps its kernel alive through it.
template <class T>
nb::object owner_of(T* self) {
  nb::object o = nb::find(self);
  if (!o.is_valid()) invalid("SparseMatMul.step: the kernel has no Python object");
  return o;
}

class SparseMatMul {
 public:
  SparseMatMul(nb::handle b, nb::handle bias, bool trans_b, const std::string& activation,
               const std::vector<double>& activation_params, double alpha) {
    Dense w = read_dense(b, "b");
    if (w.shape.size() != 2)
      invalid(std::string("SparseMatMul: b must be 2-D ") + (trans_b ? "(N, K)" : "(K, N)") +
              ", got shape " + shape_of(w.shape));
    const int64_t N = trans_b ? w.shape[0] : w.shape[1];
    const float* bias_data = nullptr;
    Dense c;
    if (!bias.is_none()) {
      c = read_dense(bias, "bias");
      if (c.shape.size() != 1 || c.shape[0] != N)
        invalid("SparseMatMul: bias has shape " + shape_of(c.shape) + ", expected (" +
                std::to_string(N) + ",)");
      bias_data = c.data;
    }
    kernel_ = std::make_unique<SparseMatMulKernel>(w.data, w.shape[0], w.shape[1], trans_b,
                                                   bias_data, activation, activation_params,
                                                   alpha);
  }

  // y's shape: a's with the last axis K -> N.
  std::vector<int64_t> output_shape(const std::vector<int64_t>& a) const {
    if (a.empty() || a.back() != kernel_->K())
      invalid("SparseMatMul: a must be (..., " + std::to_string(kernel_->K()) +
              ") to match b's K=" + std::to_string(kernel_->K()) + ", got shape " + shape_of(a));
    std::vector<int64_t> y = a;
    y.back() = kernel_->N();
    return y;
  }

  static int64_t rows(const std::vector<int64_t>& a) {
    int64_t M = 1;
    for (std::size_t i = 0; i + 1 < a.size(); ++i) M *= a[i];
    return M;
  }

  nb::object call(nb::handle ah, nb::handle outh) {
    Dense a = read_dense(ah, "a");
    const std::vector<int64_t> y_shape = output_shape(a.shape);
    nb::object y_obj;
    if (outh.is_none()) {
      nb::list dims;
      for (int64_t d : y_shape) dims.append(d);
      nb::module_ np = nb::module_::import_("numpy");
      y_obj = np.attr("empty")(nb::tuple(dims), np.attr("float32"));
    } else {
      y_obj = nb::borrow(outh);
    }
    ArrayOut y;
    if (!nb::try_cast(y_obj, y, false))
      throw nb::type_error(
          ("SparseMatMul: out must be a writeable C-contiguous float32 NumPy array, got " +
           describe(y_obj))
              .c_str());
    std::vector<int64_t> got(y.ndim());
    for (std::size_t i = 0; i < y.ndim(); ++i) got[i] = static_cast<int64_t>(y.shape(i));
    if (got != y_shape)
      invalid("SparseMatMul: out has shape " + shape_of(got) + ", expected " + shape_of(y_shape));
    const int64_t M = rows(a.shape);
    {
      nb::gil_scoped_release nogil;
      kernel_->run(M, a.data, y.data());
    }
    return y_obj;
  }

  ProgramStep step(const BufferRef& a, const BufferRef& y) {
    if (a.first < 0 || y.first < 0)
      invalid("SparseMatMul.step: a negative buffer number");
    const std::vector<int64_t> y_shape = output_shape(a.second);
    if (y.second != y_shape)
      invalid("SparseMatMul: out has shape " + shape_of(y.second) + ", expected " +
              shape_of(y_shape));
    const SparseMatMulKernel* k = kernel_.get();
    const int64_t M = rows(a.second);
    const int ai = a.first, yi = y.first;
    return {[k, M, ai, yi](void* const* b) {
              k->run(M, static_cast<const float*>(b[ai]), static_cast<float*>(b[yi]));
            },
            owner_of(this)};
  }

  const SparseMatMulKernel& kernel() const { return *kernel_; }

 private:
  std::unique_ptr<SparseMatMulKernel> kernel_;
};

}  // namespace

void bind_sparse(nb::module_& m) {
  nb::class_<SparseMatMul>(m, "SparseMatMul",
                           "Matmul with a constant sparse B in CSR (ember.kernels.cpu.sparse).")
      .def(nb::init<nb::handle, nb::handle, bool, const std::string&, const std::vector<double>&,
                    double>(),
           "b"_a, "bias"_a.none(), "trans_b"_a, "activation"_a, "activation_params"_a, "alpha"_a)
      .def("__call__", &SparseMatMul::call, "a"_a, "out"_a.none() = nb::none(),
           "y = act(a @ B + bias), into out if given.")
      .def("step", &SparseMatMul::step, "a"_a, "out"_a,
           "The call on buffers (number, shape) of a Program: a, out.")
      .def_prop_ro("nnz", [](const SparseMatMul& s) { return s.kernel().nnz(); },
                   "Nonzeros of B stored.")
      .def_prop_ro("k", [](const SparseMatMul& s) { return s.kernel().K(); }, "B's K.")
      .def_prop_ro("n", [](const SparseMatMul& s) { return s.kernel().N(); }, "B's N.");
  m.def("set_sparse_isa", &sparse::set_isa, "name"_a,
        "Limit the sparse kernels to 'avx512' or 'scalar' ('auto': the best here); for tests.");
  m.def("sparse_isa", [] { return std::string(sparse::isa_name(sparse::current_isa())); },
        "The code path the sparse kernels take now.");
}

}  // namespace ember
