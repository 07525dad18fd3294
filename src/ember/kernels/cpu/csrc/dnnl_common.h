// What the oneDNN kernels (dnnl_kernels.h) share: the engine and per-thread streams, the thread
// count (ThreadScope: any OpenMP kernel may use it to honour set_num_threads), per-thread scratch
// buffers, cache keys, and `Exec` (one primitive with its arguments). Python-free.
#pragma once
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "threads.h"

namespace ember::dnnl_detail {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

// One CPU engine for the process. Leaked on purpose: it must outlive every thread-local stream and
// every cached primitive, whatever order static destructors run in at exit.
inline const dnnl::engine& engine() {
  static const dnnl::engine* e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *e;
}

// A stream per calling thread: CPU streams are cheap (~75 ns) and this way no two Python threads
// ever share one.
inline dnnl::stream& stream() {
  static thread_local dnnl::stream s(engine());
  return s;
}

// Work below these runs on the calling thread alone: an OpenMP fork/join (~1.3 us on this 2-core
// CPU) costs more than splitting saves (3x3 conv C=16 H=8, 0.3 MFLOP: 4.1 us on one thread,
// 5.8 us on two; C=32 H=8, 1.2 MFLOP: 10.8 vs 8.9 us).
constexpr double kParallelMinFlops = 256e3;
constexpr double kParallelMinBytes = 32e3;

// Sets this thread's OpenMP count for one kernel call (primitive creation and execution both read
// it; plans are cached per count) and restores the previous count after.
class ThreadScope {
 public:
  explicit ThreadScope(bool tiny)
      : n_(tiny ? 1 : thread_target().load(std::memory_order_relaxed)),
        prev_(omp_get_max_threads()) {
    if (prev_ != n_) omp_set_num_threads(n_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;
  ~ThreadScope() {
    if (prev_ != n_) omp_set_num_threads(prev_);
  }
  int n() const { return n_; }

 private:
  int n_, prev_;
};

// Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX; ONEDNN_MAX_CPU_ISA can lower it).
// Elsewhere it would fall back to its reference kernels, so a bf16 request computes in f32.
inline bool native_bf16() {
  static const bool yes = [] {
    const int isa = static_cast<int>(dnnl::get_effective_cpu_isa());
    return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
  }();
  return yes;
}

// A growable 64-byte aligned buffer; one per thread and role (scratchpad, converted source, ...).
class ThreadBuffer {
 public:
  ThreadBuffer() = default;
  ThreadBuffer(const ThreadBuffer&) = delete;
  ThreadBuffer& operator=(const ThreadBuffer&) = delete;
  ~ThreadBuffer() { std::free(data_); }
  void* get(std::size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      data_ = nullptr;
      size_ = 0;
      const std::size_t n = (bytes + 4095) / 4096 * 4096;
      data_ = std::aligned_alloc(64, n);
      if (!data_) throw std::bad_alloc();
      size_ = n;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Roles: a primitive's scratchpad, converted or copied inputs (src, the second operand) and an
// intermediate result; one call uses each role at most once at a time.
enum BufferRole { kScratchpad, kSrc, kSrc1, kDst, kBufferRoles };

inline void* thread_buffer(BufferRole role, std::size_t bytes) {
  static thread_local std::array<ThreadBuffer, kBufferRoles> buffers;
  return buffers[role].get(bytes);
}

// A cache key: the handful of integers that decide a primitive (shapes, strides, thread count).
struct Key {
  std::array<int64_t, 40> v{};
  int n = 0;
  void push(int64_t x) {
    if (n == static_cast<int>(v.size())) throw std::logic_error("ember: cache key too long");
    v[n++] = x;
  }
  bool operator==(const Key& o) const {
    return n == o.n && std::equal(v.begin(), v.begin() + n, o.v.begin());
  }
};

struct KeyHash {
  std::size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the integers
    for (int i = 0; i < k.n; ++i) {
      h ^= static_cast<uint64_t>(k.v[i]);
      h *= 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
  }
};

// Plans by key. The mutex guards the map only: a miss builds its plan without the lock (two threads
// missing at once both build; the first insert wins) and nobody holds it while a plan runs.
template <class Plan>
class PlanCache {
 public:
  template <class Build>
  std::shared_ptr<Plan> get(const Key& key, Build&& build) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) return it->second;
    }
    std::shared_ptr<Plan> plan = build();
    std::lock_guard<std::mutex> lock(mu_);
    // Bounded: a model fed ever-new shapes rebuilds rather than grows without end.
    if (map_.size() >= kMaxPlans) map_.clear();
    return map_.emplace(key, std::move(plan)).first->second;
  }
  std::vector<std::shared_ptr<Plan>> values() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Plan>> out;
    for (auto& kv : map_) out.push_back(kv.second);
    return out;
  }

