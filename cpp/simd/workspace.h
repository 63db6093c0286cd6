// Per-thread scratch buffers that grow and are reused across calls (first-touch page faults
// on fresh buffers cost more than the work here). Per-ISA namespace: no shared inline copy.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>

namespace seqcore {
namespace SEQCORE_ISA {

class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p_); }
  // A 64-byte aligned buffer of at least `count` T's; contents are unspecified.
  template <class T> T* get(size_t count) {
    size_t need = count * sizeof(T);
    if (need > bytes_) {
      std::free(p_);
      p_ = nullptr;
      bytes_ = 0;
      size_t rounded = (need + 4095) & ~size_t(4095);
      p_ = std::aligned_alloc(64, rounded);
      if (!p_) throw std::bad_alloc();
      bytes_ = rounded;
    }
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// An exception must not leave an OpenMP region (that is std::terminate): each thread runs its
// work through run(); the first exception is kept and rethrown on the calling thread after the
// region (a failed Scratch allocation then reaches Python as MemoryError).
class FirstError {
 public:
  template <class F> void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!e_) e_ = std::current_exception();
    }
  }
  void rethrow() {
    if (e_) std::rethrow_exception(e_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr e_;
};

}  // namespace SEQCORE_ISA
}  // namespace seqcore
