// Elementwise float32 kernels over contiguous buffers, dispatched on the CPU's ISA at run time.
#pragma once

#include <cstddef>

namespace ember {

// y[i] = max(x[i] + bias[i % bias_len], 0): Relu with an optional broadcast bias (bias_len 0 = none).
// x and y may alias (in place).
void bias_relu_f32(const float* x, const float* bias, std::size_t bias_len, float* y, std::size_t n);

// Which code path bias_relu_f32 takes on this CPU: "avx512", "avx2" or "scalar".
const char* bias_relu_f32_isa();

}  // namespace ember
