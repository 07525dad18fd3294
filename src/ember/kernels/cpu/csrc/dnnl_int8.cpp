// int8 kernels behind ember._C (Python wrappers: ember/kernels/cpu/int8.py): a prepacked int8
// convolution and matmul (u8/s8 source with a zero point, s8 weights with per-channel scales, f32
// bias, u8/s8 requantized or f32 destination, activation and residual-sum post-ops), a dynamic
// matmul (f32 rows quantized to u8 on the fly, as ONNX DynamicQuantizeLinear), int8 max pooling,
// and the quantize/dequantize loops for the borders of int8 regions (optionally NCHW <-> NHWC).
//
// Quantization as oneDNN 3.x applies it, which is what the ai.ember ops (ops/fused.py) define:
//   y = saturate(round(post_ops(x_scale * w_scale[k] * sum((x - x_zp) * w) + bias) / y_scale) + y_zp)
// with the residual sum post-op adding z_scale * (z - z_zp) before the activation. x_scale is
// folded into the weight scales (both are constants), so only weights and dst carry scales.
// Rounding is to nearest even everywhere (oneDNN's default MXCSR mode, NumPy's rint).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstring>

#include "bindings.h"
#include "dnnl_kernels.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace ember {
namespace {

using namespace dnnl_detail;

// ---------------------------------------------------------------------------------------------
// Quantization parameters and constant memories
// ---------------------------------------------------------------------------------------------

const char* dt_name(dt t) {
  switch (t) {
    case dt::u8:
      return "uint8";
    case dt::s8:
      return "int8";
    case dt::f32:
      return "float32";
    default:
      return "unsupported";
  }
}

dt parse_dt(const std::string& name, const char* who, const char* what, bool float_ok) {
  if (name == "uint8") return dt::u8;
  if (name == "int8") return dt::s8;
  if (name == "float32" && float_ok) return dt::f32;
  invalid(std::string(who) + ": " + what + " must be uint8" + (float_ok ? ", int8 or float32" : " or int8") +
          ", got '" + name + "'");
}

std::size_t dt_size(dt t) { return t == dt::f32 ? 4 : 1; }

memory f32_memory(const std::vector<float>& v) {
  memory m(memory::desc({static_cast<int64_t>(v.size())}, dt::f32, tag::a), engine());
  std::memcpy(m.get_data_handle(), v.data(), v.size() * sizeof(float));
  return m;
}

memory s32_memory(int32_t v) {
  memory m(memory::desc({1}, dt::s32, tag::a), engine());
  *static_cast<int32_t*>(m.get_data_handle()) = v;
  return m;
}

// The int8 output side of a kernel: dtype, and scale / zero point when it is an integer type.
struct Requant {
  dt type = dt::f32;
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// Adds dst scale / zero point to `attr` and their constant memories to `fixed`.
void add_requant(const Requant& y, dnnl::primitive_attr& attr,
                 std::vector<std::pair<int, memory>>& fixed) {
  if (y.type == dt::f32) return;
  attr.set_scales_mask(DNNL_ARG_DST, 0);
  fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, f32_memory({y.scale}));
  if (y.zero_point != 0) {
    attr.set_zero_points_mask(DNNL_ARG_DST, 0);
    fixed.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, s32_memory(y.zero_point));
  }
}

// Plain s8 weights, kept; one packed copy per layout a primitive asks for. Packing always starts
// from the plain copy: int8 layouts may carry compensation terms a layout-to-layout reorder would
// not recompute.
class Int8Weights {
 public:
  explicit Int8Weights(memory plain) : plain_(std::move(plain)) {}

  memory get(const memory::desc& want) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const memory& m : packed_)
      if (m.get_desc() == want) return m;
    memory to(want, engine());
    dnnl::reorder(plain_, to).execute(stream(), plain_, to);
    stream().wait();
    packed_.push_back(to);
    return to;
  }

 private:
  std::mutex mu_;
  memory plain_;
  std::vector<memory> packed_;
};

memory copy_s8(const memory::desc& md, const int8_t* data) {
  memory m(md, engine());
  std::memcpy(m.get_data_handle(), data, md.get_size());
  return m;
}

// Combined per-output-channel scales: x_scale * w_scale[k] (w_scale 1 or K values), in double.
std::vector<float> combined_scales(double x_scale, const float* w_scale, int64_t n_w, int64_t K,
                                   const char* who) {
  if (n_w != 1 && n_w != K)
    invalid(std::string(who) + ": weight scale has " + std::to_string(n_w) +
            " values, expected 1 or one per output channel (" + std::to_string(K) + ")");
  std::vector<float> s(static_cast<std::size_t>(K));
  for (int64_t k = 0; k < K; ++k) s[k] = static_cast<float>(x_scale * w_scale[n_w == 1 ? 0 : k]);
  return s;
}

struct Plan1 {
  std::unique_ptr<Exec> prim;
};

// ---------------------------------------------------------------------------------------------
// QConv
// ---------------------------------------------------------------------------------------------

struct QConvSpec {
  std::vector<int64_t> strides, pads, dilations;
  int64_t group = 1;
  bool channels_last = true;
  std::string activation;
  std::vector<double> activation_params;
  dt x_type = dt::u8;
  int32_t x_zero_point = 0;
  Requant y;
  bool has_z = false;
  float z_scale = 1.0f;
  int32_t z_zero_point = 0;
  // Clip of the conv output before z is added: the range of the quantized intermediate a fused
  // Conv -> Q -> DQ -> Add skipped (empty: none).
  std::vector<double> requantize;  // (scale, zero point, lowest, highest) or empty
};

