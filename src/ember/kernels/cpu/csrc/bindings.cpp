// The root of ember._C: CPU features and the first kernel here; each kernel family binds itself
// (bindings.h). Wrappers check shapes and release the GIL around the work.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <string>

#include "bindings.h"
#include "cpu_info.h"
#include "elementwise.h"

namespace nb = nanobind;
using namespace nb::literals;

using F32Array = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

NB_MODULE(_C, m) {
  m.doc() = "ember's native CPU kernels (C++). Each is checked against the NumPy reference in ember.ops.";

  m.def("cpu_info", []() {
    const ember::CpuInfo& c = ember::cpu_info();
    nb::dict d;
    d["avx2"] = c.avx2;
    d["fma"] = c.fma;
    d["avx512f"] = c.avx512f;
    d["avx512bw"] = c.avx512bw;
    d["avx512vnni"] = c.avx512vnni;
    d["avx512bf16"] = c.avx512bf16;
    return d;
  }, "The CPU features the kernels dispatch on.");

  m.def("bias_relu_isa", &ember::bias_relu_f32_isa, "Code path bias_relu takes on this CPU.");

  m.def(
      "bias_relu",
      [](F32Array x, nb::object bias, F32Out y) {
        if (x.size() != y.size()) throw nb::value_error("bias_relu: x and y differ in size");
        const float* b = nullptr;
        std::size_t blen = 0;
        F32Array barr;
        if (!bias.is_none()) {
          barr = nb::cast<F32Array>(bias);
          b = barr.data();
          blen = barr.size();
          if (blen == 0 || x.size() % blen != 0)
            throw nb::value_error(("bias_relu: bias of " + std::to_string(blen) +
                                   " elements does not tile x of " + std::to_string(x.size()))
                                      .c_str());
        }
        nb::gil_scoped_release release;
        ember::bias_relu_f32(x.data(), b, blen, y.data(), x.size());
      },
      "x"_a, "bias"_a.none(), "y"_a,
      "y = max(x + bias, 0) over the last axis (bias broadcast along it); x, y float32, C-contiguous.");

  ember::bind_dnnl(m);
  ember::bind_math(m);
  ember::bind_int8(m);
  ember::bind_program(m);
  ember::bind_sparse(m);
}
