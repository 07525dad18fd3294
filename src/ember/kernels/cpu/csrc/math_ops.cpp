// ember's own float32 kernels where oneDNN has none or a slow one: softmax, LayerNorm (+ residual),
// GELU (+ bias) and multi-head attention. math_kernels.h holds the kernels, compiled here once per
// ISA (AVX-512, AVX2, scalar); this file picks one at run time, splits the work over OpenMP threads
// and binds the entry points into ember._C.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "cpu_info.h"
#include "threads.h"

// --- the kernels, once per ISA -------------------------------------------------------------------

#if defined(__x86_64__)
#define EMBER_MATH_NS avx512
#define EMBER_MATH_VEC ::ember::simd::Vec512
#define EMBER_MATH_TARGET EMBER_AVX512_TARGET
#include "math_kernels.h"
#undef EMBER_MATH_NS
#undef EMBER_MATH_VEC
#undef EMBER_MATH_TARGET

#define EMBER_MATH_NS avx2
#define EMBER_MATH_VEC ::ember::simd::Vec256
#define EMBER_MATH_TARGET EMBER_AVX2_TARGET
#include "math_kernels.h"
#undef EMBER_MATH_NS
#undef EMBER_MATH_VEC
#undef EMBER_MATH_TARGET
#endif

#define EMBER_MATH_NS scalar
#define EMBER_MATH_VEC ::ember::simd::Vec1
#define EMBER_MATH_TARGET
#include "math_kernels.h"
#undef EMBER_MATH_NS
#undef EMBER_MATH_VEC
#undef EMBER_MATH_TARGET

namespace nb = nanobind;
using namespace nb::literals;

