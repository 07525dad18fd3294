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
constexpr int kWindow = 32;     // ELLPACK window: two AVX-512 registers of (gathered) a
constexpr int kWindowLive = kWindow - 1;  // live inputs per window; the last slot holds a zero
constexpr int kGroupSteps = 4;            // steps per 64-byte vector of packed indices
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
  const int64_t* slice_group;  // (3 S + 1): per slice, its 4-, 2- and 1-step groups
  const int64_t* slice_value;  // (S + 1)
  const int32_t* group_window;
  const uint8_t* k;
  const float* v;
  int64_t slices;
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

// One row of a, gathered into the windows' order (sparse.h), slices [s0, s1). A group is 1, 2
// or 4 steps of one window: a's 32 values of the window in two registers, permuted by each
// step's indices, times the step's values. The group loops have no data-dependent branch: with
// ~5 steps per (slice, window), a loop over each window's own step count mispredicted often
// enough to cost half the time. Loads bound it (Zen 4 does one 64-byte load a cycle): 7 for a
// 4-step group, 5 for 2 steps, 4 for 1. Four accumulators: a step's FMA does not wait for the
// previous step's.
EMBER_SPARSE_AVX512 void ell_avx512(const Csr& c, const Ell& e, const float* a_live, int64_t s0,
                                    int64_t s1, float* y) {
  for (int64_t s = s0; s < s1; ++s) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    const int64_t* bounds = e.slice_group + 3 * s;
    const float* v = e.v + e.slice_value[s];
    for (int64_t g = bounds[0]; g < bounds[1]; ++g, v += 4 * kLanes) {
      const float* aw = a_live + static_cast<int64_t>(e.group_window[g]) * kWindow;
      const __m512 lo = _mm512_load_ps(aw), hi = _mm512_load_ps(aw + kLanes);
      const __m512i x = _mm512_loadu_si512(e.k + g * 64);
      acc0 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, x, hi), _mm512_loadu_ps(v), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, _mm512_srli_epi32(x, 8), hi),
                             _mm512_loadu_ps(v + kLanes), acc1);
      acc2 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, _mm512_srli_epi32(x, 16), hi),
                             _mm512_loadu_ps(v + 2 * kLanes), acc2);
      acc3 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, _mm512_srli_epi32(x, 24), hi),
                             _mm512_loadu_ps(v + 3 * kLanes), acc3);
    }
    for (int64_t g = bounds[1]; g < bounds[2]; ++g, v += 2 * kLanes) {
      const float* aw = a_live + static_cast<int64_t>(e.group_window[g]) * kWindow;
      const __m512 lo = _mm512_load_ps(aw), hi = _mm512_load_ps(aw + kLanes);
      const __m512i x = _mm512_loadu_si512(e.k + g * 64);
      acc0 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, x, hi), _mm512_loadu_ps(v), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, _mm512_srli_epi32(x, 8), hi),
                             _mm512_loadu_ps(v + kLanes), acc1);
    }
    for (int64_t g = bounds[2]; g < bounds[3]; ++g, v += kLanes) {
      const float* aw = a_live + static_cast<int64_t>(e.group_window[g]) * kWindow;
      const __m512 lo = _mm512_load_ps(aw), hi = _mm512_load_ps(aw + kLanes);
      const __m512i x = _mm512_loadu_si512(e.k + g * 64);
      acc2 = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, x, hi), _mm512_loadu_ps(v), acc2);
    }
    alignas(64) float out[kLanes];
    _mm512_store_ps(out, _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (int i = 0; i < kLanes; ++i) {
      const int32_t n = e.order[s * kLanes + i];
      if (n >= 0) y[n] = activate(out[i] + c.bias[n], c.act);
    }
  }
}