class QConvKernel {
 public:
  QConvKernel(const int8_t* weight, const int64_t* w_shape, int w_ndim,
              const std::vector<float>& scales, const float* bias, const QConvSpec& s)
      : s_(s) {
    const std::string ws = shape_str(w_shape, w_ndim);
    if (w_ndim < 3 || w_ndim > 5)
      invalid("QConv: weight must be (K, C/group, k...) with 1 to 3 spatial axes, got shape " + ws);
    nd_ = w_ndim - 2;
    K_ = w_shape[0];
    Cg_ = w_shape[1];
    if (product(w_shape, w_ndim) == 0) invalid("QConv: weight has shape " + ws + ", no elements");
    if (s.group < 1 || K_ % s.group != 0)
      invalid("QConv: group=" + std::to_string(s.group) + " must divide the " +
              std::to_string(K_) + " output channels of weight " + ws);
    const auto need = [&](const std::vector<int64_t>& v, std::size_t n, const char* name,
                          int64_t lo) {
      if (v.size() != n)
        invalid("QConv: " + std::string(name) + " has " + std::to_string(v.size()) +
                " values, expected " + std::to_string(n) + " for weight " + ws);
      for (int64_t e : v)
        if (e < lo) invalid("QConv: " + std::string(name) + " must be >= " + std::to_string(lo));
    };
    need(s.strides, nd_, "strides", 1);
    need(s.dilations, nd_, "dilations", 1);
    need(s.pads, 2 * nd_, "pads", 0);
    if (static_cast<int64_t>(scales.size()) != K_)
      invalid("QConv: expected " + std::to_string(K_) + " combined scales");
    if (s.has_z && s.y.type == dt::f32)
      invalid("QConv: a residual z needs an int8 output (uint8 or int8), not float32");
    act_ = parse_activation(s.activation, s.activation_params, "QConv");
    if (s.group > 1) weight_dims_ = {s.group, K_ / s.group, Cg_};
    else weight_dims_ = {K_, Cg_};
    for (int i = 0; i < nd_; ++i) weight_dims_.push_back(w_shape[2 + i]);
    weights_ = std::make_unique<Int8Weights>(
        copy_s8(memory::desc(weight_dims_, dt::s8, weights_tag(nd_, s.group > 1)), weight));
    scales_ = f32_memory(scales);
    if (bias) bias_ = f32_memory(std::vector<float>(bias, bias + K_));
  }

  int64_t out_channels() const { return K_; }
  int rank() const { return nd_ + 2; }

  void output_shape(const int64_t* x, int x_ndim, int64_t* y) const {
    const int rank = nd_ + 2;
    const int c_axis = s_.channels_last ? rank - 1 : 1, sp0 = s_.channels_last ? 1 : 2;
    if (x_ndim != rank)
      invalid("QConv: x must have rank " + std::to_string(rank) + " (" +
              (s_.channels_last ? "N, spatial..., C" : "N, C, spatial...") + "), got shape " +
              shape_str(x, x_ndim));
    if (x[c_axis] != Cg_ * s_.group)
      invalid("QConv: x has shape " + shape_str(x, x_ndim) + " with " +
              std::to_string(x[c_axis]) + " channels, expected " +
              std::to_string(Cg_ * s_.group));
    y[0] = x[0];
    y[c_axis] = K_;
    for (int i = 0; i < nd_; ++i) {
      const int64_t extent = (weight_dims_[weight_dims_.size() - nd_ + i] - 1) * s_.dilations[i] + 1;
      const int64_t padded = x[sp0 + i] + s_.pads[i] + s_.pads[nd_ + i];
      if (padded < extent)
        invalid("QConv: spatial axis " + std::to_string(i) + " of x " + shape_str(x, x_ndim) +
                " is smaller than the kernel extent " + std::to_string(extent));
      y[sp0 + i] = (padded - extent) / s_.strides[i] + 1;
    }
  }

  // x, z (y's shape and dtype, or null) and y as output_shape() checked them; without the GIL.
  void run(const int64_t* x_shape, const void* x, const void* z, void* y) {
    int64_t y_shape[5];
    output_shape(x_shape, nd_ + 2, y_shape);
    const int rank = nd_ + 2;
    double flops = 2.0 * static_cast<double>(product(y_shape, rank)) * static_cast<double>(Cg_);
    for (int i = 0; i < nd_; ++i) flops *= static_cast<double>(weight_dims_[weight_dims_.size() - nd_ + i]);
    const ThreadScope threads(flops < kParallelMinFlops);
    Key key;
    key.push(threads.n());
    for (int i = 0; i < rank; ++i) key.push(x_shape[i]);
    auto plan = plans_.get(key, [&] { return build(x_shape, y_shape); });
    if (z && z != y)  // the sum post-op reads z from the destination
      std::memcpy(y, z, static_cast<std::size_t>(product(y_shape, rank)) * dt_size(s_.y.type));
    const void* p[] = {x, y};
    plan->prim->run(p);
  }

  std::vector<std::string> implementations() {
    std::vector<const Exec*> e;
    for (auto& p : plans_.values()) e.push_back(p->prim.get());
    return impls_of(e);
  }

