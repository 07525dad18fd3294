// Binds the oneDNN kernels (dnnl_kernels.h) into ember._C: NumPy arrays in (float32, a copy only
// when a kernel cannot read the layout), checked shapes, `out=` or a new array, the GIL released
// around the work. Python wrappers with docs: ember/kernels/cpu/dnnl.py.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <optional>

#include "bindings.h"
#include "dnnl_kernels.h"
#include "program.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace ember {
namespace {

using namespace dnnl_detail;

constexpr int kMaxDims = 8;

// NumPy callables, looked up once. Leaked: they must not be released after the interpreter is gone.
struct NumPy {
  nb::object empty, ascontiguousarray, float32;
};

const NumPy& numpy() {
  static const NumPy* np = [] {
    nb::module_ m = nb::module_::import_("numpy");
    return new NumPy{m.attr("empty"), m.attr("ascontiguousarray"), m.attr("float32")};
  }();
  return *np;
}

using ArrayIn = nb::ndarray<const float, nb::device::cpu>;
using ArrayOut = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

// A float32 array as the kernels see it: pointer, shape and strides in elements.
struct View {
  const float* data = nullptr;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  nb::object keep;  // the array (or the contiguous copy) that owns `data`
};

enum class Need { kContiguous, kPositiveStrides };

bool load(nb::handle h, View& v, const char* who, const char* name) {
  ArrayIn a;
  if (!nb::try_cast(h, a, false)) return false;
  if (a.ndim() > static_cast<std::size_t>(kMaxDims))
    invalid(std::string(who) + ": " + name + " has " + std::to_string(a.ndim()) +
            " axes, at most " + std::to_string(kMaxDims) + " are supported");
  v.data = a.data();
  v.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = static_cast<int64_t>(a.shape(i));
    v.strides[i] = a.stride(i);
  }
  v.keep = nb::borrow(h);
  return true;
}

// What a rejected array is: its type, or its dtype and what else disqualifies it.
std::string describe(nb::handle h) {
  nb::object dtype = nb::getattr(h, "dtype", nb::none());
  if (dtype.is_none()) return nb::type_name(h.type()).c_str();
  std::string d = nb::str(dtype).c_str();
  nb::object flags = nb::getattr(h, "flags", nb::none());
  if (!flags.is_none()) {
    if (!nb::cast<bool>(flags.attr("writeable"))) d += " (read-only)";
    if (!nb::cast<bool>(flags.attr("c_contiguous"))) d += " (not C-contiguous)";
  }
  return d;
}

// Any float32 array; a copy is made only when its layout is one the kernel cannot read.
View read_array(nb::handle h, const char* who, const char* name, Need need) {
  View v;
  const auto type_error = [&] {
    throw nb::type_error((std::string(who) + ": " + name +
                          " must be a float32 NumPy array, got " + describe(h))
                             .c_str());
  };
  if (!load(h, v, who, name)) type_error();
  bool ok = true;
  if (need == Need::kContiguous) {
    ok = is_dense(v.shape, v.strides, v.ndim);
  } else {
    for (int i = 0; i < v.ndim; ++i) ok = ok && (v.shape[i] == 1 || v.strides[i] > 0);
  }
  if (!ok && !load(numpy().ascontiguousarray(h), v, who, name)) type_error();
  return v;
}

struct Out {
  nb::object obj;
  float* data = nullptr;
};