 private:
  static constexpr std::size_t kMaxPlans = 256;
  std::mutex mu_;
  std::unordered_map<Key, std::shared_ptr<Plan>, KeyHash> map_;
};

inline void check(dnnl_status_t st, const char* what) {
  if (st != dnnl_success)
    throw std::runtime_error(std::string("oneDNN: ") + what + " failed (status " +
                             std::to_string(static_cast<int>(st)) + ")");
}

// One primitive and its arguments. Constant arguments (packed weights, bias) are bound once;
// per-call arguments (source, destination, post-op inputs, then the scratchpad) get their pointers
// at each run. Their memory objects (~280 ns each to create) are reused by whichever call finds
// them free; a call that finds another thread using them makes its own.
class Exec {
 public:
  static constexpr int kMaxArgs = 12;

  Exec(const dnnl::primitive_desc_base& pd, std::vector<std::pair<int, memory>> fixed,
       std::vector<std::pair<int, memory::desc>> per_call)
      : prim_(pd.get()), fixed_(std::move(fixed)), per_call_(std::move(per_call)) {
    impl_ = pd.impl_info_str();
    const memory::desc sp = pd.scratchpad_desc();
    scratch_bytes_ = sp.get_size();
    if (scratch_bytes_) per_call_.emplace_back(DNNL_ARG_SCRATCHPAD, sp);
    if (fixed_.size() + per_call_.size() > kMaxArgs) throw std::logic_error("ember: too many args");
    for (auto& [arg, md] : per_call_) own_.emplace_back(md, engine(), static_cast<void*>(nullptr));
  }

  // ptrs: one pointer per per-call argument, in the order given at construction (no scratchpad).
  void run(const void* const* ptrs) {
    dnnl_exec_arg_t args[kMaxArgs];
    int n = 0;
    for (auto& [arg, mem] : fixed_) args[n++] = {arg, mem.get()};
    void* scratch = scratch_bytes_ ? thread_buffer(kScratchpad, scratch_bytes_) : nullptr;
    const std::size_t n_call = per_call_.size();
    const std::size_t n_ptrs = scratch_bytes_ ? n_call - 1 : n_call;
    const bool mine = !busy_.test_and_set(std::memory_order_acquire);
    struct Release {
      std::atomic_flag* flag;
      ~Release() {
        if (flag) flag->clear(std::memory_order_release);
      }
    } release{mine ? &busy_ : nullptr};
    std::vector<memory> temp;  // only when another thread holds own_
    if (!mine) temp.reserve(n_call);
    for (std::size_t i = 0; i < n_call; ++i) {
      void* p = i < n_ptrs ? const_cast<void*>(ptrs[i]) : scratch;
      dnnl_memory_t m;
      if (mine) {
        m = own_[i].get();
        check(dnnl_memory_set_data_handle(m, p), "set_data_handle");
      } else {
        temp.emplace_back(per_call_[i].second, engine(), p);
        m = temp.back().get();
      }
      args[n++] = {per_call_[i].first, m};
    }
    check(dnnl_primitive_execute(prim_.get(), stream().get(), n, args), "execute");
    // A no-op for OpenMP CPU streams (they execute synchronously), but the API asks for it.
    check(dnnl_stream_wait(stream().get()), "stream wait");
  }

  const std::string& impl() const { return impl_; }

 private:
  dnnl::primitive prim_;
  std::vector<std::pair<int, memory>> fixed_;
  std::vector<std::pair<int, memory::desc>> per_call_;
  std::vector<memory> own_;
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::size_t scratch_bytes_ = 0;
  std::string impl_;
};

inline dnnl::primitive_attr user_scratchpad_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A reorder from one layout to another (f32 -> bf16, NCHW -> NHWC, strided -> dense) as an Exec
// taking (src, dst) pointers.
inline std::unique_ptr<Exec> make_reorder(const memory::desc& src, const memory::desc& dst) {
  dnnl::reorder::primitive_desc pd(engine(), src, engine(), dst, user_scratchpad_attr());
  return std::make_unique<Exec>(
      pd, std::vector<std::pair<int, memory>>{},
      std::vector<std::pair<int, memory::desc>>{{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}});
}

// Plain (dense, row-major over the logical dims) activation layouts for 1-3 spatial axes.
inline tag activation_tag(int spatial, bool channels_last) {
  switch (spatial) {
    case 1:
      return channels_last ? tag::nwc : tag::ncw;
    case 2:
      return channels_last ? tag::nhwc : tag::nchw;
    default:
      return channels_last ? tag::ndhwc : tag::ncdhw;
  }
}

inline tag weights_tag(int spatial, bool grouped) {
  switch (spatial) {
    case 1:
      return grouped ? tag::goiw : tag::oiw;
    case 2:
      return grouped ? tag::goihw : tag::oihw;
    default:
      return grouped ? tag::goidhw : tag::oidhw;
  }
}

}  // namespace ember::dnnl_detail