// a's live inputs into the windows' order: window w is a[live_k[31 w + j]] for j < 31 and a
// zero last (and where live_k is -1). Two masked 16-wide gathers per window.
EMBER_SPARSE_AVX512 void gather_windows_avx512(const float* a, const int32_t* live_k,
                                               int64_t windows, float* a_live) {
  const __m512i none = _mm512_set1_epi32(-1);
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* ks = live_k + w * kWindowLive;
    const __m512i k_lo = _mm512_loadu_si512(ks);
    // Slot 31 is not a live slot: load 15 indices and mark the 16th empty.
    const __m512i k_hi = _mm512_mask_loadu_epi32(none, 0x7FFF, ks + kLanes);
    const __m512 lo = _mm512_mask_i32gather_ps(_mm512_setzero_ps(),
                                               _mm512_cmpneq_epi32_mask(k_lo, none), k_lo, a, 4);
    const __m512 hi = _mm512_mask_i32gather_ps(_mm512_setzero_ps(),
                                               _mm512_cmpneq_epi32_mask(k_hi, none), k_hi, a, 4);
    _mm512_store_ps(a_live + w * kWindow, lo);
    _mm512_store_ps(a_live + w * kWindow + kLanes, hi);
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
  const int64_t values = e.slice_value[e.slices];
  const auto at = [&](int i) -> int64_t {
    if (i == nt) return e.slices;
    return std::lower_bound(e.slice_value, e.slice_value + e.slices, values * i / nt) -
           e.slice_value;
  };
  return {at(t), at(t + 1)};
}

// What a (slice, window) with n steps costs the kernel, in 64-byte loads: whole groups of 4
// (7 loads), then the rest as a group of 2 (5), of 1 (4), or of 3 padded to 4 (7).
int16_t window_cost(int64_t n) {
  static constexpr int16_t rest[kGroupSteps] = {0, 4, 5, 7};
  return static_cast<int16_t>(7 * (n / kGroupSteps) + rest[n % kGroupSteps]);
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
  std::vector<int32_t> by_count(N_);
  for (int64_t n = 0; n < N_; ++n) by_count[n] = static_cast<int32_t>(n);
  std::stable_sort(by_count.begin(), by_count.end(), [&](int32_t x, int32_t y) {
    return row_start_[x + 1] - row_start_[x] > row_start_[y + 1] - row_start_[y];
  });
  order_.assign(slices * kLanes, -1);
  std::copy(by_count.begin(), by_count.end(), order_.begin());
  balance_windows();

  // Each output's nonzeros as (place in the gathered a, value), sorted by place.
  std::vector<int32_t> place_of(K_, -1);
  for (std::size_t j = 0; j < live_k_.size(); ++j)
    if (live_k_[j] >= 0)
      place_of[live_k_[j]] = static_cast<int32_t>(j / kWindowLive * kWindow + j % kWindowLive);
  std::vector<std::pair<int32_t, float>> by_place(values_.size());
  for (int64_t n = 0; n < N_; ++n) {
    for (int64_t p = row_start_[n]; p < row_start_[n + 1]; ++p)
      by_place[p] = {place_of[k_[p]], values_[p]};
    std::sort(by_place.begin() + row_start_[n], by_place.begin() + row_start_[n + 1],
              [](const auto& x, const auto& y) { return x.first < y.first; });
  }

  slice_group_.assign(3 * slices + 1, 0);
  slice_value_.assign(slices + 1, 0);
  group_window_.clear();
  ell_k_.clear();
  ell_v_.clear();
  // A group: steps [first, first + used) of window w, stored `width` (1, 2 or 4) steps wide.
  struct Group {
    int64_t w, first;
    int used, width;
  };
  std::vector<int64_t> first_of(windows_ * kLanes), count_of(windows_ * kLanes);
  std::vector<Group> by_width[3];  // 4-, 2- and 1-step groups: the kernel's three loops
  for (int64_t s = 0; s < slices; ++s) {
    int64_t cursor[kLanes], end[kLanes];  // each lane's next nonzero in by_place
    for (int i = 0; i < kLanes; ++i) {
      const int32_t n = order_[s * kLanes + i];
      cursor[i] = n < 0 ? 0 : row_start_[n];
      end[i] = n < 0 ? 0 : row_start_[n + 1];
    }
    for (auto& list : by_width) list.clear();
    for (int64_t w = 0; w < windows_; ++w) {
      const int64_t place_end = (w + 1) * kWindow;
      int64_t longest = 0;
      for (int i = 0; i < kLanes; ++i) {
        int64_t n = 0;
        while (cursor[i] + n < end[i] && by_place[cursor[i] + n].first < place_end) ++n;
        first_of[w * kLanes + i] = cursor[i];
        count_of[w * kLanes + i] = n;
        cursor[i] += n;
        longest = std::max(longest, n);
      }
      int64_t j = 0;
      for (; j + kGroupSteps <= longest; j += kGroupSteps) by_width[0].push_back({w, j, 4, 4});
      const int rest = static_cast<int>(longest - j);
      // 3 steps: padded to a 4-group (7 loads) rather than a 2- and a 1-group (9).
      if (rest == 3) by_width[0].push_back({w, j, 3, 4});
      if (rest == 2) by_width[1].push_back({w, j, 2, 2});
      if (rest == 1) by_width[2].push_back({w, j, 1, 1});
    }
    for (int kind = 0; kind < 3; ++kind) {
      for (const Group& grp : by_width[kind]) {
        // Lanes past their row read the window's zero slot, times a zero value.
        const std::size_t k0 = ell_k_.size(), v0 = ell_v_.size();
        ell_k_.resize(k0 + 64, static_cast<uint8_t>(kWindowLive));
        ell_v_.resize(v0 + grp.width * kLanes, 0.0f);
        group_window_.push_back(static_cast<int32_t>(grp.w));
        for (int i = 0; i < kLanes; ++i) {
          const int64_t n = count_of[grp.w * kLanes + i];
          for (int64_t j = grp.first; j < std::min<int64_t>(n, grp.first + grp.used); ++j) {
            const auto& [place, value] = by_place[first_of[grp.w * kLanes + i] + j];
            // The group's step t index is byte t of lane i's int32.
            ell_k_[k0 + i * 4 + (j - grp.first)] = static_cast<uint8_t>(place - grp.w * kWindow);
            ell_v_[v0 + (j - grp.first) * kLanes + i] = value;
          }
        }
      }
      slice_group_[3 * s + kind + 1] = static_cast<int64_t>(group_window_.size());
    }
    slice_value_[s + 1] = static_cast<int64_t>(ell_v_.size());
  }
}