// `out` if given (checked: writeable, C-contiguous float32, the expected shape), else a new array.
Out make_out(nb::handle out, const int64_t* shape, int ndim, const char* who) {
  nb::object obj;
  if (out.is_none()) {
    nb::tuple t = nb::steal<nb::tuple>(PyTuple_New(ndim));
    for (int i = 0; i < ndim; ++i) PyTuple_SET_ITEM(t.ptr(), i, PyLong_FromLongLong(shape[i]));
    obj = numpy().empty(t, numpy().float32);
  } else {
    obj = nb::borrow(out);
  }
  ArrayOut a;
  if (!nb::try_cast(obj, a, false))
    throw nb::type_error((std::string(who) +
                          ": out must be a writeable C-contiguous float32 NumPy array, got " +
                          describe(obj))
                             .c_str());
  bool same = a.ndim() == static_cast<std::size_t>(ndim);
  for (int i = 0; same && i < ndim; ++i) same = static_cast<int64_t>(a.shape(i)) == shape[i];
  if (!same) {
    int64_t got[kMaxDims];
    const int n = static_cast<int>(std::min<std::size_t>(a.ndim(), kMaxDims));
    for (int i = 0; i < n; ++i) got[i] = static_cast<int64_t>(a.shape(i));
    invalid(std::string(who) + ": out has shape " + shape_str(got, n) + ", expected " +
            shape_str(shape, ndim));
  }
  return {std::move(obj), a.data()};
}

View read_optional(nb::handle h, const char* who, const char* name) {
  return h.is_none() ? View{} : read_array(h, who, name, Need::kContiguous);
}

// ---------------------------------------------------------------------------------------------
// Lowering for a Program (program.h): each `step` checks the shapes once, as a call would, and
// returns the kernel call on buffer numbers. Every Program buffer is C-contiguous.
// ---------------------------------------------------------------------------------------------

using Shape = std::array<int64_t, kMaxDims>;

Shape ref_shape(const BufferRef& r, const char* who, const char* name) {
  if (r.second.size() > static_cast<std::size_t>(kMaxDims))
    invalid(std::string(who) + ": " + name + " has " + std::to_string(r.second.size()) +
            " axes, at most " + std::to_string(kMaxDims) + " are supported");
  if (r.first < 0) invalid(std::string(who) + ": " + name + " has a negative buffer number");
  Shape s{};
  std::copy(r.second.begin(), r.second.end(), s.begin());
  return s;
}

int rank_of(const BufferRef& r) { return static_cast<int>(r.second.size()); }

void check_out_ref(const BufferRef& y, const int64_t* want, int n, const char* who) {
  ref_shape(y, who, "out");
  if (rank_of(y) != n || !std::equal(want, want + n, y.second.begin()))
    invalid(std::string(who) + ": out has shape " + shape_str(y.second.data(), rank_of(y)) +
            ", expected " + shape_str(want, n));
}

// The Python wrapper of a bound C++ object: a step keeps its kernel alive through it.
template <class T>
nb::object owner_of(T* self) {
  nb::object o = nb::find(self);
  if (!o.is_valid()) invalid("step: the kernel has no Python object");
  return o;
}

// ---------------------------------------------------------------------------------------------
// Bound classes and functions
// ---------------------------------------------------------------------------------------------

class Conv {
 public:
  Conv(nb::handle weight, nb::handle bias, const std::vector<int64_t>& strides,
       const std::vector<int64_t>& pads, const std::vector<int64_t>& dilations, int64_t group,
       bool channels_last, const std::string& activation,
       const std::vector<double>& activation_params, bool bf16)
      : kernel_(make(weight, bias,
                     ConvAttrs{strides, pads, dilations, group, channels_last, activation,
                               activation_params, bf16})) {}

  nb::object call(nb::handle xh, nb::handle zh, nb::handle outh) {
    View x = read_array(xh, "Conv", "x", Need::kContiguous);
    int64_t y_shape[5];
    kernel_->output_shape(x.shape, x.ndim, y_shape);
    const int rank = x.ndim;
    View z = read_optional(zh, "Conv", "z");
    if (z.data) {
      bool same = z.ndim == rank;
      for (int i = 0; same && i < rank; ++i) same = z.shape[i] == y_shape[i];
      if (!same)
        invalid("Conv: z has shape " + shape_str(z.shape, z.ndim) + ", expected the output's " +
                shape_str(y_shape, rank));
    }
    Out y = make_out(outh, y_shape, rank, "Conv");
    if (product(y_shape, rank) > 0) {
      nb::gil_scoped_release nogil;
      kernel_->run(x.shape, x.data, z.data, y.data);
    }
    return y.obj;
  }

