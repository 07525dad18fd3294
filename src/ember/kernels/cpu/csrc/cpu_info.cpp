#include "cpu_info.h"

namespace ember {

static CpuInfo detect() {
  CpuInfo info;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  info.avx2 = __builtin_cpu_supports("avx2");
  info.fma = __builtin_cpu_supports("fma");
  info.avx512f = __builtin_cpu_supports("avx512f");
  info.avx512bw = __builtin_cpu_supports("avx512bw");
  info.avx512vnni = __builtin_cpu_supports("avx512vnni");
  info.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return info;
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

}  // namespace ember
