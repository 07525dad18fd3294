// ember._C.Program: runs a lowered plan (program.h) in one call, without the GIL.
#include "program.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <tuple>

#include "bindings.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace ember {
namespace {

enum BufferKind { kInput = 0, kOutput = 1, kArena = 2 };

struct Buffer {
  int kind;
  int64_t where;  // input or output number, or byte offset into the arena
  std::vector<int64_t> shape;
};

using F32In = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
using Arena = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <class Array>
bool same_shape(const Array& a, const std::vector<int64_t>& shape) {
  if (a.ndim() != shape.size()) return false;
  for (std::size_t i = 0; i < shape.size(); ++i)
    if (static_cast<int64_t>(a.shape(i)) != shape[i]) return false;
  return true;
}

class Program {
 public:
  Program(const std::vector<ProgramStep*>& steps,
          const std::vector<std::tuple<int, int64_t, std::vector<int64_t>>>& buffers,
          int64_t arena_bytes)
      : arena_bytes_(arena_bytes) {
    for (const ProgramStep* s : steps) {
      if (s == nullptr) throw std::invalid_argument("Program: a step is None");
      steps_.push_back(*s);
    }
    for (const auto& [kind, where, shape] : buffers) {
      if (kind < kInput || kind > kArena)
        throw std::invalid_argument("Program: buffer kind must be 0 (input), 1 (output) or 2 "
                                    "(arena), got " + std::to_string(kind));
      if (kind == kInput) n_inputs_ = std::max<int64_t>(n_inputs_, where + 1);
      if (kind == kOutput) n_outputs_ = std::max<int64_t>(n_outputs_, where + 1);
      buffers_.push_back({kind, where, shape});
    }
  }

  // Runs every step. False (nothing run) when an input is not a C-contiguous float32 array of the
  // recorded shape: the caller then runs the plan step by step, which handles any layout.
  bool run(nb::sequence inputs, Arena arena, nb::sequence outputs) {
    if (static_cast<int64_t>(nb::len(inputs)) < n_inputs_ ||
        static_cast<int64_t>(nb::len(outputs)) < n_outputs_)
      throw std::invalid_argument("Program.run: expected " + std::to_string(n_inputs_) +
                                  " inputs and " + std::to_string(n_outputs_) + " outputs");
    if (static_cast<int64_t>(arena.shape(0)) < arena_bytes_)
      throw std::invalid_argument("Program.run: the arena has " + std::to_string(arena.shape(0)) +
                                  " bytes, the program needs " + std::to_string(arena_bytes_));
    ptrs_scratch().resize(buffers_.size());
    std::vector<void*>& ptrs = ptrs_scratch();
    uint8_t* base = arena.data();
    for (std::size_t i = 0; i < buffers_.size(); ++i) {
      const Buffer& b = buffers_[i];
      if (b.kind == kArena) {
        ptrs[i] = base + b.where;
      } else if (b.kind == kInput) {
        F32In a;
        if (!nb::try_cast(inputs[b.where], a, false) || !same_shape(a, b.shape)) return false;
        ptrs[i] = const_cast<float*>(a.data());
      } else {
        F32Out a;
        if (!nb::try_cast(outputs[b.where], a, false) || !same_shape(a, b.shape))
          throw std::invalid_argument("Program.run: output " + std::to_string(b.where) +
                                      " must be a writeable C-contiguous float32 array of the "
                                      "recorded shape");
        ptrs[i] = a.data();
      }
    }
    nb::gil_scoped_release nogil;
    for (const ProgramStep& s : steps_) s.run(ptrs.data());
    return true;
  }

  std::size_t size() const { return steps_.size(); }

 private:
  // Per thread: many threads may run one Program at once.
  static std::vector<void*>& ptrs_scratch() {
    static thread_local std::vector<void*> ptrs;
    return ptrs;
  }

  std::vector<ProgramStep> steps_;
  std::vector<Buffer> buffers_;
  int64_t arena_bytes_ = 0, n_inputs_ = 0, n_outputs_ = 0;
};

}  // namespace

void bind_program(nb::module_& m) {
  nb::class_<ProgramStep>(m, "ProgramStep",
                          "One kernel call on fixed shapes, lowered for a Program (Kernel.step).");
  nb::class_<Program>(m, "Program",
                      "A lowered plan: every step run in C++ in one call (see csrc/program.h).")
      .def(nb::init<const std::vector<ProgramStep*>&,
                    const std::vector<std::tuple<int, int64_t, std::vector<int64_t>>>&, int64_t>(),
           "steps"_a, "buffers"_a, "arena_bytes"_a,
           "buffers: (kind, where, shape) per buffer number: kind 0 = graph input `where`, "
           "1 = graph output `where`, 2 = arena byte offset `where`.")
      .def("run", &Program::run, "inputs"_a, "arena"_a, "outputs"_a,
           "Run every step; False if an input is not C-contiguous float32 of the recorded shape.")
      .def("__len__", &Program::size);
}

}  // namespace ember
