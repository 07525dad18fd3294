// The oneDNN kernels behind ember._C (dnnl_ops.cpp binds them): a prepacked Conv and MatMul, a
// batched matmul over strided operands, pooling with ONNX output sizes, NC... <-> N...C reorders.
// Python-free: arrays come as raw float32 pointers with shapes (and element strides where views are
// allowed). Bad shapes or attributes throw std::invalid_argument (ValueError in Python) saying
// expected vs got. Primitives are cached per input shape and thread count.
//
// bf16 (opt-in): measured on this CPU (AMD EPYC Zen 4, 2 cores, oneDNN 3.2 gomp, NHWC, ReLU):
//                                 f32            fpmath_mode=bf16     bf16 src+weights, f32 dst
//   3x3 conv C=64  H=56          1008 us (229)    993 us (233)         517 us (448 GFLOP/s)
//   3x3 conv C=256 H=14           925 us (250)    922 us (251)         498 us (465)
//   matmul 128x384 @ 384x1536     671 us (225)    665 us (227)         374 us (404)
// fpmath_mode alone changes nothing (no f32-in, bf16-compute kernels without AMX), so bf16 means
// bf16 weights packed once plus a per-call f32 -> bf16 reorder of the source (its time included).
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dnnl_common.h"

namespace ember::dnnl_detail {

using dnnl::algorithm;
using dnnl::prop_kind;

inline std::string shape_str(const int64_t* s, int n) {
  std::string r = "(";
  for (int i = 0; i < n; ++i) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  if (n == 1) r += ",";
  return r + ")";
}

inline int64_t product(const int64_t* s, int n) {
  int64_t p = 1;
  for (int i = 0; i < n; ++i) p *= s[i];
  return p;
}

[[noreturn]] inline void invalid(const std::string& msg) { throw std::invalid_argument(msg); }

// Row-major dense, ignoring the strides of size-1 axes (NumPy leaves those arbitrary).
inline bool is_dense(const int64_t* shape, const int64_t* strides, int n) {
  int64_t expect = 1;
  for (int i = n - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

inline memory::dims to_dims(const int64_t* v, int n) { return memory::dims(v, v + n); }

inline memory::dims dense_strides(const int64_t* shape, int n) {
  memory::dims s(n);
  int64_t acc = 1;
  for (int i = n - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

inline bool impl_is(const dnnl::primitive_desc_base& pd, const char* prefix) {
  return std::string(pd.impl_info_str()).rfind(prefix, 0) == 0;
}

inline std::vector<std::string> impls_of(const std::vector<const Exec*>& execs) {
  std::vector<std::string> out;
  for (const Exec* e : execs)
    if (e) out.push_back(e->impl());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Activations: ONNX op name + params -> a oneDNN eltwise post-op with the same semantics
// ---------------------------------------------------------------------------------------------

struct Activation {
  bool on = false;
  algorithm alg = algorithm::undef;
  float alpha = 0.0f, beta = 0.0f;
};

inline Activation parse_activation(const std::string& name, const std::vector<double>& params,
                                   const char* who) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  struct Row {
    const char* name;
    algorithm alg;
    int n_params;  // how many params the caller may give; missing ones take the ONNX defaults
    double alpha, beta;
  };
  // oneDNN definitions (3.x): relu alpha = negative slope; clip_v2 = min(max(x, alpha), beta);
  // hardsigmoid = max(0, min(1, alpha*x + beta)); hardswish = x * hardsigmoid(x; alpha, beta),
  // which is ONNX HardSwish at alpha = 1/6, beta = 1/2; elu = alpha*(exp(x) - 1) for x < 0.
  static const Row rows[] = {
      {"Relu", algorithm::eltwise_relu, 0, 0.0, 0.0},
      {"LeakyRelu", algorithm::eltwise_relu, 1, 0.01, 0.0},
      {"Clip", algorithm::eltwise_clip_v2, 2, -inf, inf},
      {"Sigmoid", algorithm::eltwise_logistic, 0, 0.0, 0.0},
      {"Tanh", algorithm::eltwise_tanh, 0, 0.0, 0.0},
      {"HardSigmoid", algorithm::eltwise_hardsigmoid, 2, 0.2, 0.5},
      {"HardSwish", algorithm::eltwise_hardswish, 0, 1.0 / 6.0, 0.5},
      {"Gelu", algorithm::eltwise_gelu_erf, 0, 0.0, 0.0},
      {"GeluTanh", algorithm::eltwise_gelu_tanh, 0, 0.0, 0.0},
      {"Elu", algorithm::eltwise_elu, 1, 1.0, 0.0},
  };
  Activation act;
  if (name.empty()) {
    if (!params.empty())
      invalid(std::string(who) + ": activation_params given without an activation");
    return act;
  }
  for (const Row& r : rows) {
    if (name != r.name) continue;
    if (static_cast<int>(params.size()) > r.n_params)
      invalid(std::string(who) + ": activation " + name + " takes at most " +
              std::to_string(r.n_params) + " activation_params, got " +
              std::to_string(params.size()));
    double a = params.size() > 0 ? params[0] : r.alpha;
    double b = params.size() > 1 ? params[1] : r.beta;
    // ONNX Clip with min > max gives max everywhere (NumPy's clip); oneDNN would give min.
    if (r.alg == algorithm::eltwise_clip_v2 && a > b) a = b;
    act.on = true;
    act.alg = r.alg;
    act.alpha = static_cast<float>(a);
    act.beta = static_cast<float>(b);
    return act;
  }
  std::string known;
  for (const Row& r : rows) known += std::string(known.empty() ? "" : ", ") + r.name;
  invalid(std::string(who) + ": unknown activation '" + name + "' (known: " + known + ")");
}

inline void append_activation(dnnl::post_ops& po, const Activation& act) {
  if (act.on) po.append_eltwise(act.alg, act.alpha, act.beta);
}

// ---------------------------------------------------------------------------------------------
// Constant weights, packed on demand
// ---------------------------------------------------------------------------------------------

// Packed copies of one constant weight tensor, one per layout a primitive asked for. The plain
// source is dropped once the first packed copy exists; later layouts are reordered from that copy
// (a reorder between layouts of one data type is exact), so a weight is held about once.
class PackedWeights {
 public:
  explicit PackedWeights(memory plain) : source_(std::move(plain)) {}

  memory get(const memory::desc& want) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const memory& m : packed_)
      if (m.get_desc() == want) return m;
    memory from = packed_.empty() ? source_ : packed_.front();
    memory to(want, engine());
    dnnl::reorder(from, to).execute(stream(), from, to);
    stream().wait();
    packed_.push_back(to);
    source_ = memory();
    return to;
  }

 private:
  std::mutex mu_;
  memory source_;
  std::vector<memory> packed_;
};

inline memory copy_to_memory(const memory::desc& md, const float* data, std::size_t n,
                             float scale) {
  memory m(md, engine());
  float* dst = static_cast<float*>(m.get_data_handle());
  if (scale == 1.0f) {
    std::memcpy(dst, data, n * sizeof(float));
  } else {
    for (std::size_t i = 0; i < n; ++i) dst[i] = data[i] * scale;
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Conv: y = act(conv(x, W) + bias + z), NC... or N...C, weights prepacked
// ---------------------------------------------------------------------------------------------

struct ConvAttrs {
  std::vector<int64_t> strides, pads, dilations;  // ONNX: pads begins then ends, 1 = dense
  int64_t group = 1;
  bool channels_last = false;
  std::string activation;
  std::vector<double> activation_params;
  bool bf16 = false;
};

struct ConvPlan {
  std::unique_ptr<Exec> conv;
  // Conversions around `conv` when it computes in another type or layout than the caller's arrays:
  // x -> bf16 and/or NHWC, z -> NHWC, and the NHWC result -> y. Per-thread buffers hold the copies.
  std::unique_ptr<Exec> src_in, z_in, dst_out;
  std::size_t src_bytes = 0, z_bytes = 0, dst_bytes = 0;

  void run(const float* x, const float* z, float* y) {
    const void* src = x;
    const void* zz = z;
    void* dst = y;
    if (src_in) {
      void* buf = thread_buffer(kSrc, src_bytes);
      const void* p[] = {x, buf};
      src_in->run(p);
      src = buf;
    }
    if (z_in) {
      void* buf = thread_buffer(kSrc1, z_bytes);
      const void* p[] = {z, buf};
      z_in->run(p);
      zz = buf;
    }
    if (dst_out) dst = thread_buffer(kDst, dst_bytes);
    const void* p[] = {src, dst, zz};
    conv->run(p);
    if (dst_out) {
      const void* q[] = {dst, y};
      dst_out->run(q);
    }
  }
};

class ConvKernel {
 public:
  // weight: (K, C/group, k...) row-major, 1 to 3 spatial axes; bias: (K,) or null.
  ConvKernel(const float* weight, const int64_t* w_shape, int w_ndim, const float* bias,
             const int64_t* b_shape, int b_ndim, const ConvAttrs& a)
      : group_(a.group), channels_last_(a.channels_last), bf16_(a.bf16 && native_bf16()) {
    const std::string ws = shape_str(w_shape, w_ndim);
    if (w_ndim < 3 || w_ndim > 5)
      invalid("Conv: weight must be (K, C/group, k...) with 1 to 3 spatial axes, got shape " + ws);
    nd_ = w_ndim - 2;
    K_ = w_shape[0];
    Cg_ = w_shape[1];
    if (product(w_shape, w_ndim) == 0)
      invalid("Conv: weight has shape " + ws + ", with no elements");
    if (group_ < 1 || K_ % group_ != 0)
      invalid("Conv: group=" + std::to_string(group_) + " must be >= 1 and divide the " +
              std::to_string(K_) + " output channels of weight " + ws);
    const auto need = [&](const std::vector<int64_t>& v, std::size_t n, const char* name,
                          int64_t lo) {
      if (v.size() != n)
        invalid("Conv: " + std::string(name) + " has " + std::to_string(v.size()) +
                " values, expected " + std::to_string(n) + " for weight " + ws);
      for (int64_t e : v)
        if (e < lo)
          invalid("Conv: " + std::string(name) + " must be >= " + std::to_string(lo) + ", got " +
                  std::to_string(e));
    };
    need(a.strides, nd_, "strides", 1);
    need(a.dilations, nd_, "dilations", 1);
    need(a.pads, 2 * nd_, "pads", 0);
    for (int i = 0; i < nd_; ++i) {
      kernel_[i] = w_shape[2 + i];
      strides_[i] = a.strides[i];
      dilations_[i] = a.dilations[i];
      pads_begin_[i] = a.pads[i];
      pads_end_[i] = a.pads[nd_ + i];
    }
    act_ = parse_activation(a.activation, a.activation_params, "Conv");
    // ONNX (K, C/g, k...) is oneDNN's oi... ungrouped, and g,o,i... grouped (K = g * K/g).
    if (group_ > 1) weight_dims_ = {group_, K_ / group_, Cg_};
    else weight_dims_ = {K_, Cg_};
    for (int i = 0; i < nd_; ++i) weight_dims_.push_back(kernel_[i]);
    weights_ = std::make_unique<PackedWeights>(
        copy_to_memory(memory::desc(weight_dims_, dt::f32, weights_tag(nd_, group_ > 1)), weight,
                       static_cast<std::size_t>(product(w_shape, w_ndim)), 1.0f));
    if (bias) {
      if (b_ndim != 1 || b_shape[0] != K_)
        invalid("Conv: bias has shape " + shape_str(b_shape, b_ndim) + ", expected (" +
                std::to_string(K_) + ",) for weight " + ws);
      bias_ = copy_to_memory(memory::desc({K_}, dt::f32, tag::a), bias,
                             static_cast<std::size_t>(K_), 1.0f);
    }
  }

  int rank() const { return nd_ + 2; }

  // y's shape for x's (both in the kernel's layout), or invalid_argument naming the mismatch.
  void output_shape(const int64_t* x, int x_ndim, int64_t* y) const {
    const int rank = nd_ + 2;
    const int c_axis = channels_last_ ? rank - 1 : 1, sp0 = channels_last_ ? 1 : 2;
    const std::string layout = layout_name();
    if (x_ndim != rank)
      invalid("Conv: x must be " + layout + ", got shape " + shape_str(x, x_ndim));
    if (x[c_axis] != Cg_ * group_)
      invalid("Conv: x " + layout + " has shape " + shape_str(x, x_ndim) + " with " +
              std::to_string(x[c_axis]) + " channels, expected " + std::to_string(Cg_ * group_) +
              " (weight C/group=" + std::to_string(Cg_) + ", group=" + std::to_string(group_) +
              ")");
    y[0] = x[0];
    y[c_axis] = K_;
    for (int i = 0; i < nd_; ++i) {
      const int64_t extent = (kernel_[i] - 1) * dilations_[i] + 1;
      const int64_t padded = x[sp0 + i] + pads_begin_[i] + pads_end_[i];
      if (padded < extent)
        invalid("Conv: spatial axis " + std::to_string(i) + " of x " + shape_str(x, x_ndim) +
                " is " + std::to_string(padded) +
                " with padding, smaller than the kernel extent " + std::to_string(extent));
      y[sp0 + i] = (padded - extent) / strides_[i] + 1;
    }
  }

  // x, z (y's shape, or null) and y as output_shape() checked them; run without the GIL.
  void run(const int64_t* x_shape, const float* x, const float* z, float* y) {
    int64_t y_shape[5];
    output_shape(x_shape, nd_ + 2, y_shape);
    const int sp0 = channels_last_ ? 1 : 2;
    double flops = 2.0 * static_cast<double>(product(y_shape, nd_ + 2)) * static_cast<double>(Cg_);
    for (int i = 0; i < nd_; ++i) flops *= static_cast<double>(kernel_[i]);
    const ThreadScope threads(flops < kParallelMinFlops);
    Key key;
    key.push(threads.n());
    key.push(z != nullptr);
    key.push(x_shape[0]);
    for (int i = 0; i < nd_; ++i) key.push(x_shape[sp0 + i]);
    auto plan = plans_.get(key, [&] { return build(x_shape, y_shape, z != nullptr); });
    plan->run(x, z, y);
  }

  std::vector<std::string> implementations() {
    std::vector<const Exec*> e;
    for (auto& p : plans_.values()) e.push_back(p->conv.get());
    return impls_of(e);
  }

 private:
  std::string layout_name() const {
    static const char* const first[] = {"(N, C, W)", "(N, C, H, W)", "(N, C, D, H, W)"};
    static const char* const last[] = {"(N, W, C)", "(N, H, W, C)", "(N, D, H, W, C)"};
    return (channels_last_ ? last : first)[nd_ - 1];
  }

  std::shared_ptr<ConvPlan> build(const int64_t* x_shape, const int64_t* y_shape, bool has_z) {
    const int sp0 = channels_last_ ? 1 : 2;
    memory::dims src_dims{x_shape[0], Cg_ * group_}, dst_dims{x_shape[0], K_}, st, dil, pl, pr;
    for (int i = 0; i < nd_; ++i) {
      src_dims.push_back(x_shape[sp0 + i]);
      dst_dims.push_back(y_shape[sp0 + i]);
      st.push_back(strides_[i]);
      dil.push_back(dilations_[i] - 1);  // oneDNN counts dilation from 0
      pl.push_back(pads_begin_[i]);
      pr.push_back(pads_end_[i]);
    }
    const dt cdt = bf16_ ? dt::bf16 : dt::f32;
    const memory::desc w_any(weight_dims_, cdt, tag::any);
    using PD = dnnl::convolution_forward::primitive_desc;
    // The primitive computing in layout t (the caller's, or NHWC when that is much faster).
    const auto make = [&](tag t) {
      const memory::desc src_md(src_dims, cdt, t), dst_md(dst_dims, dt::f32, t);
      dnnl::primitive_attr attr = user_scratchpad_attr();
      dnnl::post_ops po;
      // z enters as a binary post-op, not a `sum` into dst: dst may be a fresh buffer.
      if (has_z) po.append_binary(algorithm::binary_add, dst_md);
      append_activation(po, act_);
      attr.set_post_ops(po);
      return bias_ ? PD(engine(), prop_kind::forward_inference, algorithm::convolution_direct,
                        src_md, w_any, bias_.get_desc(), dst_md, st, dil, pl, pr, attr)
                   : PD(engine(), prop_kind::forward_inference, algorithm::convolution_direct,
                        src_md, w_any, dst_md, st, dil, pl, pr, attr);
    };
    const tag user = activation_tag(nd_, channels_last_);
    tag t = user;
    PD pd;
    try {
      pd = make(user);
    } catch (const dnnl::error& e) {
      invalid(std::string("Conv: oneDNN has no convolution for this configuration: ") + e.what());
    }
    // oneDNN's NC... convolutions are gemm-based: 1.3-30x slower on this CPU than its direct
    // kernels on NHWC (one thread: 3x3 C=64 H=56 4.4 vs 2.0 ms; 1x1 C=64->256 5.8 vs 0.9 ms;
    // depthwise 3x3 C=144 H=56 5.4 vs 0.18 ms; 7x7/2 C=3 H=224 3.9 vs 2.1 ms). Converting x (and
    // z) in and y out costs far less than that.
    const auto gemm_based = [](const PD& d) {
      return std::string(d.impl_info_str()).find("gemm") != std::string::npos || impl_is(d, "ref");
    };
    if (!channels_last_ && gemm_based(pd)) {
      try {
        PD alt = make(activation_tag(nd_, true));
        if (!gemm_based(alt)) {
          pd = alt;
          t = activation_tag(nd_, true);
        }
      } catch (const dnnl::error&) {
        // keep the NC... primitive
      }
    }
    const memory::desc x_md(src_dims, dt::f32, user), y_md(dst_dims, dt::f32, user);
    const memory::desc src_md(src_dims, cdt, t), dst_md(dst_dims, dt::f32, t);
    std::vector<std::pair<int, memory>> fixed{{DNNL_ARG_WEIGHTS, weights_->get(pd.weights_desc())}};
    if (bias_) fixed.emplace_back(DNNL_ARG_BIAS, bias_);
    std::vector<std::pair<int, memory::desc>> per_call{{DNNL_ARG_SRC, src_md},
                                                       {DNNL_ARG_DST, dst_md}};
    if (has_z) per_call.emplace_back(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, dst_md);
    auto plan = std::make_shared<ConvPlan>();
    plan->conv = std::make_unique<Exec>(pd, std::move(fixed), std::move(per_call));
    if (src_md != x_md) {
      plan->src_in = make_reorder(x_md, src_md);
      plan->src_bytes = src_md.get_size();
    }
    if (t != user) {
      if (has_z) {
        plan->z_in = make_reorder(y_md, dst_md);
        plan->z_bytes = dst_md.get_size();
      }
      plan->dst_out = make_reorder(dst_md, y_md);
      plan->dst_bytes = dst_md.get_size();
    }
    return plan;
  }

  int nd_ = 2;
  int64_t K_ = 0, Cg_ = 0, group_ = 1;
  int64_t kernel_[3] = {}, strides_[3] = {}, dilations_[3] = {}, pads_begin_[3] = {},
          pads_end_[3] = {};
  bool channels_last_ = false, bf16_ = false;
  Activation act_;
  memory::dims weight_dims_;
  std::unique_ptr<PackedWeights> weights_;
  memory bias_;
  PlanCache<ConvPlan> plans_;
};

// ---------------------------------------------------------------------------------------------
// MatMul with a constant B: y = act(alpha * a @ B + bias), a (..., K) -> (..., N)
// ---------------------------------------------------------------------------------------------

// y = a's shape with the last axis K -> N, for a matmul by a constant (K, N) B; `who` names it.
inline void matmul_output_shape(const char* who, int64_t K, int64_t N, const int64_t* a,
                                int a_ndim, int64_t* y) {
  if (a_ndim < 1 || a[a_ndim - 1] != K)
    invalid(std::string(who) + ": a must be (..., " + std::to_string(K) + ") to match b's K=" +
            std::to_string(K) + ", got shape " + shape_str(a, a_ndim));
  for (int i = 0; i + 1 < a_ndim; ++i) y[i] = a[i];
  y[a_ndim - 1] = N;
}

struct MatMulPlan {
  std::unique_ptr<Exec> mm;
  std::unique_ptr<Exec> to_bf16;
  std::size_t converted_bytes = 0;
};

class MatMulKernel {
 public:
  // b: (K, N) row-major, or (N, K) with trans_b (Gemm's transB); bias: (N,) or null.
  MatMulKernel(const float* b, const int64_t* b_shape, int b_ndim, const float* bias,
               const int64_t* bias_shape, int bias_ndim, bool trans_b,
               const std::string& activation, const std::vector<double>& activation_params,
               double alpha, bool bf16)
      : bf16_(bf16 && native_bf16()) {
    const std::string bs = shape_str(b_shape, b_ndim);
    if (b_ndim != 2)
      invalid(std::string("MatMul: b must be 2-D ") + (trans_b ? "(N, K)" : "(K, N)") +
              ", got shape " + bs);
    K_ = trans_b ? b_shape[1] : b_shape[0];
    N_ = trans_b ? b_shape[0] : b_shape[1];
    if (K_ == 0 || N_ == 0) invalid("MatMul: b has shape " + bs + ", with no elements");
    act_ = parse_activation(activation, activation_params, "MatMul");
    // alpha is folded into the packed B: alpha * (a @ B) == a @ (alpha * B) up to rounding.
    // B (N, K) under trans_b is the (K, N) matrix in oneDNN's `ba` layout: no transpose copy.
    weights_ = std::make_unique<PackedWeights>(
        copy_to_memory(memory::desc({K_, N_}, dt::f32, trans_b ? tag::ba : tag::ab), b,
                       static_cast<std::size_t>(K_ * N_), static_cast<float>(alpha)));
    if (bias) {
      if (bias_ndim != 1 || bias_shape[0] != N_)
        invalid("MatMul: bias has shape " + shape_str(bias_shape, bias_ndim) + ", expected (" +
                std::to_string(N_) + ",)");
      bias_ = copy_to_memory(memory::desc({1, N_}, dt::f32, tag::ab), bias,
                             static_cast<std::size_t>(N_), 1.0f);
    }
  }

  void output_shape(const int64_t* a, int a_ndim, int64_t* y) const {
    matmul_output_shape("MatMul", K_, N_, a, a_ndim, y);
  }

  // a: (M, K) rows, y: (M, N); run without the GIL.
  void run(int64_t M, const float* a, float* y) {
    const ThreadScope threads(2.0 * M * K_ * N_ < kParallelMinFlops);
    Key key;
    key.push(threads.n());
    key.push(M);
    auto plan = plans_.get(key, [&] { return build(M); });
    const void* src = a;
    if (plan->to_bf16) {
      void* buf = thread_buffer(kSrc, plan->converted_bytes);
      const void* p[] = {a, buf};
      plan->to_bf16->run(p);
      src = buf;
    }
    const void* p[] = {src, y};
    plan->mm->run(p);
  }

  std::vector<std::string> implementations() {
    std::vector<const Exec*> e;
    for (auto& p : plans_.values()) e.push_back(p->mm.get());
    return impls_of(e);
  }

 private:
  // oneDNN matmul over inner_product: equal at M=4096 (K,N = 384,1536 / 1536,384 / 784,256:
  // 218-224 GFLOP/s both) and faster at M=1 (16.7 vs 17.3 us, 16.4 vs 18.5, 5.7 vs 7.9).
  std::shared_ptr<MatMulPlan> build(int64_t M) {
    const dt cdt = bf16_ ? dt::bf16 : dt::f32;
    const memory::desc a_md({M, K_}, dt::f32, tag::ab), src_md({M, K_}, cdt, tag::ab),
        w_any({K_, N_}, cdt, tag::any), dst_md({M, N_}, dt::f32, tag::ab);
    dnnl::primitive_attr attr = user_scratchpad_attr();
    dnnl::post_ops po;
    append_activation(po, act_);
    attr.set_post_ops(po);
    using PD = dnnl::matmul::primitive_desc;
    PD pd;
    try {
      pd = bias_ ? PD(engine(), src_md, w_any, bias_.get_desc(), dst_md, attr)
                 : PD(engine(), src_md, w_any, dst_md, attr);
    } catch (const dnnl::error& e) {
      invalid(std::string("MatMul: oneDNN has no matmul for this configuration: ") + e.what());
    }
    std::vector<std::pair<int, memory>> fixed{{DNNL_ARG_WEIGHTS, weights_->get(pd.weights_desc())}};
    if (bias_) fixed.emplace_back(DNNL_ARG_BIAS, bias_);
    auto plan = std::make_shared<MatMulPlan>();
    plan->mm = std::make_unique<Exec>(
        pd, std::move(fixed),
        std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_SRC, src_md}, {DNNL_ARG_DST, dst_md}});
    if (bf16_) {
      plan->to_bf16 = make_reorder(a_md, src_md);
      plan->converted_bytes = src_md.get_size();
    }
    return plan;
  }

  int64_t K_ = 0, N_ = 0;
  bool bf16_ = false;
  Activation act_;
  std::unique_ptr<PackedWeights> weights_;
  memory bias_;
  PlanCache<MatMulPlan> plans_;
};

// ---------------------------------------------------------------------------------------------
// matmul of two runtime tensors: NumPy broadcasting over batch axes, strided views read in place
// ---------------------------------------------------------------------------------------------

// Both operands brought to one rank R (leading 1s), with element strides; y is dense.
struct BatchedShapes {
  int R = 2;
  int64_t ad[4], as[4], bd[4], bs[4], yd[4];
};

// Size-1 axes get the stride a dense layout would give them (NumPy leaves theirs arbitrary), so
// oneDNN recognizes the layout: the largest extent of the axes inside them.
inline void normalize_unit_strides(const int64_t* shape, int64_t* strides, int n) {
  for (int i = n - 1; i >= 0; --i) {
    if (shape[i] != 1) continue;
    int64_t s = 1;
    for (int j = i + 1; j < n; ++j) s = std::max(s, strides[j] * shape[j]);
    strides[i] = s;
  }
}

// a, b: rank 2-4 with positive strides (elements) on every axis longer than 1.
inline BatchedShapes batched_matmul_shapes(const int64_t* a, const int64_t* a_strides, int ra,
                                           const int64_t* b, const int64_t* b_strides, int rb) {
  if (ra < 2 || ra > 4 || rb < 2 || rb > 4)
    invalid("matmul: a and b must have rank 2 to 4, got shapes " + shape_str(a, ra) + " and " +
            shape_str(b, rb));
  BatchedShapes s;
  const int R = s.R = std::max(ra, rb);
  for (int i = 0; i < R; ++i) {
    const int ia = i - (R - ra), ib = i - (R - rb);
    s.ad[i] = ia >= 0 ? a[ia] : 1;
    s.as[i] = ia >= 0 ? a_strides[ia] : 1;
    s.bd[i] = ib >= 0 ? b[ib] : 1;
    s.bs[i] = ib >= 0 ? b_strides[ib] : 1;
  }
  if (s.ad[R - 1] != s.bd[R - 2])
    invalid("matmul: a " + shape_str(a, ra) + " has K=" + std::to_string(s.ad[R - 1]) +
            " on its last axis but b " + shape_str(b, rb) +
            " has K=" + std::to_string(s.bd[R - 2]) + " on its second-to-last");
  for (int i = 0; i < R - 2; ++i) {
    if (s.ad[i] != s.bd[i] && s.ad[i] != 1 && s.bd[i] != 1)
      invalid("matmul: the batch axes of a " + shape_str(a, ra) + " and b " + shape_str(b, rb) +
              " do not broadcast");
    s.yd[i] = s.ad[i] == 1 ? s.bd[i] : s.ad[i];
  }
  s.yd[R - 2] = s.ad[R - 2];
  s.yd[R - 1] = s.bd[R - 1];
  normalize_unit_strides(s.ad, s.as, R);
  normalize_unit_strides(s.bd, s.bs, R);
  return s;
}

struct BatchedPlan {
  std::unique_ptr<Exec> mm, copy_a, copy_b;  // copies only when oneDNN has no fast strided kernel
  std::size_t bytes_a = 0, bytes_b = 0;
};

inline std::shared_ptr<BatchedPlan> build_batched(const BatchedShapes& s, float alpha) {
  const int R = s.R;
  const memory::desc a_md(to_dims(s.ad, R), dt::f32, to_dims(s.as, R)),
      b_md(to_dims(s.bd, R), dt::f32, to_dims(s.bs, R)),
      y_md(to_dims(s.yd, R), dt::f32, dense_strides(s.yd, R));
  dnnl::primitive_attr attr = user_scratchpad_attr();
  if (alpha != 1.0f) {
    dnnl::post_ops po;
    po.append_eltwise(algorithm::eltwise_linear, alpha, 0.0f);
    attr.set_post_ops(po);
  }
  const auto make = [&](const memory::desc& a, const memory::desc& b) {
    try {
      return dnnl::matmul::primitive_desc(engine(), a, b, y_md, attr);
    } catch (const dnnl::error& e) {
      invalid(std::string("matmul: oneDNN has no matmul for these shapes/strides: ") + e.what());
    }
  };
  auto plan = std::make_shared<BatchedPlan>();
  dnnl::matmul::primitive_desc pd = make(a_md, b_md);
  const bool a_dense = is_dense(s.ad, s.as, R), b_dense = is_dense(s.bd, s.bs, R);
  // oneDNN reads the usual strided views in place (a transposed b, heads split out of a
  // (B, S, H*D) tensor: gemm:jit at 160-190 GFLOP/s vs brg at ~200 on dense copies, which cost
  // more than the difference); for other strides it falls back to its slow reference kernel.
  // Then a dense copy of the strided operand(s) plus a fast kernel is the better deal.
  if (impl_is(pd, "ref") && !(a_dense && b_dense)) {
    const memory::desc a2 =
        a_dense ? a_md : memory::desc(a_md.get_dims(), dt::f32, dense_strides(s.ad, R));
    const memory::desc b2 =
        b_dense ? b_md : memory::desc(b_md.get_dims(), dt::f32, dense_strides(s.bd, R));
    dnnl::matmul::primitive_desc pd2 = make(a2, b2);
    if (!impl_is(pd2, "ref")) {
      pd = pd2;
      if (!a_dense) {
        plan->copy_a = make_reorder(a_md, a2);
        plan->bytes_a = a2.get_size();
      }
      if (!b_dense) {
        plan->copy_b = make_reorder(b_md, b2);
        plan->bytes_b = b2.get_size();
      }
    }
  }
  plan->mm = std::make_unique<Exec>(
      pd, std::vector<std::pair<int, memory>>{},
      std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_SRC, pd.src_desc()},
                                                {DNNL_ARG_WEIGHTS, pd.weights_desc()},
                                                {DNNL_ARG_DST, y_md}});
  return plan;
}

// y (dense, s.yd) = alpha * a @ b; run without the GIL.
inline void batched_matmul(const BatchedShapes& s, float alpha, const float* a, const float* b,
                           float* y) {
  const int R = s.R;
  const int64_t y_size = product(s.yd, R);
  if (y_size == 0) return;
  if (s.ad[R - 1] == 0) {  // an empty sum
    std::fill(y, y + y_size, 0.0f);
    return;
  }
  static PlanCache<BatchedPlan>* plans = new PlanCache<BatchedPlan>();
  const ThreadScope threads(2.0 * y_size * s.ad[R - 1] < kParallelMinFlops);
  Key key;
  key.push(threads.n());
  key.push(R);
  uint32_t alpha_bits;
  std::memcpy(&alpha_bits, &alpha, sizeof alpha_bits);
  key.push(alpha_bits);
  for (int i = 0; i < R; ++i) {
    key.push(s.ad[i]);
    key.push(s.as[i]);
    key.push(s.bd[i]);
    key.push(s.bs[i]);
  }
  auto plan = plans->get(key, [&] { return build_batched(s, alpha); });
  const void* pa = a;
  const void* pb = b;
  if (plan->copy_a) {
    void* buf = thread_buffer(kSrc, plan->bytes_a);
    const void* p[] = {pa, buf};
    plan->copy_a->run(p);
    pa = buf;
  }
  if (plan->copy_b) {
    void* buf = thread_buffer(kSrc1, plan->bytes_b);
    const void* p[] = {pb, buf};
    plan->copy_b->run(p);
    pb = buf;
  }
  const void* p[] = {pa, pb, y};
  plan->mm->run(p);
}

// ---------------------------------------------------------------------------------------------
// Pooling with ONNX output sizes
// ---------------------------------------------------------------------------------------------

enum PoolKind { kMaxPool = 0, kAvgIncludePad = 1, kAvgExcludePad = 2 };

struct PoolAttrs {
  int kind = kMaxPool;
  std::vector<int64_t> kernel, strides, pads, dilations;  // ONNX: pads = begins then ends
  bool ceil_mode = false, channels_last = false;
};

// The window resolved against one input: output size and the end padding oneDNN is given.
struct PoolGeometry {
  int nd = 2;
  int64_t in_sp[3] = {}, out_sp[3] = {}, pads_end[3] = {};
  bool extended = false;  // ceil_mode added a window reaching past the explicit end padding
};

inline const char* pool_name(int kind) { return kind == kMaxPool ? "MaxPool" : "AveragePool"; }

// y's shape for x's, as ONNX computes it (ceil_mode included), or invalid_argument.
inline PoolGeometry pool_geometry(const PoolAttrs& a, const int64_t* x, int x_ndim, int64_t* y) {
  const std::string who = pool_name(a.kind);
  PoolGeometry g;
  const int nd = g.nd = static_cast<int>(a.kernel.size());
  if (nd < 1 || nd > 3)
    invalid(who + ": kernel_shape must have 1 to 3 values, got " + std::to_string(nd));
  if (a.strides.size() != a.kernel.size() || a.dilations.size() != a.kernel.size() ||
      a.pads.size() != 2 * a.kernel.size())
    invalid(who + ": strides, dilations and pads must have " + std::to_string(nd) + ", " +
            std::to_string(nd) + " and " + std::to_string(2 * nd) + " values for kernel_shape of " +
            std::to_string(nd) + ", got " + std::to_string(a.strides.size()) + ", " +
            std::to_string(a.dilations.size()) + " and " + std::to_string(a.pads.size()));
  for (int i = 0; i < nd; ++i)
    if (a.kernel[i] < 1 || a.strides[i] < 1 || a.dilations[i] < 1 || a.pads[i] < 0 ||
        a.pads[nd + i] < 0)
      invalid(who + ": kernel_shape, strides and dilations must be >= 1 and pads >= 0");
  const int rank = nd + 2;
  if (x_ndim != rank)
    invalid(who + ": x must have rank " + std::to_string(rank) + " (" +
            (a.channels_last ? "N, spatial..., C" : "N, C, spatial...") + ") for kernel_shape of " +
            std::to_string(nd) + ", got shape " + shape_str(x, x_ndim));
  const int sp0 = a.channels_last ? 1 : 2, c_axis = a.channels_last ? rank - 1 : 1;
  y[0] = x[0];
  y[c_axis] = x[c_axis];
  for (int i = 0; i < nd; ++i) {
    const int64_t in = g.in_sp[i] = x[sp0 + i];
    const int64_t pb = a.pads[i], pe = a.pads[nd + i], s = a.strides[i];
    const int64_t extent = (a.kernel[i] - 1) * a.dilations[i] + 1;
    const int64_t span = in + pb + pe - extent;
    if (span < 0)
      invalid(who + ": spatial axis " + std::to_string(i) + " of x " + shape_str(x, x_ndim) +
              " is " + std::to_string(in + pb + pe) +
              " with padding, smaller than the window extent " + std::to_string(extent));
    int64_t o = span / s + 1;
    g.pads_end[i] = pe;  // oneDNN checks (in + pb + pe - extent) / s + 1 == out, rounding down
    if (a.ceil_mode) {
      int64_t oc = (span + s - 1) / s + 1;
      // ONNX (and PyTorch) drop a last window that would start in the end padding.
      if ((oc - 1) * s >= in + pb) --oc;
      if (oc > o) {
        o = oc;
        g.pads_end[i] = (o - 1) * s + extent - in - pb;
        g.extended = true;
      }
    }
    g.out_sp[i] = y[sp0 + i] = o;
  }
  return g;
}

struct PoolPlan {
  std::unique_ptr<Exec> pool;
  // oneDNN's include-padding average always divides by the full kernel size; ONNX does not count
  // taps past the explicit end padding (a window ceil_mode added). Per-axis factors, applied after.
  bool rescale = false;
  std::vector<float> factor[3];
};

inline void rescale_pool(const PoolPlan& plan, float* y, int nd, const int64_t* y_shape,
                         bool channels_last) {
  const int64_t N = y_shape[0];
  const int64_t C = channels_last ? y_shape[nd + 1] : y_shape[1];
  const int sp0 = channels_last ? 1 : 2;
  int64_t o[3] = {1, 1, 1};
  for (int i = 0; i < nd; ++i) o[i] = y_shape[sp0 + i];
  const int64_t P = o[0] * o[1] * o[2];
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i0 = p / (o[1] * o[2]), i1 = (p / o[2]) % o[1], i2 = p % o[2];
      float f = plan.factor[0][i0];
      if (nd > 1) f *= plan.factor[1][i1];
      if (nd > 2) f *= plan.factor[2][i2];
      if (f == 1.0f) continue;
      if (channels_last) {
        float* row = y + (n * P + p) * C;
        for (int64_t c = 0; c < C; ++c) row[c] *= f;
      } else {
        for (int64_t c = 0; c < C; ++c) y[(n * C + c) * P + p] *= f;
      }
    }
  }
}

