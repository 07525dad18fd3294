// The thread count every native kernel runs with: oneDNN's and ember's own (set_num_threads).
#pragma once
#include <omp.h>

#include <atomic>

namespace ember {

// The thread count every kernel runs with (set_num_threads). NOTE: omp_set_num_threads only sets
// the calling thread's ICV (libgomp gives each new thread the global default), so a count set from
// Python's main thread would not reach worker threads: each kernel call opens a ThreadScope on the
// thread that runs it instead.
inline std::atomic<int>& thread_target() {
  static std::atomic<int> n{omp_get_max_threads()};
  return n;
}

}  // namespace ember
