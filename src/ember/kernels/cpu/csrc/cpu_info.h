// What the CPU we run on can do; kernels pick their code path from this at run time.
#pragma once

namespace ember {

struct CpuInfo {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
};

// Detected once, on first use.
const CpuInfo& cpu_info();

}  // namespace ember
