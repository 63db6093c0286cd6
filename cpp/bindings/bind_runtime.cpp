// info(), threads, and the peak-FMA probe used by the benchmarks.
#include <omp.h>

#include <xmmintrin.h>

#include <chrono>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "runtime/dispatch.h"
#include "runtime/threads.h"

#ifndef SEQCORE_VERSION
#define SEQCORE_VERSION "0+unknown"
#endif

namespace seqcore {

void bind_runtime(py::module_& m) {
  m.def("info", [] {
    py::dict d;
    d["version"] = SEQCORE_VERSION;
    d["isa"] = kernels().isa;
    d["available_isas"] = available_isas();
    d["built_isas"] = built_isas();
    d["num_threads"] = get_num_threads();
    d["openmp"] = std::to_string(_OPENMP);
    d["compiler"] = SEQCORE_COMPILER;
    d["build_type"] = SEQCORE_BUILD_TYPE;
    return d;
  }, "Build and runtime facts: version, chosen ISA, available ISAs, threads, OpenMP, compiler.");
  m.def("get_num_threads", &get_num_threads, "Threads the kernels use (the OpenMP pool size).");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
    set_num_threads(n);
  }, py::arg("n"), "Sets the number of threads kernels use (like OMP_NUM_THREADS).");
  m.def("set_flush_denormal", [](bool on) {
    // MXCSR FTZ (bit 15: subnormal results become 0) and DAZ (bit 6: subnormal inputs read as
    // 0), on this thread and every OpenMP worker: the team spans the largest pool seqcore ever
    // used, so idle workers beyond the current thread count change too (threads created later
    // inherit the setting from this one).
    constexpr unsigned kBits = (1u << 15) | (1u << 6);
    auto apply = [on] { _mm_setcsr(on ? (_mm_getcsr() | kBits) : (_mm_getcsr() & ~kBits)); };
    py::gil_scoped_release rel;
    apply();
#pragma omp parallel num_threads(largest_pool())
    apply();
    return true;
  }, py::arg("mode"),
     "Flush subnormal floats to zero (True) or keep IEEE gradual underflow (False, the default), as "
     "torch.set_flush_denormal. Subnormal arithmetic is ~100x slower on x86; vanishing gradients "
     "reach that range. Returns True (supported).");
  m.def("release_memory", [] { release_workspace(); release_pool(); },
        "Frees this thread's kernel workspace and the idle pooled output buffers (both are kept "
        "between calls to avoid page faults).");
  m.def("_fma_peak", [](double seconds, int threads) {
    // Runs the probe on `threads` threads for about `seconds`; returns measured flop/s.
    if (threads < 1) throw py::value_error("threads must be >= 1");
    py::gil_scoped_release rel;
    const auto& k = kernels();
    int64_t iters = 1 << 16;
    for (;;) {
      auto t0 = std::chrono::steady_clock::now();
      double flops = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops)
      flops += k.fma_probe(iters);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (dt >= seconds || iters > (int64_t(1) << 40)) return flops / dt;
      iters *= dt > 0 ? std::max<int64_t>(2, int64_t(seconds / dt * 1.2)) : 16;
    }
  }, py::arg("seconds") = 0.05, py::arg("threads") = 1);
}

}  // namespace seqcore
