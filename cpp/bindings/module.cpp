// The extension module seqcore._core: chooses the ISA, then registers every binding file.
#include <cstdlib>
#include <stdexcept>

#include "bindings/common.h"
#include "runtime/dispatch.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "seqcore C++ kernels (use the seqcore package, not this module)";
  try {
    seqcore::init_dispatch(std::getenv("SEQCORE_ISA"));
  } catch (const std::runtime_error& e) {
    throw pybind11::import_error(std::string("seqcore: ") + e.what());
  }
  seqcore::bind_runtime(m);
  seqcore::bind_dense(m);
  seqcore::bind_activations(m);
  seqcore::bind_recurrent(m);
  seqcore::bind_training(m);
  seqcore::bind_norm(m);
  seqcore::bind_attention(m);
  seqcore::bind_layers(m);
}