  ProgramStep step(const BufferRef& x, const std::optional<BufferRef>& z, const BufferRef& y) {
    const Shape xs = ref_shape(x, "Conv", "x");
    int64_t y_shape[5];
    kernel_->output_shape(xs.data(), rank_of(x), y_shape);
    check_out_ref(y, y_shape, rank_of(x), "Conv");
    if (z) check_out_ref(*z, y_shape, rank_of(x), "Conv (z)");
    ConvKernel* k = kernel_.get();
    const int xi = x.first, zi = z ? z->first : -1, yi = y.first;
    const bool empty = product(y_shape, rank_of(x)) == 0;
    return {[k, xs, xi, zi, yi, empty](void* const* b) {
              if (empty) return;
              k->run(xs.data(), static_cast<const float*>(b[xi]),
                     zi < 0 ? nullptr : static_cast<const float*>(b[zi]),
                     static_cast<float*>(b[yi]));
            },
            owner_of(this)};
  }

  std::vector<std::string> implementations() { return kernel_->implementations(); }

 private:
  static std::unique_ptr<ConvKernel> make(nb::handle weight, nb::handle bias, const ConvAttrs& a) {
    View w = read_array(weight, "Conv", "weight", Need::kContiguous);
    View b = read_optional(bias, "Conv", "bias");
    return std::make_unique<ConvKernel>(w.data, w.shape, w.ndim, b.data, b.shape, b.ndim, a);
  }

  std::unique_ptr<ConvKernel> kernel_;
};

class MatMul {
 public:
  MatMul(nb::handle b, nb::handle bias, bool trans_b, const std::string& activation,
         const std::vector<double>& activation_params, double alpha, bool bf16) {
    View w = read_array(b, "MatMul", "b", Need::kContiguous);
    View c = read_optional(bias, "MatMul", "bias");
    kernel_ = std::make_unique<MatMulKernel>(w.data, w.shape, w.ndim, c.data, c.shape, c.ndim,
                                             trans_b, activation, activation_params, alpha, bf16);
  }

  nb::object call(nb::handle ah, nb::handle outh) {
    View a = read_array(ah, "MatMul", "a", Need::kContiguous);
    int64_t y_shape[kMaxDims];
    kernel_->output_shape(a.shape, a.ndim, y_shape);
    Out y = make_out(outh, y_shape, a.ndim, "MatMul");
    const int64_t M = product(a.shape, a.ndim - 1);
    if (M > 0) {
      nb::gil_scoped_release nogil;
      kernel_->run(M, a.data, y.data);
    }
    return y.obj;
  }

  ProgramStep step(const BufferRef& a, const BufferRef& y) {
    const Shape as = ref_shape(a, "MatMul", "a");
    int64_t y_shape[kMaxDims];
    kernel_->output_shape(as.data(), rank_of(a), y_shape);
    check_out_ref(y, y_shape, rank_of(a), "MatMul");
    MatMulKernel* k = kernel_.get();
    const int64_t M = product(as.data(), rank_of(a) - 1);
    const int ai = a.first, yi = y.first;
    return {[k, M, ai, yi](void* const* b) {
              if (M > 0) k->run(M, static_cast<const float*>(b[ai]), static_cast<float*>(b[yi]));
            },
            owner_of(this)};
  }

  std::vector<std::string> implementations() { return kernel_->implementations(); }

 private:
  std::unique_ptr<MatMulKernel> kernel_;
};

