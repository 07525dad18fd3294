// A matmul with a constant sparse B (an unstructured-pruned weight): y = act(a @ B + bias) for a
// (M, K) float32, touching only B's nonzeros. sparse.cpp holds the kernels (AVX-512 and a
// portable path, chosen at run time) and binds them; Python wrapper: ember/kernels/cpu/sparse.py.
//
// Two formats of B's nonzeros, one per kernel:
//   - few rows of a (M < kPanelRowsMin), AVX-512: sliced ELLPACK over a compact, reordered K.
//     Only the rows of B with a nonzero (live inputs) are kept, 31 to a window of 32 (slot 31 is
//     a zero that padding reads, so a NaN in `a` only reaches outputs through B's nonzeros), in
//     an order a local search picks so that in each window every output of a slice has about as
//     many nonzeros; `a` is gathered into that order once per call (two gathers per window).
//     Outputs n are sorted by nonzero count and cut into slices of 16 (one lane each). A step is
//     one permute of a window of `a` (two registers) by 16 byte indices, times 16 values: 16
//     nonzeros per instruction with no per-nonzero gather (Zen 4's cost ~18 cycles). A (slice,
//     window) has as many steps as its longest lane, in groups of 4, 2 or 1 steps (indices packed
//     4 to an int32: the permute reads an index's low 5 bits, a shift picks the step), read in
//     three branch-free loops. On the 90%-pruned MNIST MLP the steps carry 1.6x the nonzeros
//     (3.2x in plain K order with whole windows: nonzeros bunch in the middle pixels, border
//     pixels are dead); the kernel streams them from L2 at ~30 bytes a cycle.
//   - otherwise: CSR over the output columns n (int32 k, value), read by tiles of 16 rows of a
//     transposed into (K, 16) panels: each nonzero is one broadcast value times up to 4 panel
//     rows. The portable path reads the CSR for every M.
// Python-free; bad shapes throw std::invalid_argument (ValueError in Python).
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

namespace ember::sparse {

// A std::vector allocator on 64-byte boundaries: the kernels' 64-byte loads then never straddle
// two cache lines (which costs ~1.5x on the AVX-512 path).
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const Aligned64<U>&) const {
    return true;
  }
};

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
  // Vectors of 16 (index, value) the few-rows AVX-512 kernel reads per row: nnz / 16 and up.
  int64_t ell_steps() const { return static_cast<int64_t>(ell_v_.size()) / 16; }

 private:
  void build_ell();
  void balance_windows();  // fills live_k_

  int64_t K_ = 0, N_ = 0;
  std::vector<int64_t> row_start_;  // (N + 1): output n's nonzeros are [row_start_[n], [n + 1])
  std::vector<int32_t> k_;          // (nnz): the row of B (the column of a) of each nonzero
  std::vector<float> values_;       // (nnz): alpha * B[k, n]
  std::vector<float> bias_;         // (N) zeros when there is no bias
  // The sliced ELLPACK copy (AVX-512, few rows). live_k_[j]: the row of B at compact position j
  // (window j / 31, slot j % 31; -1: an empty slot). Slice s, lane i is output order_[16 s + i]
  // (-1: padding past N). Slice s's groups of 4 steps are [slice_group_[3 s], [3 s + 1]), then
  // its groups of 2 and of 1 steps up to slice_group_[3 s + 3]; its values start at
  // slice_value_[s]. Group g reads window group_window_[g] and packed indices ell_k_[64 g, 64 g +
  // 64) (byte t of lane i's int32 is step t's); step t of a group, lane i, is value 16 t + i.
  int64_t windows_ = 0;
  std::vector<int32_t> live_k_;
  std::vector<int32_t> order_;
  std::vector<int64_t> slice_group_, slice_value_;
  std::vector<int32_t> group_window_;
  std::vector<uint8_t, Aligned64<uint8_t>> ell_k_;
  std::vector<float, Aligned64<float>> ell_v_;
  Activation act_;
};

}  // namespace ember::sparse