 private:
  std::shared_ptr<Plan1> build(const int64_t* x_shape, const int64_t* y_shape) {
    const int sp0 = s_.channels_last ? 1 : 2;
    memory::dims src_dims{x_shape[0], Cg_ * s_.group}, dst_dims{x_shape[0], K_}, st, dil, pl, pr;
    for (int i = 0; i < nd_; ++i) {
      src_dims.push_back(x_shape[sp0 + i]);
      dst_dims.push_back(y_shape[sp0 + i]);
      st.push_back(s_.strides[i]);
      dil.push_back(s_.dilations[i] - 1);
      pl.push_back(s_.pads[i]);
      pr.push_back(s_.pads[nd_ + i]);
    }
    const tag t = activation_tag(nd_, s_.channels_last);
    const memory::desc src_md(src_dims, s_.x_type, t), dst_md(dst_dims, s_.y.type, t),
        w_any(weight_dims_, dt::s8, tag::any);
    dnnl::primitive_attr attr = user_scratchpad_attr();
    std::vector<std::pair<int, memory>> fixed;
    attr.set_scales_mask(DNNL_ARG_WEIGHTS, s_.group > 1 ? 3 : 1);
    fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scales_);
    if (s_.x_zero_point != 0) {
      attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
      fixed.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, s32_memory(s_.x_zero_point));
    }
    add_requant(s_.y, attr, fixed);
    dnnl::post_ops po;
    if (s_.requantize.size() == 4) {
      // The conv output's own QuantizeLinear -> DequantizeLinear before the residual add, in
      // real units: v = (clip(round(v / s) + zp, lowest, highest) - zp) * s.
      const float s = static_cast<float>(s_.requantize[0]), zp = static_cast<float>(s_.requantize[1]);
      po.append_eltwise(algorithm::eltwise_linear, 1.0f / s, 0.0f);
      po.append_eltwise(algorithm::eltwise_round, 0.0f, 0.0f);
      po.append_eltwise(algorithm::eltwise_clip_v2, static_cast<float>(s_.requantize[2]) - zp,
                        static_cast<float>(s_.requantize[3]) - zp);
      po.append_eltwise(algorithm::eltwise_linear, s, 0.0f);
    }
    if (s_.has_z) po.append_sum(s_.z_scale, s_.z_zero_point, s_.y.type);
    append_activation(po, act_);
    attr.set_post_ops(po);
    using PD = dnnl::convolution_forward::primitive_desc;
    PD pd;
    try {
      pd = bias_ ? PD(engine(), prop_kind::forward_inference, algorithm::convolution_direct, src_md,
                      w_any, bias_.get_desc(), dst_md, st, dil, pl, pr, attr)
                 : PD(engine(), prop_kind::forward_inference, algorithm::convolution_direct, src_md,
                      w_any, dst_md, st, dil, pl, pr, attr);
    } catch (const dnnl::error& e) {
      invalid(std::string("QConv: oneDNN has no int8 convolution for this configuration: ") +
              e.what());
    }
    fixed.emplace_back(DNNL_ARG_WEIGHTS, weights_->get(pd.weights_desc()));
    if (bias_) fixed.emplace_back(DNNL_ARG_BIAS, bias_);
    auto plan = std::make_shared<Plan1>();
    plan->prim = std::make_unique<Exec>(
        pd, std::move(fixed),
        std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_SRC, src_md}, {DNNL_ARG_DST, dst_md}});
    return plan;
  }

  QConvSpec s_;
  int nd_ = 2;
  int64_t K_ = 0, Cg_ = 0;
  memory::dims weight_dims_;
  Activation act_;
  std::unique_ptr<Int8Weights> weights_;
  memory scales_, bias_;
  PlanCache<Plan1> plans_;
};

// ---------------------------------------------------------------------------------------------
// QMatMul (static: a is int8 with constant scale / zero point) and DynamicQMatMul (a is f32)
// ---------------------------------------------------------------------------------------------

struct QMatMulSpec {
  bool trans_b = false;
  std::string activation;
  std::vector<double> activation_params;
  bool dynamic = false;  // a is float32, quantized per call as DynamicQuantizeLinear does
  dt a_type = dt::u8;
  int32_t a_zero_point = 0;
  Requant y;
};

// u8 quantization of x (n values) as ONNX DynamicQuantizeLinear: range [min(x, 0), max(x, 0)],
// scale = range / 255, zero point = round(clip(-min / scale)), all in float32 like the spec.
struct DynamicParams {
  float scale;
  int32_t zero_point;
};

inline float round_even(float v) {
  // Clamped first: the magic-number rounding is exact for |v| < 2^22 under round-to-nearest-even.
  v = v >= -1024.0f ? (v <= 1024.0f ? v : 1024.0f) : -1024.0f;  // NaN -> -1024
  return (v + 12582912.0f) - 12582912.0f;
}

DynamicParams dynamic_params(const float* x, int64_t n) {
  float lo = 0.0f, hi = 0.0f;
#pragma omp parallel for simd reduction(min : lo) reduction(max : hi) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  const float scale = (hi == lo ? 1.0f : hi - lo) / 255.0f;
  float zp = 0.0f - lo / scale;
  zp = zp < 0.0f ? 0.0f : (zp > 255.0f ? 255.0f : zp);
  return {scale, static_cast<int32_t>(std::nearbyint(zp))};
}

// v[i] = clip(round_even(x[i] / scale) + zp, lo, hi): QuantizeLinear's arithmetic, still in
// float. The extension is built for the baseline ISA; target_clones adds AVX2 and AVX-512 versions
// of this loop (16 divisions at once), picked at load time for the CPU.
__attribute__((target_clones("avx512f", "avx2", "default"))) void quantize_values(
    const float* x, int64_t n, float scale, float zp, float lo, float hi, float* v) {
  for (int64_t i = 0; i < n; ++i) {
    const float q = round_even(x[i] / scale) + zp;
    v[i] = q < lo ? lo : (q > hi ? hi : q);
  }
}

constexpr int64_t kQuantizeTile = 64;  // values quantized per call of quantize_values

template <class Q>
void quantize_loop(const float* x, int64_t n, float scale, int32_t zp, Q* y) {
  constexpr float lo = std::is_signed<Q>::value ? -128.0f : 0.0f;
  constexpr float hi = std::is_signed<Q>::value ? 127.0f : 255.0f;
  const float fzp = static_cast<float>(zp);
  const int64_t tiles = (n + kQuantizeTile - 1) / kQuantizeTile;
#pragma omp parallel for if (n > 65536)
  for (int64_t t = 0; t < tiles; ++t) {
    float v[kQuantizeTile];
    const int64_t i0 = t * kQuantizeTile, len = std::min(n - i0, kQuantizeTile);
    quantize_values(x + i0, len, scale, fzp, lo, hi, v);
    for (int64_t i = 0; i < len; ++i) y[i0 + i] = static_cast<Q>(static_cast<int32_t>(v[i]));
  }
}