nb::object matmul(nb::handle ah, nb::handle bh, nb::handle outh, double alpha) {
  View a = read_array(ah, "matmul", "a", Need::kPositiveStrides);
  View b = read_array(bh, "matmul", "b", Need::kPositiveStrides);
  const BatchedShapes s = batched_matmul_shapes(a.shape, a.strides, a.ndim, b.shape, b.strides,
                                                b.ndim);
  Out y = make_out(outh, s.yd, s.R, "matmul");
  {
    nb::gil_scoped_release nogil;
    batched_matmul(s, static_cast<float>(alpha), a.data, b.data, y.data);
  }
  return y.obj;
}

nb::object pool_(nb::handle xh, int kind, const std::vector<int64_t>& kernel,
                 const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                 const std::vector<int64_t>& dilations, bool ceil_mode, bool channels_last,
                 nb::handle outh) {
  if (kind < kMaxPool || kind > kAvgExcludePad)
    invalid("pool: kind must be 0 (max), 1 (average counting padding) or 2 (average), got " +
            std::to_string(kind));
  const PoolAttrs attrs{kind, kernel, strides, pads, dilations, ceil_mode, channels_last};
  View x = read_array(xh, pool_name(kind), "x", Need::kContiguous);
  int64_t y_shape[kMaxDims];
  const PoolGeometry g = pool_geometry(attrs, x.shape, x.ndim, y_shape);
  Out y = make_out(outh, y_shape, x.ndim, pool_name(kind));
  {
    nb::gil_scoped_release nogil;
    pool(attrs, g, x.shape, y_shape, x.data, y.data);
  }
  return y.obj;
}

ProgramStep pool_step(const BufferRef& x, int kind, const std::vector<int64_t>& kernel,
                      const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                      const std::vector<int64_t>& dilations, bool ceil_mode, bool channels_last,
                      const BufferRef& y) {
  if (kind < kMaxPool || kind > kAvgExcludePad)
    invalid("pool: kind must be 0 (max), 1 (average counting padding) or 2 (average), got " +
            std::to_string(kind));
  const PoolAttrs attrs{kind, kernel, strides, pads, dilations, ceil_mode, channels_last};
  const Shape xs = ref_shape(x, pool_name(kind), "x");
  Shape ys{};
  const PoolGeometry g = pool_geometry(attrs, xs.data(), rank_of(x), ys.data());
  check_out_ref(y, ys.data(), rank_of(x), pool_name(kind));
  const int xi = x.first, yi = y.first;
  return {[attrs, g, xs, ys, xi, yi](void* const* b) {
            pool(attrs, g, xs.data(), ys.data(), static_cast<const float*>(b[xi]),
                 static_cast<float*>(b[yi]));
          },
          nb::none()};
}

ProgramStep relayout_step(const BufferRef& x, const BufferRef& y, bool to_last) {
  const char* who = to_last ? "to_channels_last" : "to_channels_first";
  const Shape xs = ref_shape(x, who, "x");
  const int rank = rank_of(x);
  Shape ys{};
  relayout_shape(xs.data(), rank, to_last, ys.data());
  check_out_ref(y, ys.data(), rank, who);
  const memory::dims strides = dense_strides(xs.data(), rank);
  Shape xstrides{};
  std::copy(strides.begin(), strides.end(), xstrides.begin());
  const int xi = x.first, yi = y.first;
  return {[xs, xstrides, rank, to_last, xi, yi](void* const* b) {
            relayout(xs.data(), xstrides.data(), rank, to_last, static_cast<const float*>(b[xi]),
                     static_cast<float*>(b[yi]));
          },
          nb::none()};
}

nb::object relayout_(nb::handle xh, nb::handle outh, bool to_last) {
  const char* who = to_last ? "to_channels_last" : "to_channels_first";
  View x = read_array(xh, who, "x", Need::kPositiveStrides);
  int64_t y_shape[kMaxDims];
  relayout_shape(x.shape, x.ndim, to_last, y_shape);
  Out y = make_out(outh, y_shape, x.ndim, who);
  {
    nb::gil_scoped_release nogil;
    relayout(x.shape, x.strides, x.ndim, to_last, x.data, y.data);
  }
  return y.obj;
}

}  // namespace

