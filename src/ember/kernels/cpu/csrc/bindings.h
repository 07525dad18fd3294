// Each kernel family binds its own functions into ember._C; bindings.cpp calls them in turn.
#pragma once
#include <nanobind/nanobind.h>

namespace ember {
void bind_dnnl(nanobind::module_& m);  // dnnl_ops.cpp: oneDNN conv, matmul, pooling, reorders
void bind_math(nanobind::module_& m);  // math_ops.cpp: ember's own softmax, LayerNorm, GELU, attention
void bind_int8(nanobind::module_& m);  // dnnl_int8.cpp: int8 conv, matmul, (de)quantize, max pool
void bind_program(nanobind::module_& m);  // program.cpp: a lowered plan run in one call
void bind_sparse(nanobind::module_& m);  // sparse.cpp: matmul with a constant sparse B (CSR)
}  // namespace ember