class QMatMulKernel {
 public:
  // b: s8 (K, N), or (N, K) with trans_b; scales: N combined scales (a_scale * b_scale[n]; for
  // dynamic: b_scale[n] alone); bias: (N,) or null.
  QMatMulKernel(const int8_t* b, const int64_t* b_shape, int b_ndim,
                const std::vector<float>& scales, const float* bias, const QMatMulSpec& s)
      : s_(s) {
    if (b_ndim != 2)
      invalid(std::string("QMatMul: b must be 2-D, got shape ") + shape_str(b_shape, b_ndim));
    K_ = s.trans_b ? b_shape[1] : b_shape[0];
    N_ = s.trans_b ? b_shape[0] : b_shape[1];
    if (K_ == 0 || N_ == 0) invalid("QMatMul: b has no elements");
    if (static_cast<int64_t>(scales.size()) != N_)
      invalid("QMatMul: expected " + std::to_string(N_) + " combined scales");
    if (s.dynamic && s.y.type != dt::f32) invalid("QMatMul: a dynamic matmul gives float32");
    act_ = parse_activation(s.activation, s.activation_params, "QMatMul");
    weights_ = std::make_unique<Int8Weights>(
        copy_s8(memory::desc({K_, N_}, dt::s8, s.trans_b ? tag::ba : tag::ab), b));
    scales_ = f32_memory(scales);
    if (bias) {
      bias_ = memory(memory::desc({1, N_}, dt::f32, tag::ab), engine());
      std::memcpy(bias_.get_data_handle(), bias, static_cast<std::size_t>(N_) * sizeof(float));
    }
  }

  int64_t K() const { return K_; }
  int64_t N() const { return N_; }

  void output_shape(const int64_t* a, int a_ndim, int64_t* y) const {
    matmul_output_shape("QMatMul", K_, N_, a, a_ndim, y);
  }

  // a: (M, K) rows (f32 when dynamic, else s_.a_type), y: (M, N); without the GIL.
  void run(int64_t M, const void* a, void* y) {
    const ThreadScope threads(2.0 * M * K_ * N_ < kParallelMinFlops);
    Key key;
    key.push(threads.n());
    key.push(M);
    auto plan = plans_.get(key, [&] { return build(M); });
    if (!s_.dynamic) {
      const void* p[] = {a, y};
      plan->prim->run(p);
      return;
    }
    const float* af = static_cast<const float*>(a);
    const DynamicParams q = dynamic_params(af, M * K_);
    uint8_t* aq = static_cast<uint8_t*>(thread_buffer(kSrc, static_cast<std::size_t>(M * K_)));
    quantize_loop(af, M * K_, q.scale, q.zero_point, aq);
    const void* p[] = {aq, y, &q.scale, &q.zero_point};
    plan->prim->run(p);
  }

  std::vector<std::string> implementations() {
    std::vector<const Exec*> e;
    for (auto& p : plans_.values()) e.push_back(p->prim.get());
    return impls_of(e);
  }

 private:
  std::shared_ptr<Plan1> build(int64_t M) {
    const dt a_type = s_.dynamic ? dt::u8 : s_.a_type;
    const memory::desc src_md({M, K_}, a_type, tag::ab), w_any({K_, N_}, dt::s8, tag::any),
        dst_md({M, N_}, s_.y.type, tag::ab);
    dnnl::primitive_attr attr = user_scratchpad_attr();
    std::vector<std::pair<int, memory>> fixed;
    std::vector<std::pair<int, memory::desc>> per_call{{DNNL_ARG_SRC, src_md},
                                                       {DNNL_ARG_DST, dst_md}};
    attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1 << 1);
    fixed.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, scales_);
    if (s_.dynamic) {  // the source's scale and zero point change with every call
      attr.set_scales_mask(DNNL_ARG_SRC, 0);
      attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
      per_call.emplace_back(DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC,
                            memory::desc({1}, dt::f32, tag::a));
      per_call.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC,
                            memory::desc({1}, dt::s32, tag::a));
    } else if (s_.a_zero_point != 0) {
      attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
      fixed.emplace_back(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, s32_memory(s_.a_zero_point));
    }
    add_requant(s_.y, attr, fixed);
    dnnl::post_ops po;
    append_activation(po, act_);
    attr.set_post_ops(po);
    using PD = dnnl::matmul::primitive_desc;
    PD pd;
    try {
      pd = bias_ ? PD(engine(), src_md, w_any, bias_.get_desc(), dst_md, attr)
                 : PD(engine(), src_md, w_any, dst_md, attr);
    } catch (const dnnl::error& e) {
      invalid(std::string("QMatMul: oneDNN has no int8 matmul for this configuration: ") +
              e.what());
    }
    fixed.emplace_back(DNNL_ARG_WEIGHTS, weights_->get(pd.weights_desc()));
    if (bias_) fixed.emplace_back(DNNL_ARG_BIAS, bias_);
    auto plan = std::make_shared<Plan1>();
    plan->prim = std::make_unique<Exec>(pd, std::move(fixed), std::move(per_call));
    return plan;
  }

  QMatMulSpec s_;
  int64_t K_ = 0, N_ = 0;
  Activation act_;
  std::unique_ptr<Int8Weights> weights_;
  memory scales_, bias_;
  PlanCache<Plan1> plans_;
};

// ---------------------------------------------------------------------------------------------
// Quantize / dequantize, optionally between NCHW (float side) and NHWC (int8 side)
// ---------------------------------------------------------------------------------------------