inline std::shared_ptr<PoolPlan> build_pool(const PoolAttrs& a, const PoolGeometry& g,
                                            const int64_t* x_shape) {
  const int nd = g.nd;
  const int64_t N = x_shape[0], C = x_shape[a.channels_last ? nd + 1 : 1];
  memory::dims src_dims{N, C}, dst_dims{N, C}, k, st, dil, pl, pr;
  for (int i = 0; i < nd; ++i) {
    src_dims.push_back(g.in_sp[i]);
    dst_dims.push_back(g.out_sp[i]);
    k.push_back(a.kernel[i]);
    st.push_back(a.strides[i]);
    dil.push_back(a.dilations[i] - 1);
    pl.push_back(a.pads[i]);
    pr.push_back(g.pads_end[i]);
  }
  const tag t = activation_tag(nd, a.channels_last);
  const memory::desc src_md(src_dims, dt::f32, t), dst_md(dst_dims, dt::f32, t);
  const algorithm alg = a.kind == kMaxPool         ? algorithm::pooling_max
                        : a.kind == kAvgIncludePad ? algorithm::pooling_avg_include_padding
                                                   : algorithm::pooling_avg_exclude_padding;
  dnnl::pooling_forward::primitive_desc pd;
  try {
    pd = dnnl::pooling_forward::primitive_desc(engine(), prop_kind::forward_inference, alg, src_md,
                                               dst_md, st, k, dil, pl, pr, user_scratchpad_attr());
  } catch (const dnnl::error& e) {
    invalid(std::string(pool_name(a.kind)) + ": oneDNN has no pooling for this configuration: " +
            e.what());
  }
  auto p = std::make_shared<PoolPlan>();
  p->pool = std::make_unique<Exec>(
      pd, std::vector<std::pair<int, memory>>{},
      std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_SRC, src_md}, {DNNL_ARG_DST, dst_md}});
  if (a.kind == kAvgIncludePad && g.extended) {
    p->rescale = true;
    for (int i = 0; i < nd; ++i) {
      const int64_t lo = -a.pads[i], hi = g.in_sp[i] + a.pads[nd + i];
      for (int64_t o = 0; o < g.out_sp[i]; ++o) {
        int64_t count = 0;
        for (int64_t kk = 0; kk < a.kernel[i]; ++kk) {
          const int64_t pos = o * a.strides[i] - a.pads[i] + kk * a.dilations[i];
          count += pos >= lo && pos < hi;
        }
        p->factor[i].push_back(count ? static_cast<float>(a.kernel[i]) / count : 1.0f);
      }
    }
  }
  return p;
}