void bind_dnnl(nb::module_& m) {
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) invalid("set_num_threads: n must be >= 1, got " + std::to_string(n));
        thread_target().store(n);
        omp_set_num_threads(n);
      },
      "n"_a, "Threads every native kernel uses (OpenMP; oneDNN shares the pool).");
  m.def(
      "get_num_threads", [] { return thread_target().load(); },
      "Threads every native kernel uses.");

  m.def("bf16_native", &native_bf16,
        "Whether bf16=True runs bf16 kernels here (AVX512-BF16 or AMX); else it computes in f32.");

  nb::class_<Conv>(m, "Conv", "Convolution with prepacked weights (ember.kernels.cpu.dnnl.Conv).")
      .def(nb::init<nb::handle, nb::handle, const std::vector<int64_t>&,
                    const std::vector<int64_t>&, const std::vector<int64_t>&, int64_t, bool,
                    const std::string&, const std::vector<double>&, bool>(),
           "weight"_a, "bias"_a.none(), "strides"_a, "pads"_a, "dilations"_a, "group"_a,
           "channels_last"_a, "activation"_a, "activation_params"_a, "bf16"_a)
      .def("__call__", &Conv::call, "x"_a, "z"_a.none() = nb::none(),
           "out"_a.none() = nb::none(), "y = act(conv(x) + bias + z), into out if given.")
      .def("step", &Conv::step, "x"_a, "z"_a.none(), "out"_a,
           "The call on buffers (number, shape) of a Program: x, z (None: no residual), out.")
      .def("implementations", &Conv::implementations,
           "oneDNN's implementation name for each cached primitive.");

  nb::class_<MatMul>(m, "MatMul", "Matmul with a prepacked constant B (dnnl.MatMul).")
      .def(nb::init<nb::handle, nb::handle, bool, const std::string&, const std::vector<double>&,
                    double, bool>(),
           "b"_a, "bias"_a.none(), "trans_b"_a, "activation"_a, "activation_params"_a, "alpha"_a,
           "bf16"_a)
      .def("__call__", &MatMul::call, "a"_a, "out"_a.none() = nb::none(),
           "y = act(alpha * a @ B + bias), into out if given.")
      .def("step", &MatMul::step, "a"_a, "out"_a,
           "The call on buffers (number, shape) of a Program: a, out.")
      .def("implementations", &MatMul::implementations,
           "oneDNN's implementation name for each cached primitive.");

  m.def("matmul", &matmul, "a"_a, "b"_a, "out"_a.none() = nb::none(), "alpha"_a = 1.0,
        "alpha * (a @ b) with NumPy broadcasting over batch axes; strided views read in place.");
  m.def("pool", &pool_, "x"_a, "kind"_a, "kernel_shape"_a, "strides"_a, "pads"_a, "dilations"_a,
        "ceil_mode"_a, "channels_last"_a, "out"_a.none() = nb::none(),
        "Max (kind 0) or average (1: count padding, 2: do not) pooling, ONNX output sizes.");
  m.def("pool_step", &pool_step, "x"_a, "kind"_a, "kernel_shape"_a, "strides"_a, "pads"_a,
        "dilations"_a, "ceil_mode"_a, "channels_last"_a, "out"_a,
        "pool as a Program step on buffers (number, shape).");
  m.def("relayout_step", &relayout_step, "x"_a, "out"_a, "to_channels_last"_a,
        "to_channels_last/first as a Program step on buffers (number, shape).");
  m.def(
      "to_channels_last", [](nb::handle x, nb::handle out) { return relayout_(x, out, true); },
      "x"_a, "out"_a.none() = nb::none(), "(N, C, spatial...) -> (N, spatial..., C).");
  m.def(
      "to_channels_first", [](nb::handle x, nb::handle out) { return relayout_(x, out, false); },
      "x"_a, "out"_a.none() = nb::none(), "(N, spatial..., C) -> (N, C, spatial...).");
}

}  // namespace ember