// Float side (N, C, P) <-> int8 side (N, P, C), P = the product of the spatial axes. Tiles of
// 64 x 64 keep both the strided reads and writes in cache.
template <class Q>
void quantize_to_last(const float* x, int64_t N, int64_t C, int64_t P, float scale, int32_t zp,
                      Q* y) {
  constexpr float lo = std::is_signed<Q>::value ? -128.0f : 0.0f;
  constexpr float hi = std::is_signed<Q>::value ? 127.0f : 255.0f;
  const float fzp = static_cast<float>(zp);
  constexpr int64_t T = kQuantizeTile;
  const int64_t tiles = (P + T - 1) / T;
#pragma omp parallel for collapse(2) if (N * C * P > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t tp = 0; tp < tiles; ++tp) {
      const int64_t p0 = tp * T, len = std::min(P - p0, T);
      for (int64_t c = 0; c < C; ++c) {
        float v[T];
        quantize_values(x + (n * C + c) * P + p0, len, scale, fzp, lo, hi, v);
        Q* dst = y + (n * P + p0) * C + c;
        for (int64_t p = 0; p < len; ++p) dst[p * C] = static_cast<Q>(static_cast<int32_t>(v[p]));
      }
    }
}

template <class Q>
void dequantize_loop(const Q* x, int64_t n, float scale, int32_t zp, float* y) {
#pragma omp parallel for simd if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<float>(static_cast<int32_t>(x[i]) - zp) * scale;
}