// x, y dense with the shapes pool_geometry() checked; run without the GIL.
inline void pool(const PoolAttrs& a, const PoolGeometry& g, const int64_t* x_shape,
                 const int64_t* y_shape, const float* x, float* y) {
  const int nd = g.nd, rank = nd + 2;
  if (product(y_shape, rank) == 0) return;
  static PlanCache<PoolPlan>* plans = new PlanCache<PoolPlan>();
  const double bytes = 4.0 * (product(x_shape, rank) + product(y_shape, rank));
  const ThreadScope threads(bytes < kParallelMinBytes);
  Key key;
  key.push(threads.n());
  key.push(a.kind);
  key.push(a.channels_last);
  key.push(nd);
  for (int i = 0; i < rank; ++i) key.push(x_shape[i]);
  for (int i = 0; i < nd; ++i) {
    key.push(a.kernel[i]);
    key.push(a.strides[i]);
    key.push(a.dilations[i]);
    key.push(a.pads[i]);
    key.push(g.pads_end[i]);
  }
  auto plan = plans->get(key, [&] { return build_pool(a, g, x_shape); });
  const void* p[] = {x, y};
  plan->pool->run(p);
  if (plan->rescale) rescale_pool(*plan, y, nd, y_shape, a.channels_last);
}

// ---------------------------------------------------------------------------------------------
// NC... <-> N...C
// ---------------------------------------------------------------------------------------------