namespace ember::math {
namespace {

// --- ISA choice ----------------------------------------------------------------------------------

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct Kernels {
  const char* name;
  void (*softmax_rows)(const float*, float*, std::size_t, std::size_t);
  void (*layer_norm_rows)(const float*, const float*, float*, const float*, const float*, float,
                          float*, std::size_t, std::size_t);
  void (*gelu)(const float*, const float*, std::size_t, float*, std::size_t, bool);
  void (*attention_rows)(const AttentionArgs&, std::int64_t, std::int64_t, std::int64_t,
                         std::int64_t, AttentionScratch&);
};

#define EMBER_KERNELS(ns) \
  Kernels { #ns, &ns::softmax_rows, &ns::layer_norm_rows, &ns::gelu, &ns::attention_rows }

Isa best_isa() {
#if defined(__x86_64__)
  const CpuInfo& c = cpu_info();
  if (c.avx512f && c.fma) return Isa::avx512;
  if (c.avx2 && c.fma) return Isa::avx2;
#endif
  return Isa::scalar;
}

// The widest ISA the kernels may use (tests lower it to check every path); -1 = the best there is.
std::atomic<int> g_isa_limit{-1};

Isa current_isa() {
  const int limit = g_isa_limit.load(std::memory_order_relaxed);
  const Isa best = best_isa();
  return limit < 0 ? best : static_cast<Isa>(std::min(limit, static_cast<int>(best)));
}

const Kernels& kernels() {
#if defined(__x86_64__)
  static const Kernels k512 = EMBER_KERNELS(avx512);
  static const Kernels k256 = EMBER_KERNELS(avx2);
#endif
  static const Kernels k1 = EMBER_KERNELS(scalar);
  switch (current_isa()) {
#if defined(__x86_64__)
    case Isa::avx512: return k512;
    case Isa::avx2: return k256;
#endif
    default: return k1;
  }
}

void set_isa(const std::string& name) {
  if (name == "auto") {
    g_isa_limit = -1;
    return;
  }
  Isa want;
  if (name == "avx512") want = Isa::avx512;
  else if (name == "avx2") want = Isa::avx2;
  else if (name == "scalar") want = Isa::scalar;
  else
    throw nb::value_error(("set_math_isa: expected 'auto', 'avx512', 'avx2' or 'scalar', got '" +
                           name + "'").c_str());
  if (static_cast<int>(want) > static_cast<int>(best_isa()))
    throw nb::value_error(("set_math_isa: this CPU cannot run '" + name + "' (its best is '" +
                           std::string(best_isa() == Isa::avx2 ? "avx2" : "scalar") + "')")
                              .c_str());
  g_isa_limit = static_cast<int>(want);
}

// --- threading -----------------------------------------------------------------------------------

// Each thread gets at least this much work, in CPU cycles (~10 us): a fork/join costs ~2 us, so
// smaller calls stay on the calling thread.
constexpr std::int64_t kGrain = 1 << 15;

// f(begin, end) over [0, n) in contiguous parts, one per thread; `cost` is the cycles one item
// takes on one thread, as measured on AVX-512 (the slower paths split a little later than ideal).
template <class F>
void parallel_for(std::int64_t n, std::int64_t cost, F&& f) {
  if (n <= 0) return;
  std::int64_t nt = std::min<std::int64_t>(thread_target().load(std::memory_order_relaxed), n);
  nt = std::min<std::int64_t>(nt, std::max<std::int64_t>(1, n * cost / kGrain));
  if (nt <= 1) {
    f(std::int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
    const std::int64_t t = omp_get_thread_num(), tn = omp_get_num_threads();
    const std::int64_t begin = n * t / tn, end = n * (t + 1) / tn;
    if (begin < end) f(begin, end);
  }
}

// --- shape checks --------------------------------------------------------------------------------

using F32In = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
using F32Strided = nb::ndarray<const float, nb::ndim<3>, nb::device::cpu>;

template <class A>
std::string shape_of(const A& a) {
  std::string s = "(";
  for (std::size_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

[[noreturn]] void fail(const std::string& msg) { throw nb::value_error(msg.c_str()); }

template <class A, class B>
void check_same_shape(const char* op, const char* name, const A& x, const B& y) {
  bool same = x.ndim() == y.ndim();
  for (std::size_t i = 0; same && i < x.ndim(); ++i) same = x.shape(i) == y.shape(i);
  if (!same)
    fail(std::string(op) + ": " + name + " has shape " + shape_of(y) + ", expected " + shape_of(x));
}

// The last axis of x: rows of n elements; rank 0 has no axis to work along.
template <class A>
std::size_t last_axis(const char* op, const A& x) {
  if (x.ndim() == 0) fail(std::string(op) + ": x must have rank >= 1, got a scalar (shape ())");
  return x.shape(x.ndim() - 1);
}

template <class A>
void check_vector(const char* op, const char* name, const A& v, std::size_t n,
                  const std::string& x_shape) {
  if (v.ndim() != 1 || v.shape(0) != n)
    fail(std::string(op) + ": " + name + " has shape " + shape_of(v) + ", expected (" +
         std::to_string(n) + ",) (the last axis of x " + x_shape + ")");
}

// --- entry points --------------------------------------------------------------------------------

void softmax(F32In x, F32Out y) {
  check_same_shape("softmax", "out", x, y);
  const std::size_t n = last_axis("softmax", x);
  if (n == 0) return;
  const std::int64_t rows = static_cast<std::int64_t>(x.size() / n);
  const Kernels& k = kernels();
  const float* xp = x.data();
  float* yp = y.data();
  nb::gil_scoped_release release;
  parallel_for(rows, static_cast<std::int64_t>(n) + 1, [&](std::int64_t r0, std::int64_t r1) {
    k.softmax_rows(xp + r0 * n, yp + r0 * n, static_cast<std::size_t>(r1 - r0), n);
  });
}

void layer_norm(F32In x, F32In scale, nb::object bias, float epsilon, F32Out y,
                nb::object residual, nb::object sum) {
  const char* op = residual.is_none() ? "layer_norm" : "add_layer_norm";
  const std::size_t n = last_axis(op, x);
  const std::string xs = shape_of(x);
  check_same_shape(op, "out", x, y);
  check_vector(op, "scale", scale, n, xs);
  F32In b, r;
  F32Out s;
  if (!bias.is_none()) {
    b = nb::cast<F32In>(bias);
    check_vector(op, "bias", b, n, xs);
  }
  if (!residual.is_none()) {
    r = nb::cast<F32In>(residual);
    check_same_shape(op, "residual", x, r);
    if (sum.is_none()) fail(std::string(op) + ": a residual needs a sum output");
    s = nb::cast<F32Out>(sum);
    check_same_shape(op, "sum", x, s);
  }
  if (n == 0) return;
  const std::int64_t rows = static_cast<std::int64_t>(x.size() / n);
  const Kernels& k = kernels();
  const float* xp = x.data();
  const float* rp = r.is_valid() ? r.data() : nullptr;
  const float* bp = b.is_valid() ? b.data() : nullptr;
  const float* sc = scale.data();
  float* sp = s.is_valid() ? s.data() : nullptr;
  float* yp = y.data();
  const std::int64_t cost = static_cast<std::int64_t>(n) * 3 / 4 + 1;
  nb::gil_scoped_release release;
  parallel_for(rows, cost, [&](std::int64_t r0, std::int64_t r1) {
    const std::size_t off = static_cast<std::size_t>(r0) * n;
    k.layer_norm_rows(xp + off, rp ? rp + off : nullptr, sp ? sp + off : nullptr, sc, bp, epsilon,
                      yp + off, static_cast<std::size_t>(r1 - r0), n);
  });
}

void gelu(F32In x, nb::object bias, F32Out y, const std::string& approximate) {
  const char* op = bias.is_none() ? "gelu" : "bias_gelu";
  if (approximate != "none" && approximate != "tanh")
    fail(std::string(op) + ": approximate must be 'none' or 'tanh', got '" + approximate + "'");
  check_same_shape(op, "out", x, y);
  F32In b;
  std::size_t row = 1;  // elements per part: whole bias rows when there is a bias
  if (!bias.is_none()) {
    const std::size_t n = last_axis(op, x);
    b = nb::cast<F32In>(bias);
    check_vector(op, "bias", b, n, shape_of(x));
    row = n;
  }
  if (x.size() == 0) return;
  const bool tanh_form = approximate == "tanh";
  const Kernels& k = kernels();
  const float* xp = x.data();
  const float* bp = b.is_valid() ? b.data() : nullptr;
  const std::size_t blen = b.is_valid() ? row : 0;
  float* yp = y.data();
  // Without a bias the buffer is cut into blocks of 1024 elements (whole vectors, any ISA).
  const std::size_t part = bp ? row : 1024;
  const std::int64_t parts = static_cast<std::int64_t>((x.size() + part - 1) / part);
  const std::int64_t cost = static_cast<std::int64_t>(part) * (tanh_form ? 3 : 5) / 2;
  nb::gil_scoped_release release;
  parallel_for(parts, cost, [&](std::int64_t p0, std::int64_t p1) {
    const std::size_t begin = static_cast<std::size_t>(p0) * part;
    const std::size_t end = std::min(x.size(), static_cast<std::size_t>(p1) * part);
    k.gelu(xp + begin, bp, blen, yp + begin, end - begin, tanh_form);
  });
}

void attention(F32Strided q, F32Strided k, F32Strided v, nb::object mask, std::int64_t num_heads,
               float scale, F32Out out) {
  const std::string shapes = "q " + shape_of(q) + ", k " + shape_of(k) + ", v " + shape_of(v);
  for (const auto* t : {&q, &k, &v})
    for (std::size_t i = 0; i < 3; ++i)
      if (t->stride(i) < 0 || (i == 2 && t->shape(2) > 1 && t->stride(2) != 1))
        fail("attention: q, k and v need a contiguous last axis and non-negative strides");
  const std::int64_t B = q.shape(0), Sq = q.shape(1), Sk = k.shape(1), H = num_heads;
  if (H <= 0) fail("attention: num_heads must be positive, got " + std::to_string(H));
  if (k.shape(0) != static_cast<std::size_t>(B) || v.shape(0) != static_cast<std::size_t>(B))
    fail("attention: q, k and v must share the batch size, got " + shapes);
  if (v.shape(1) != static_cast<std::size_t>(Sk))
    fail("attention: k and v must share the sequence length, got " + shapes);
  if (k.shape(2) != q.shape(2) || q.shape(2) % H != 0 || v.shape(2) % H != 0 || q.shape(2) == 0)
    fail("attention: num_heads=" + std::to_string(H) +
         " must divide the hidden sizes of q and v, and k's must equal q's (head size > 0), got " +
         shapes);
  if (Sk == 0 && Sq > 0) fail("attention: softmax over 0 keys, got " + shapes);
  const std::int64_t D = q.shape(2) / H, Dv = v.shape(2) / H;
  if (out.ndim() != 3 || out.shape(0) != static_cast<std::size_t>(B) ||
      out.shape(1) != static_cast<std::size_t>(Sq) || out.shape(2) != v.shape(2))
    fail("attention: out has shape " + shape_of(out) + ", expected (" + std::to_string(B) + ", " +
         std::to_string(Sq) + ", " + std::to_string(v.shape(2)) + ")");

  AttentionArgs a{};
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.out = out.data();
  a.B = B, a.H = H, a.Sq = Sq, a.Sk = Sk, a.D = D, a.Dv = Dv;
  a.q_sb = q.stride(0), a.q_ss = q.stride(1);
  a.k_sb = k.stride(0), a.k_ss = k.stride(1);
  a.v_sb = v.stride(0), a.v_ss = v.stride(1);
  a.o_sb = Sq * H * Dv, a.o_ss = H * Dv;
  a.scale = scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(D));
  a.ldkt = (Sk + 15) / 16 * 16;
  nb::ndarray<const float, nb::device::cpu> m;
  if (!mask.is_none()) {
    // Broadcast by strides: the mask's axes align right with [B, H, Sq, Sk]; a size-1 axis (or a
    // missing one) gets stride 0.
    m = nb::cast<nb::ndarray<const float, nb::device::cpu>>(mask);
    const std::int64_t want[4] = {B, H, Sq, Sk};
    std::int64_t stride[4] = {0, 0, 0, 0};
    bool ok = m.ndim() <= 4;
    for (std::size_t i = 0; ok && i < m.ndim(); ++i) {
      const std::size_t axis = 4 - m.ndim() + i;
      const std::int64_t dim = static_cast<std::int64_t>(m.shape(i));
      ok = (dim == want[axis] || dim == 1) && m.stride(i) >= 0;
      if (dim > 1) stride[axis] = m.stride(i);
    }
    if (!ok)
      fail("attention: mask has shape " + shape_of(m) +
           ", which does not broadcast to [B, H, Sq, Sk] = (" + std::to_string(B) + ", " +
           std::to_string(H) + ", " + std::to_string(Sq) + ", " + std::to_string(Sk) + ")");
    if (stride[3] > 1) fail("attention: the mask's last axis must be contiguous");
    a.mask = m.data();
    a.m_sb = stride[0], a.m_sh = stride[1], a.m_sq = stride[2], a.m_sk = stride[3];
  }
  if (B == 0 || Sq == 0 || Dv == 0) return;

  const Kernels& kern = kernels();
  // Tasks are (b, h, block of query rows); consecutive tasks share a head, and the static split
  // below gives each thread a contiguous run of them, so K^T is packed about once per head.
  const std::int64_t block = 24;
  const std::int64_t nblk = (Sq + block - 1) / block;
  const std::int64_t tasks = B * H * nblk;
  const std::int64_t cost = std::min(Sq, block) * Sk * (D + Dv + 24) / 16;  // FMAs + exp
  // Scratch for every thread, allocated here where a failure can still raise MemoryError.
  const std::size_t per_thread = static_cast<std::size_t>((D + kMaxRowTile) * a.ldkt);
  std::vector<float> pool(per_thread *
                         static_cast<std::size_t>(thread_target().load(std::memory_order_relaxed)));
  nb::gil_scoped_release release;
  parallel_for(tasks, cost, [&](std::int64_t t0, std::int64_t t1) {
    float* mine = pool.data() + per_thread * static_cast<std::size_t>(omp_get_thread_num());
    AttentionScratch ws{mine, mine + D * a.ldkt};
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t bh = t / nblk, r0 = (t % nblk) * block;
      kern.attention_rows(a, bh / H, bh % H, r0, std::min(Sq, r0 + block), ws);
    }
  });
}

}  // namespace
}  // namespace ember::math

namespace ember {

void bind_math(nb::module_& m) {
  using namespace ember::math;
  m.def("set_math_isa", &set_isa, "name"_a,
        "Cap the ISA of the math kernels: 'auto' (the best this CPU has), 'avx512', 'avx2' or "
        "'scalar'. A debug hook: tests run every path through it.");
  m.def("math_isa", []() { return std::string(kernels().name); },
        "The code path the math kernels take now: 'avx512', 'avx2' or 'scalar'.");
  m.def("softmax", &softmax, "x"_a, "out"_a,
        "out = softmax(x) over the last axis; float32, C-contiguous, out may be x.");
  m.def("layer_norm", &layer_norm, "x"_a, "scale"_a, "bias"_a.none(), "epsilon"_a, "out"_a,
        "residual"_a.none() = nb::none(), "sum"_a.none() = nb::none(),
        "out = LayerNorm(x [+ residual]) over the last axis (the sum goes to `sum`); float32, "
        "C-contiguous.");
  m.def("gelu", &gelu, "x"_a, "bias"_a.none(), "out"_a, "approximate"_a = "none",
        "out = Gelu(x [+ bias]), bias along the last axis; approximate 'none' (erf) or 'tanh'.");
  m.def("attention", &attention, "q"_a, "k"_a, "v"_a, "mask"_a.none(), "num_heads"_a, "scale"_a,
        "out"_a,
        "out [B, Sq, H*Dv] = concat over heads of softmax(Q_h K_h^T * scale + mask) V_h; q, k, v "
        "[B, S, H*D] with any non-negative batch/sequence strides, mask None or broadcastable to "
        "[B, H, Sq, Sk] with a contiguous last axis; scale 0 = 1/sqrt(D).");
}

}  // namespace ember