template <class Q>
void dequantize_to_first(const Q* x, int64_t N, int64_t C, int64_t P, float scale, int32_t zp,
                         float* y) {
  constexpr int64_t T = 64;
  const int64_t tiles = (P + T - 1) / T;
#pragma omp parallel for collapse(2) if (N * C * P > 65536)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t tp = 0; tp < tiles; ++tp) {
      const int64_t p0 = tp * T, p1 = std::min(P, p0 + T);
      for (int64_t c = 0; c < C; ++c) {
        const Q* src = x + n * P * C + c;
        float* dst = y + (n * C + c) * P;
        for (int64_t p = p0; p < p1; ++p)
          dst[p] = static_cast<float>(static_cast<int32_t>(src[p * C]) - zp) * scale;
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Python glue: arrays of the dtypes each kernel takes, outputs made or checked
// ---------------------------------------------------------------------------------------------

constexpr int kMaxDims = 8;
using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;  // read-only views too (weights)

struct Arr {
  void* data = nullptr;
  dt type = dt::undef;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
};

dt dtype_of(const AnyArray& a) {
  if (a.dtype() == nb::dtype<uint8_t>()) return dt::u8;
  if (a.dtype() == nb::dtype<int8_t>()) return dt::s8;
  if (a.dtype() == nb::dtype<float>()) return dt::f32;
  if (a.dtype() == nb::dtype<int32_t>()) return dt::s32;
  return dt::undef;
}

// A C-contiguous array (the Python wrappers make contiguous copies where needed).
Arr read(nb::handle h, const char* who, const char* name, std::initializer_list<dt> allowed) {
  AnyArray a;
  if (!nb::try_cast(h, a, false))
    throw nb::type_error((std::string(who) + ": " + name + " must be a NumPy array").c_str());
  Arr r;
  r.type = dtype_of(a);
  std::string names;
  bool ok = false;
  for (dt t : allowed) {
    ok = ok || t == r.type;
    names += std::string(names.empty() ? "" : " or ") + dt_name(t);
  }
  if (!ok)
    throw nb::type_error((std::string(who) + ": " + name + " must be " + names + ", got " +
                          nb::str(nb::getattr(h, "dtype", nb::none())).c_str())
                             .c_str());
  if (a.ndim() > static_cast<std::size_t>(kMaxDims))
    invalid(std::string(who) + ": " + name + " has too many axes");
  r.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < r.ndim; ++i) r.shape[i] = static_cast<int64_t>(a.shape(i));
  int64_t expect = 1;
  for (int i = r.ndim - 1; i >= 0 && product(r.shape, r.ndim) > 0; --i) {
    if (r.shape[i] != 1 && a.stride(i) != expect)
      invalid(std::string(who) + ": " + name + " must be C-contiguous");
    expect *= r.shape[i];
  }
  r.data = const_cast<void*>(a.data());
  return r;
}

// `out` if given (checked: C-contiguous, writeable, `type`, `shape`), else a new NumPy array.
std::pair<nb::object, void*> make_out(nb::handle out, const int64_t* shape, int ndim, dt type,
                                      const char* who) {
  nb::object obj;
  if (out.is_none()) {
    nb::module_ np = nb::module_::import_("numpy");
    nb::tuple t = nb::steal<nb::tuple>(PyTuple_New(ndim));
    for (int i = 0; i < ndim; ++i) PyTuple_SET_ITEM(t.ptr(), i, PyLong_FromLongLong(shape[i]));
    obj = np.attr("empty")(t, dt_name(type));
  } else {
    obj = nb::borrow(out);
  }
  Arr a = read(obj, who, "out", {type});
  bool same = a.ndim == ndim;
  for (int i = 0; same && i < ndim; ++i) same = a.shape[i] == shape[i];
  if (!same)
    invalid(std::string(who) + ": out has shape " + shape_str(a.shape, a.ndim) + ", expected " +
            shape_str(shape, ndim));
  if (!nb::cast<bool>(obj.attr("flags").attr("writeable")))
    invalid(std::string(who) + ": out is read-only");
  return {obj, a.data};
}

Requant requant(const std::string& y_dtype, double y_scale, int64_t y_zero_point,
                const char* who) {
  Requant r;
  r.type = parse_dt(y_dtype, who, "y_dtype", true);
  if (r.type != dt::f32) {
    if (!(y_scale > 0) || !std::isfinite(y_scale))
      invalid(std::string(who) + ": y_scale must be a positive finite number, got " +
              std::to_string(y_scale));
    r.scale = static_cast<float>(y_scale);
    r.zero_point = static_cast<int32_t>(y_zero_point);
  }
  return r;
}

std::vector<float> scales_arg(nb::handle h, const char* who) {
  Arr s = read(h, who, "w_scale", {dt::f32});
  const float* p = static_cast<const float*>(s.data);
  return std::vector<float>(p, p + product(s.shape, s.ndim));
}

class QConv {
 public:
  QConv(nb::handle weight, nb::handle w_scale, nb::handle bias, double x_scale,
        int64_t x_zero_point, const std::string& x_dtype, const std::string& y_dtype,
        double y_scale, int64_t y_zero_point, bool has_z, double z_scale, int64_t z_zero_point,
        const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
        const std::vector<int64_t>& dilations, int64_t group, bool channels_last,
        const std::string& activation, const std::vector<double>& activation_params,
        const std::vector<double>& requantize) {
    Arr w = read(weight, "QConv", "weight", {dt::s8});
    if (!requantize.empty() && (requantize.size() != 4 || !(requantize[0] > 0)))
      invalid("QConv: requantize takes 4 values (scale > 0, zero point, lowest, highest), got " +
              std::to_string(requantize.size()) + " values");
    const std::vector<float> ws = scales_arg(w_scale, "QConv");
    const float* b = nullptr;
    if (!bias.is_none()) {
      Arr ba = read(bias, "QConv", "bias", {dt::f32});
      if (ba.ndim != 1 || (w.ndim > 0 && ba.shape[0] != w.shape[0]))
        invalid("QConv: bias has shape " + shape_str(ba.shape, ba.ndim) + ", expected (" +
                std::to_string(w.ndim ? w.shape[0] : 0) + ",)");
      b = static_cast<const float*>(ba.data);
    }
    QConvSpec s;
    s.strides = strides;
    s.pads = pads;
    s.dilations = dilations;
    s.group = group;
    s.channels_last = channels_last;
    s.activation = activation;
    s.activation_params = activation_params;
    s.x_type = parse_dt(x_dtype, "QConv", "x_dtype", false);
    s.x_zero_point = static_cast<int32_t>(x_zero_point);
    s.y = requant(y_dtype, y_scale, y_zero_point, "QConv");
    s.has_z = has_z;
    s.z_scale = static_cast<float>(z_scale);
    s.z_zero_point = static_cast<int32_t>(z_zero_point);
    s.requantize = requantize;
    const int64_t K = w.ndim ? w.shape[0] : 0;
    kernel_ = std::make_unique<QConvKernel>(
        static_cast<const int8_t*>(w.data), w.shape, w.ndim,
        combined_scales(x_scale, ws.data(), static_cast<int64_t>(ws.size()), K, "QConv"), b, s);
    x_type_ = s.x_type;
    y_type_ = s.y.type;
    has_z_ = has_z;
  }

  nb::object call(nb::handle xh, nb::handle zh, nb::handle outh) {
    Arr x = read(xh, "QConv", "x", {x_type_});
    int64_t y_shape[5];
    kernel_->output_shape(x.shape, x.ndim, y_shape);
    const void* z = nullptr;
    if (has_z_ != !zh.is_none())
      invalid(has_z_ ? "QConv: this convolution adds a residual z; none given"
                     : "QConv: z given, but the convolution was built without a residual");
    if (has_z_) {
      Arr za = read(zh, "QConv", "z", {y_type_});
      bool same = za.ndim == x.ndim;
      for (int i = 0; same && i < x.ndim; ++i) same = za.shape[i] == y_shape[i];
      if (!same)
        invalid("QConv: z has shape " + shape_str(za.shape, za.ndim) + ", expected the output's " +
                shape_str(y_shape, x.ndim));
      z = za.data;
    }
    auto [obj, y] = make_out(outh, y_shape, x.ndim, y_type_, "QConv");
    if (product(y_shape, x.ndim) > 0) {
      nb::gil_scoped_release nogil;
      kernel_->run(x.shape, x.data, z, y);
    }
    return obj;
  }

  std::vector<std::string> implementations() { return kernel_->implementations(); }

 private:
  std::unique_ptr<QConvKernel> kernel_;
  dt x_type_ = dt::u8, y_type_ = dt::u8;
  bool has_z_ = false;
};

class QMatMul {
 public:
  QMatMul(nb::handle b, nb::handle b_scale, nb::handle bias, bool trans_b, bool dynamic,
          double a_scale, int64_t a_zero_point, const std::string& a_dtype,
          const std::string& y_dtype, double y_scale, int64_t y_zero_point,
          const std::string& activation, const std::vector<double>& activation_params) {
    Arr w = read(b, "QMatMul", "b", {dt::s8});
    if (w.ndim != 2) invalid("QMatMul: b must be 2-D, got shape " + shape_str(w.shape, w.ndim));
    const std::vector<float> bs = scales_arg(b_scale, "QMatMul");
    const int64_t N = trans_b ? w.shape[0] : w.shape[1];
    const float* bp = nullptr;
    if (!bias.is_none()) {
      Arr ba = read(bias, "QMatMul", "bias", {dt::f32});
      if (ba.ndim != 1 || ba.shape[0] != N)
        invalid("QMatMul: bias has shape " + shape_str(ba.shape, ba.ndim) + ", expected (" +
                std::to_string(N) + ",)");
      bp = static_cast<const float*>(ba.data);
    }
    QMatMulSpec s;
    s.trans_b = trans_b;
    s.activation = activation;
    s.activation_params = activation_params;
    s.dynamic = dynamic;
    s.a_type = dynamic ? dt::f32 : parse_dt(a_dtype, "QMatMul", "a_dtype", false);
    s.a_zero_point = static_cast<int32_t>(a_zero_point);
    s.y = requant(y_dtype, y_scale, y_zero_point, "QMatMul");
    kernel_ = std::make_unique<QMatMulKernel>(
        static_cast<const int8_t*>(w.data), w.shape, w.ndim,
        combined_scales(dynamic ? 1.0 : a_scale, bs.data(), static_cast<int64_t>(bs.size()), N,
                        "QMatMul"),
        bp, s);
    a_type_ = s.a_type;
    y_type_ = s.y.type;
  }

  nb::object call(nb::handle ah, nb::handle outh) {
    Arr a = read(ah, "QMatMul", "a", {a_type_});
    int64_t y_shape[kMaxDims];
    kernel_->output_shape(a.shape, a.ndim, y_shape);
    auto [obj, y] = make_out(outh, y_shape, a.ndim, y_type_, "QMatMul");
    const int64_t M = product(a.shape, a.ndim - 1);
    if (M > 0) {
      nb::gil_scoped_release nogil;
      kernel_->run(M, a.data, y);
    }
    return obj;
  }

  std::vector<std::string> implementations() { return kernel_->implementations(); }

 private:
  std::unique_ptr<QMatMulKernel> kernel_;
  dt a_type_ = dt::u8, y_type_ = dt::f32;
};

// x: float32; y: uint8/int8 of x's shape (or NHWC of NCHW x with channels_last).
nb::object quantize(nb::handle xh, double scale, int64_t zero_point, const std::string& dtype,
                    bool channels_last, nb::handle outh) {
  Arr x = read(xh, "quantize", "x", {dt::f32});
  const dt type = parse_dt(dtype, "quantize", "dtype", false);
  if (!(scale > 0) || !std::isfinite(scale))
    invalid("quantize: scale must be a positive finite number, got " + std::to_string(scale));
  int64_t y_shape[kMaxDims];
  std::copy(x.shape, x.shape + x.ndim, y_shape);
  if (channels_last) {
    if (x.ndim < 3) invalid("quantize: channels_last needs x (N, C, spatial...), got shape " +
                            shape_str(x.shape, x.ndim));
    relayout_shape(x.shape, x.ndim, true, y_shape);
  }
  auto [obj, y] = make_out(outh, y_shape, x.ndim, type, "quantize");
  const float s = static_cast<float>(scale);
  const int32_t zp = static_cast<int32_t>(zero_point);
  const float* xp = static_cast<const float*>(x.data);
  const int64_t n = product(x.shape, x.ndim);
  {
    nb::gil_scoped_release nogil;
    const ThreadScope threads(n * 5.0 < kParallelMinBytes);
    if (channels_last) {
      const int64_t N = x.shape[0], C = x.shape[1], P = n / std::max<int64_t>(1, N * C);
      if (type == dt::u8) quantize_to_last(xp, N, C, P, s, zp, static_cast<uint8_t*>(y));
      else quantize_to_last(xp, N, C, P, s, zp, static_cast<int8_t*>(y));
    } else if (type == dt::u8) {
      quantize_loop(xp, n, s, zp, static_cast<uint8_t*>(y));
    } else {
      quantize_loop(xp, n, s, zp, static_cast<int8_t*>(y));
    }
  }
  return obj;
}

// x: uint8/int8; y: float32 of x's shape (or NCHW of NHWC x with channels_last).
nb::object dequantize(nb::handle xh, double scale, int64_t zero_point, bool channels_last,
                      nb::handle outh) {
  Arr x = read(xh, "dequantize", "x", {dt::u8, dt::s8});
  int64_t y_shape[kMaxDims];
  std::copy(x.shape, x.shape + x.ndim, y_shape);
  if (channels_last) {
    if (x.ndim < 3) invalid("dequantize: channels_last needs x (N, spatial..., C), got shape " +
                            shape_str(x.shape, x.ndim));
    relayout_shape(x.shape, x.ndim, false, y_shape);
  }
  auto [obj, yv] = make_out(outh, y_shape, x.ndim, dt::f32, "dequantize");
  float* y = static_cast<float*>(yv);
  const float s = static_cast<float>(scale);
  const int32_t zp = static_cast<int32_t>(zero_point);
  const int64_t n = product(x.shape, x.ndim);
  {
    nb::gil_scoped_release nogil;
    const ThreadScope threads(n * 5.0 < kParallelMinBytes);
    if (channels_last) {
      const int64_t N = x.shape[0], C = x.shape[x.ndim - 1], P = n / std::max<int64_t>(1, N * C);
      if (x.type == dt::u8)
        dequantize_to_first(static_cast<const uint8_t*>(x.data), N, C, P, s, zp, y);
      else
        dequantize_to_first(static_cast<const int8_t*>(x.data), N, C, P, s, zp, y);
    } else if (x.type == dt::u8) {
      dequantize_loop(static_cast<const uint8_t*>(x.data), n, s, zp, y);
    } else {
      dequantize_loop(static_cast<const int8_t*>(x.data), n, s, zp, y);
    }
  }
  return obj;
}

// (y, scale, zero_point) of ONNX DynamicQuantizeLinear, for tests and for the region borders.
nb::tuple dynamic_quantize(nb::handle xh) {
  Arr x = read(xh, "dynamic_quantize", "x", {dt::f32});
  const int64_t n = product(x.shape, x.ndim);
  if (n == 0) invalid("dynamic_quantize: x must not be empty");
  auto [obj, y] = make_out(nb::none(), x.shape, x.ndim, dt::u8, "dynamic_quantize");
  DynamicParams q{};
  {
    nb::gil_scoped_release nogil;
    const ThreadScope threads(n * 5.0 < kParallelMinBytes);
    q = dynamic_params(static_cast<const float*>(x.data), n);
    quantize_loop(static_cast<const float*>(x.data), n, q.scale, q.zero_point,
                  static_cast<uint8_t*>(y));
  }
  return nb::make_tuple(obj, q.scale, q.zero_point);
}

// Max pooling of uint8/int8 (max commutes with the monotone dequantization, so it needs no
// quantization parameters). Same geometry as the float pooling (pool_geometry).
nb::object max_pool_int8(nb::handle xh, const std::vector<int64_t>& kernel,
                         const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                         const std::vector<int64_t>& dilations, bool ceil_mode,
                         bool channels_last, nb::handle outh) {
  const PoolAttrs a{kMaxPool, kernel, strides, pads, dilations, ceil_mode, channels_last};
  Arr x = read(xh, "MaxPool", "x", {dt::u8, dt::s8});
  int64_t y_shape[kMaxDims];
  const PoolGeometry g = pool_geometry(a, x.shape, x.ndim, y_shape);
  auto [obj, y] = make_out(outh, y_shape, x.ndim, x.type, "MaxPool");
  const int rank = x.ndim, nd = g.nd;
  if (product(y_shape, rank) == 0) return obj;
  static PlanCache<Exec>* plans = new PlanCache<Exec>();
  nb::gil_scoped_release nogil;
  const ThreadScope threads(1.0 * (product(x.shape, rank) + product(y_shape, rank)) <
                            kParallelMinBytes);
  Key key;
  key.push(threads.n());
  key.push(static_cast<int64_t>(x.type));
  key.push(channels_last);
  key.push(nd);
  for (int i = 0; i < rank; ++i) key.push(x.shape[i]);
  for (int i = 0; i < nd; ++i) {
    key.push(kernel[i]);
    key.push(strides[i]);
    key.push(dilations[i]);
    key.push(pads[i]);
    key.push(g.pads_end[i]);
  }
  auto plan = plans->get(key, [&] {
    const int64_t N = x.shape[0], C = x.shape[channels_last ? nd + 1 : 1];
    memory::dims src_dims{N, C}, dst_dims{N, C}, k, st, dil, pl, pr;
    for (int i = 0; i < nd; ++i) {
      src_dims.push_back(g.in_sp[i]);
      dst_dims.push_back(g.out_sp[i]);
      k.push_back(kernel[i]);
      st.push_back(strides[i]);
      dil.push_back(dilations[i] - 1);
      pl.push_back(pads[i]);
      pr.push_back(g.pads_end[i]);
    }
    const tag t = activation_tag(nd, channels_last);
    const memory::desc src_md(src_dims, x.type, t), dst_md(dst_dims, x.type, t);
    dnnl::pooling_forward::primitive_desc pd(engine(), prop_kind::forward_inference,
                                             algorithm::pooling_max, src_md, dst_md, st, k, dil,
                                             pl, pr, user_scratchpad_attr());
    return std::make_shared<Exec>(
        pd, std::vector<std::pair<int, memory>>{},
        std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_SRC, src_md}, {DNNL_ARG_DST, dst_md}});
  });
  const void* p[] = {x.data, y};
  plan->run(p);
  return obj;
}

}  // namespace