// x (N, C, spatial...) with to_last, else (N, spatial..., C); positive strides (elements) on every
// axis longer than 1: strided views are read in place. y: the other layout, dense.
//
// oneDNN's reorder beats NumPy's transposing copy (one thread, this CPU): NCHW -> NHWC
// (1, 64, 56, 56) 49 vs 104 us, (8, 3, 224, 224) 277 vs 1994 us; NHWC -> NCHW (1, 64, 56, 56)
// 60 vs 208 us; equal (~1 us) at (1, 17, 7, 7).
inline void relayout_shape(const int64_t* x, int x_ndim, bool to_last, int64_t* y) {
  if (x_ndim < 3 || x_ndim > 5)
    invalid(std::string(to_last ? "to_channels_last: x must be (N, C, spatial...)"
                                : "to_channels_first: x must be (N, spatial..., C)") +
            " with 1 to 3 spatial axes, got shape " + shape_str(x, x_ndim));
  const int rank = x_ndim, nd = rank - 2;
  y[0] = x[0];
  if (to_last) {
    y[rank - 1] = x[1];
    for (int i = 0; i < nd; ++i) y[1 + i] = x[2 + i];
  } else {
    y[1] = x[rank - 1];
    for (int i = 0; i < nd; ++i) y[2 + i] = x[1 + i];
  }
}