void SparseMatMulKernel::balance_windows() {
  // Where each output sits in the slices, and each row of B's nonzeros as those positions.
  const int64_t slices = static_cast<int64_t>(order_.size()) / kLanes;
  std::vector<int32_t> lane_of(N_);
  for (std::size_t q = 0; q < order_.size(); ++q)
    if (order_[q] >= 0) lane_of[order_[q]] = static_cast<int32_t>(q);
  std::vector<int64_t> row_first(K_ + 1, 0);
  for (int32_t k : k_) ++row_first[k + 1];
  for (int64_t k = 0; k < K_; ++k) row_first[k + 1] += row_first[k];
  std::vector<int32_t> row_lanes(k_.size());
  {
    std::vector<int64_t> fill(row_first.begin(), row_first.end() - 1);
    for (int64_t n = 0; n < N_; ++n)
      for (int64_t p = row_start_[n]; p < row_start_[n + 1]; ++p)
        row_lanes[fill[k_[p]]++] = lane_of[n];
  }
  // Live rows, busiest first, dealt round robin over the windows: busy rows spread out.
  std::vector<int32_t> live;
  for (int64_t k = 0; k < K_; ++k)
    if (row_first[k + 1] > row_first[k]) live.push_back(static_cast<int32_t>(k));
  std::stable_sort(live.begin(), live.end(), [&](int32_t x, int32_t y) {
    return row_first[x + 1] - row_first[x] > row_first[y + 1] - row_first[y];
  });
  const int64_t n_live = static_cast<int64_t>(live.size());
  windows_ = (n_live + kWindowLive - 1) / kWindowLive;
  const int64_t slots = windows_ * kWindowLive;
  live_k_.assign(slots, -1);  // -1: an empty slot (a zero in the gathered a)
  for (int64_t i = 0; i < n_live; ++i) live_k_[i % windows_ * kWindowLive + i / windows_] = live[i];
  if (windows_ < 2) return;

  // count[w][q]: nonzeros of lane q in window w; longest[w][s]: the cost of (slice s, window w)
  // (window_cost of its longest lane). Their sum is what the search lowers.
  const int64_t lanes = slices * kLanes;
  std::vector<int16_t> count(windows_ * lanes, 0);
  std::vector<int16_t> longest(windows_ * slices, 0);
  for (int64_t j = 0; j < slots; ++j) {
    if (live_k_[j] < 0) continue;
    const int64_t w = j / kWindowLive;
    for (int64_t p = row_first[live_k_[j]]; p < row_first[live_k_[j] + 1]; ++p)
      ++count[w * lanes + row_lanes[p]];
  }
  // What (slice s, window w) costs the kernel: its longest lane's steps, in loads.
  const auto most = [&](int64_t w, int64_t s) {
    const int16_t* c = &count[w * lanes + s * kLanes];
    return window_cost(*std::max_element(c, c + kLanes));
  };
  for (int64_t w = 0; w < windows_; ++w)
    for (int64_t s = 0; s < slices; ++s) longest[w * slices + s] = most(w, s);

  // Local search: swap the rows in two slots of different windows (a row and an empty slot: a
  // move) unless that adds steps. Moves that keep the sum are taken too, to cross plateaus. The
  // seed is fixed: the same B always gives the same layout. The work is bounded (~30M counter
  // updates) so that a big layer builds in well under a second.
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  const auto next = [&seed]() {  // splitmix64
    uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<int64_t> stamp(slices, -1);
  std::vector<int32_t> touched;
  const int64_t tries = 64 * n_live;
  int64_t work = 0;
  constexpr int64_t kWorkMax = 30'000'000;
  for (int64_t t = 0; t < tries && work < kWorkMax; ++t) {
    const int64_t i = static_cast<int64_t>(next() % static_cast<uint64_t>(slots));
    const int64_t j = static_cast<int64_t>(next() % static_cast<uint64_t>(slots));
    const int64_t wi = i / kWindowLive, wj = j / kWindowLive;
    const int32_t ki = live_k_[i], kj = live_k_[j];
    if (wi == wj || (ki < 0 && kj < 0)) continue;
    touched.clear();
    // Row `k` leaves window `from` for window `to`.
    const auto shift = [&](int32_t k, int64_t from, int64_t to) {
      if (k < 0) return;
      for (int64_t p = row_first[k]; p < row_first[k + 1]; ++p) {
        const int32_t q = row_lanes[p];
        --count[from * lanes + q];
        ++count[to * lanes + q];
        if (stamp[q / kLanes] != t) {
          stamp[q / kLanes] = t;
          touched.push_back(q / kLanes);
        }
      }
    };
    shift(ki, wi, wj);
    shift(kj, wj, wi);
    int64_t delta = 0;
    for (int32_t sl : touched)
      delta += most(wi, sl) + most(wj, sl) - longest[wi * slices + sl] - longest[wj * slices + sl];
    const auto length = [&](int32_t k) { return k < 0 ? 0 : row_first[k + 1] - row_first[k]; };
    work += 2 * (length(ki) + length(kj)) + 2 * kLanes * static_cast<int64_t>(touched.size());
    if (delta <= 0) {
      for (int32_t sl : touched) {
        longest[wi * slices + sl] = most(wi, sl);
        longest[wj * slices + sl] = most(wj, sl);
      }
      std::swap(live_k_[i], live_k_[j]);
    } else {
      shift(kj, wi, wj);
      shift(ki, wj, wi);
    }
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
#if defined(__x86_64__)
    if (avx512) {
      // Each row of a gathered into the windows' order once (live inputs only, zeros in the
      // empty slots and each window's last), then read by the team.
      const int64_t slices = static_cast<int64_t>(slice_value_.size()) - 1;
      const Ell e{order_.data(), slice_group_.data(), slice_value_.data(), group_window_.data(),
                  ell_k_.data(), ell_v_.data(), slices};
      const int64_t row_floats = windows_ * kWindow;
      float* a_live = panel_buffer(static_cast<std::size_t>(std::max<int64_t>(M * row_floats, 1)));
      for (int64_t m = 0; m < M; ++m)
        gather_windows_avx512(a + m * K_, live_k_.data(), windows_, a_live + m * row_floats);
      const auto body = [&](int t, int n_threads) {
        const auto [s0, s1] = share_slices(e, t, n_threads);
        for (int64_t m = 0; m < M; ++m)
          ell_avx512(c, e, a_live + m * row_floats, s0, s1, y + m * N_);
      };
      if (nt == 1) {
        body(0, 1);
      } else {
#pragma omp parallel num_threads(nt)
        body(omp_get_thread_num(), omp_get_num_threads());
      }
      return;
    }
#endif
    const auto body = [&](int t, int n_threads) {
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
      .def_prop_ro("ell_steps", [](const SparseMatMul& s) { return s.kernel().ell_steps(); },
                   "16-lane steps of the few-rows AVX-512 kernel per row of a (>= nnz / 16).")
      .def_prop_ro("k", [](const SparseMatMul& s) { return s.kernel().K(); }, "B's K.")
      .def_prop_ro("n", [](const SparseMatMul& s) { return s.kernel().N(); }, "B's N.");
  m.def("set_sparse_isa", &sparse::set_isa, "name"_a,
        "Limit the sparse kernels to 'avx512' or 'scalar' ('auto': the best here); for tests.");
  m.def("sparse_isa", [] { return std::string(sparse::isa_name(sparse::current_isa())); },
        "The code path the sparse kernels take now.");
}

}  // namespace ember
