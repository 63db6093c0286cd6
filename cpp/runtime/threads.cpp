#include "runtime/threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

namespace seqcore {
namespace {
std::atomic<int> g_largest{0};  // largest pool size asked for through seqcore
void note(int n) {
  int cur = g_largest.load();
  while (n > cur && !g_largest.compare_exchange_weak(cur, n)) {
  }
}
}  // namespace
int get_num_threads() { return omp_get_max_threads(); }
void set_num_threads(int n) {
  note(n);
  omp_set_num_threads(n);
}
int largest_pool() {
  note(omp_get_max_threads());
  return std::max({g_largest.load(), omp_get_max_threads(), omp_get_num_procs()});
}
}  // namespace seqcore