inline void relayout(const int64_t* x_shape, const int64_t* x_strides, int rank, bool to_last,
                     const float* x, float* y) {
  if (product(x_shape, rank) == 0) return;
  const int nd = rank - 2;
  // Logical (N, C, spatial...) dims and x's strides along them.
  int64_t dims[5], strides[5];
  const int c_in = to_last ? 1 : rank - 1, sp_in = to_last ? 2 : 1;
  dims[0] = x_shape[0];
  strides[0] = x_strides[0];
  dims[1] = x_shape[c_in];
  strides[1] = x_strides[c_in];
  for (int i = 0; i < nd; ++i) {
    dims[2 + i] = x_shape[sp_in + i];
    strides[2 + i] = x_strides[sp_in + i];
  }
  static PlanCache<Exec>* plans = new PlanCache<Exec>();
  const ThreadScope threads(8.0 * product(x_shape, rank) < kParallelMinBytes);
  Key key;
  key.push(threads.n());
  key.push(to_last);
  key.push(rank);
  for (int i = 0; i < rank; ++i) {
    key.push(dims[i]);
    key.push(strides[i]);
  }
  auto plan = plans->get(key, [&] {
    return std::shared_ptr<Exec>(
        make_reorder(memory::desc(to_dims(dims, rank), dt::f32, to_dims(strides, rank)),
                     memory::desc(to_dims(dims, rank), dt::f32, activation_tag(nd, to_last))));
  });
  const void* p[] = {x, y};
  plan->run(p);
}

}  // namespace ember::dnnl_detail
