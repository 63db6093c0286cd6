// Shared helpers for the binding layer (the only code that sees pybind11): turn array-likes
// into contiguous float arrays of one dtype with errors that name the argument, allocate
// outputs, and check `out=` targets.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "runtime/kernels.h"

namespace seqcore {
namespace py = pybind11;

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);
Shape shape_of(const py::array& a);
std::string dtype_name(const py::array& a);

enum class FloatType { f32, f64 };

// A named float input (array-like) and the float dtype of a call.
struct In {
  py::object obj;
  const char* name;
};

// The float dtype shared by the given inputs (None entries skipped). ndarrays (and objects
// with a dtype) must be float32/float64 and agree; lists and scalars follow them (float64
// when nothing else decides). Raises TypeError naming the offending argument.
FloatType common_float_type(std::initializer_list<In> ins);

// np.ascontiguousarray(obj, dtype) with TypeError naming `name` for non-numeric input.
py::array as_float_array(const py::object& obj, const char* name, FloatType ft);

// An array a kernel writes in place: must already be an ndarray of the call's dtype,
// C-contiguous, writeable and (when `shape` is given) of that shape; errors name `name`.
py::array inplace(const py::object& obj, const char* name, FloatType ft, const Shape* shape);

// Integer index arrays (any integer dtype) -> contiguous int64.
py::array as_index_array(const py::object& obj, const char* name);

// Checks on converted arrays; messages name the argument, the expected and actual shape.
void check_ndim(const py::array& a, const char* name, int ndim, const char* expect);
void check_ndim_min(const py::array& a, const char* name, int min_ndim, const char* expect);
void check_shape(const py::array& a, const char* name, const Shape& want);
[[noreturn]] void shape_error(const char* name, const std::string& expect, const py::array& got);

// An output of `shape` in dtype T, or the caller's `out` after checking it (dtype, shape,
// C-contiguous, writeable). `overlaps` (set when `out` shares memory with an input) lets the
// caller compute into a temporary first.
template <class T>
py::array_t<T> make_out(const Shape& shape, const py::object& out, const char* out_name = "out");

bool memory_overlaps(const py::array& a, const py::array& b);

template <class T> inline T* ptr(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <class T> inline const T* cptr(const py::array& a) { return static_cast<const T*>(a.data()); }

int64_t numel(const Shape& s);
// Throws MemoryError if `count` elements of `itemsize` bytes cannot be addressed.
// Memory for a long-lived packed weight (free with std::free): from 1 MiB on, whole 2 MiB
// pages asked to be huge pages (one TLB entry each, and the hardware prefetchers, which stop
// at 4 KiB page boundaries, are not restarted every 4 KiB). Throws std::bad_alloc.
void* alloc_pages(size_t bytes);
void check_alloc(const Shape& s, size_t itemsize);

// Workspace for kernels called from this thread: grows to the largest request and is kept
// for the next call (fresh multi-megabyte buffers cost more in page faults than the work);
// contents unspecified, valid until the next call. release_workspace() frees it.
void* thread_workspace(size_t bytes);
void release_workspace();
void release_pool();  // frees idle pooled output blocks

// Calls f(float{}) or f(double{}).
template <class F> inline auto dispatch_float(FloatType ft, F&& f) {
  if (ft == FloatType::f32) return f(float{});
  return f(double{});
}

// Registration of each binding file.
void bind_runtime(py::module_& m);
void bind_dense(py::module_& m);
void bind_activations(py::module_& m);
void bind_recurrent(py::module_& m);
void bind_training(py::module_& m);
void bind_norm(py::module_& m);
void bind_attention(py::module_& m);
void bind_layers(py::module_& m);

}  // namespace seqcore
