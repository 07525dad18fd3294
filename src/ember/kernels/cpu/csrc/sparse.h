// A matmul with a constant sparse B (an unstructured-pruned weight): y = act(a @ B + bias) for a
// (M, K) float32, touching only B's nonzeros. sparse.cpp holds the kernels (AVX-512 and a
// portable path, chosen at run time) and binds them; Python wrapper: ember/kernels/cpu/sparse.py.
//
// Two formats of B's nonzeros, one per kernel:
//   - few rows of a (M < kPanelRowsMin), AVX-512: sliced ELLPACK. Outputs n are sorted by their
//     nonzero count and cut into slices of 16 (one lane each); K is cut into windows of 32. For
//     each (slice, window), `steps` vectors of 16 (byte index into the window, value), padded with
//     zeros to the slice's longest row in that window. A step is one permute of a's window (two
//     registers) by the indices, times the values: 16 nonzeros per instruction with no gather
//     (Zen 4's 16-wide gathers cost ~18 cycles). It streams ~2x the nonzero bytes (padding) and
//     is bound by L2 bandwidth, ~4x less than dense at 90% sparsity.
//   - otherwise: CSR over the output columns n (int32 k, value), read by tiles of 16 rows of a
//     transposed into (K, 16) panels: each nonzero is one broadcast value times up to 4 panel
//     rows. The portable path reads the CSR for every M.
// Python-free; bad shapes throw std::invalid_argument (ValueError in Python).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ember::sparse {

// The activations the epilogue applies, as dnnl.MatMul names them (ONNX semantics, same defaults).
struct Activation {
  enum Kind { kNone, kRelu, kLeakyRelu, kClip, kHardSigmoid };
  Kind kind = kNone;
  float alpha = 0.0f, beta = 0.0f;
};

// Which kernels run: the widest this CPU has, or one a test asks for (set_sparse_isa).
enum class Isa : int { scalar = 0, avx512 = 1 };
Isa current_isa();
void set_isa(const std::string& name);  // "auto", "avx512", "scalar"
const char* isa_name(Isa isa);

class SparseMatMulKernel {
 public:
  // b: (K, N) row-major, or (N, K) with trans_b (Gemm's transB); bias: (N,) or null.
  // alpha is folded into the stored values.
  SparseMatMulKernel(const float* b, int64_t b_rows, int64_t b_cols, bool trans_b,
                     const float* bias, const std::string& activation,
                     const std::vector<double>& activation_params, double alpha);

  // a: (M, K) rows, y: (M, N), both C-contiguous; run without the GIL.
  void run(int64_t M, const float* a, float* y) const;

  int64_t K() const { return K_; }
  int64_t N() const { return N_; }
  int64_t nnz() const { return static_cast<int64_t>(values_.size()); }

 private:
  void build_ell();

  int64_t K_ = 0, N_ = 0;
  std::vector<int64_t> row_start_;  // (N + 1): output n's nonzeros are [row_start_[n], [n + 1])
  std::vector<int32_t> k_;          // (nnz): the row of B (the column of a) of each nonzero
  std::vector<float> values_;       // (nnz): alpha * B[k, n]
  std::vector<float> bias_;         // (N) zeros when there is no bias
  // The sliced ELLPACK copy (AVX-512, few rows): slice s, lane i is output order_[16 s + i]
  // (-1: padding past N); window w of slice s has steps_[s * windows + w] steps; slice s's steps
  // start at slice_step_[s] (S + 1 entries); each step is 16 indices and 16 values.
  int64_t windows_ = 0;
  std::vector<int32_t> order_;
  std::vector<uint8_t> steps_;
  std::vector<int64_t> slice_step_;
  std::vector<uint8_t> ell_k_;
  std::vector<float> ell_v_;
  Activation act_;
};

}  // namespace ember::sparse
