// A Program: a whole execution plan run in C++, one Python call per model run.
//
// The Python runtime (ember/runtime/plan.py) lowers a plan whose shapes are fixed for an input
// signature into a list of ProgramSteps. Each step is one kernel call on fixed shapes that reads
// and writes numbered buffers; the Program resolves the buffers to pointers once per run (graph
// inputs, graph outputs, offsets into the thread's arena) and runs every step without the GIL.
// This removes the per-step Python dispatch, which dominates models whose kernels take
// microseconds (an MLP at batch 1).
#pragma once
#include <nanobind/nanobind.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ember {

struct ProgramStep {
  // Runs the kernel on buffers[i] = the pointer of buffer i (as numbered by the Program).
  std::function<void(void* const* buffers)> run;
  // The Python object that owns the kernel `run` calls into: kept alive as long as the step.
  nanobind::object owner;
};

// A buffer reference as lowering passes it: (buffer number, shape).
using BufferRef = std::pair<int, std::vector<int64_t>>;

}  // namespace ember