void bind_int8(nb::module_& m) {
  nb::class_<QConv>(m, "QConv", "int8 convolution with prepacked weights (int8.QConv).")
      .def(nb::init<nb::handle, nb::handle, nb::handle, double, int64_t, const std::string&,
                    const std::string&, double, int64_t, bool, double, int64_t,
                    const std::vector<int64_t>&, const std::vector<int64_t>&,
                    const std::vector<int64_t>&, int64_t, bool, const std::string&,
                    const std::vector<double>&, const std::vector<double>&>(),
           "weight"_a, "w_scale"_a, "bias"_a.none(), "x_scale"_a, "x_zero_point"_a, "x_dtype"_a,
           "y_dtype"_a, "y_scale"_a, "y_zero_point"_a, "has_z"_a, "z_scale"_a, "z_zero_point"_a,
           "strides"_a, "pads"_a, "dilations"_a, "group"_a, "channels_last"_a, "activation"_a,
           "activation_params"_a, "requantize"_a)
      .def("__call__", &QConv::call, "x"_a, "z"_a.none() = nb::none(),
           "out"_a.none() = nb::none(), "The requantized convolution of x (plus z), into out.")
      .def("implementations", &QConv::implementations,
           "oneDNN's implementation name for each cached primitive.");

  nb::class_<QMatMul>(m, "QMatMul", "int8 matmul with a prepacked constant B (int8.QMatMul).")
      .def(nb::init<nb::handle, nb::handle, nb::handle, bool, bool, double, int64_t,
                    const std::string&, const std::string&, double, int64_t, const std::string&,
                    const std::vector<double>&>(),
           "b"_a, "b_scale"_a, "bias"_a.none(), "trans_b"_a, "dynamic"_a, "a_scale"_a,
           "a_zero_point"_a, "a_dtype"_a, "y_dtype"_a, "y_scale"_a, "y_zero_point"_a,
           "activation"_a, "activation_params"_a)
      .def("__call__", &QMatMul::call, "a"_a, "out"_a.none() = nb::none(),
           "The int8 matmul of a's rows with B, into out.")
      .def("implementations", &QMatMul::implementations,
           "oneDNN's implementation name for each cached primitive.");

  m.def("quantize", &quantize, "x"_a, "scale"_a, "zero_point"_a, "dtype"_a, "channels_last"_a,
        "out"_a.none() = nb::none(), "saturate(rint(x / scale) + zero_point), float32 -> int8.");
  m.def("dequantize", &dequantize, "x"_a, "scale"_a, "zero_point"_a, "channels_last"_a,
        "out"_a.none() = nb::none(), "(x - zero_point) * scale, int8 -> float32.");
  m.def("dynamic_quantize", &dynamic_quantize, "x"_a,
        "ONNX DynamicQuantizeLinear: (uint8 y, scale, zero_point).");
  m.def("max_pool_int8", &max_pool_int8, "x"_a, "kernel_shape"_a, "strides"_a, "pads"_a,
        "dilations"_a, "ceil_mode"_a, "channels_last"_a, "out"_a.none() = nb::none(),
        "ONNX MaxPool of uint8/int8 x (NC... or N...C).");
}

}  // namespace ember
