#include "bindings/common.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <unordered_map>

namespace seqcore {

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    r += std::to_string(s[i]);
    if (s.size() == 1 || i + 1 < s.size()) r += s.size() == 1 ? "," : ", ";
  }
  return r + ")";
}

Shape shape_of(const py::array& a) {
  Shape s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

namespace {
// The dtype an object already has, if it is array-like with one (ndarray, numpy scalar,
// anything with a .dtype); else None.
py::object own_dtype(const py::object& obj) {
  if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj).dtype();
  if (py::hasattr(obj, "dtype") && py::hasattr(obj, "__array__")) return obj.attr("dtype");
  return py::none();
}
[[noreturn]] void dtype_error(const char* name, const std::string& got) {
  throw py::type_error("argument '" + std::string(name) + "' must be float32 or float64, got " + got);
}
}  // namespace

// np.asarray(a, dtype, order='C'): C-contiguous, keeps 0-d shapes (ascontiguousarray
// would turn them into (1,)).
py::array as_c_array(const py::object& a, const py::dtype& dt) {
  return py::module_::import("numpy").attr("asarray")(a, dt, py::arg("order") = "C");
}

FloatType common_float_type(std::initializer_list<In> ins) {
  const char* first_name = nullptr;
  int found = -1;
  for (const In& in : ins) {
    if (in.obj.is_none()) continue;
    py::object dt = own_dtype(in.obj);
    if (dt.is_none()) continue;
    py::dtype d = py::reinterpret_borrow<py::dtype>(dt);
    if (d.kind() != 'f' || (d.itemsize() != 4 && d.itemsize() != 8))
      dtype_error(in.name, py::str(d).cast<std::string>());
    int f = d.itemsize() == 4 ? 0 : 1;
    if (found >= 0 && f != found)
      throw py::type_error("mixed float dtypes: argument '" + std::string(first_name) + "' is " +
                           (found == 0 ? "float32" : "float64") + " but '" + in.name + "' is " +
                           (f == 0 ? "float32" : "float64") + "; convert one of them");
    if (found < 0) { found = f; first_name = in.name; }
  }
  return found == 0 ? FloatType::f32 : FloatType::f64;
}

py::array as_float_array(const py::object& obj, const char* name, FloatType ft) {
  if (obj.is_none()) throw py::type_error("argument '" + std::string(name) + "' must be an array, got None");
  py::dtype want = ft == FloatType::f32 ? py::dtype::of<float>() : py::dtype::of<double>();
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    char kind = a.dtype().kind();
    if (kind != 'f' || (a.itemsize() != 4 && a.itemsize() != 8)) dtype_error(name, dtype_name(a));
    if (a.itemsize() != want.itemsize())
      throw py::type_error(std::string("mixed float dtypes: argument '") + name + "' is " + dtype_name(a) +
                           " but the call computes in " + (ft == FloatType::f32 ? "float32" : "float64"));
    if (a.dtype().equal(want) && (a.flags() & py::array::c_style)) return a;
    return as_c_array(a, want);  // strided or byte-swapped
  }
  // Lists, tuples, scalars, other array-likes: let NumPy read them, then insist on numbers.
  py::module_ np = py::module_::import("numpy");
  py::array a;
  try {
    a = np.attr("asarray")(obj);
  } catch (py::error_already_set& e) {
    throw py::type_error("argument '" + std::string(name) + "' is not array-like: " + std::string(e.what()));
  }
  char kind = a.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') dtype_error(name, dtype_name(a));
  if (kind == 'f' && a.itemsize() != 4 && a.itemsize() != 8) dtype_error(name, dtype_name(a));
  return as_c_array(a, want);
}

py::array inplace(const py::object& obj, const char* name, FloatType ft, const Shape* shape) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("argument '" + std::string(name) + "' must be a numpy.ndarray (it is updated in place)");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const int want = ft == FloatType::f32 ? 4 : 8;
  if (a.dtype().kind() != 'f' || a.itemsize() != want)
    throw py::type_error("argument '" + std::string(name) + "' must be " + (want == 4 ? "float32" : "float64") +
                         ", got " + dtype_name(a));
  if (!a.writeable()) throw py::value_error("argument '" + std::string(name) + "' is read-only");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error("argument '" + std::string(name) + "' must be C-contiguous (it is updated in place)");
  if (shape && shape_of(a) != *shape) shape_error(name, shape_str(*shape), a);
  return a;
}

py::array as_index_array(const py::object& obj, const char* name) {
  py::module_ np = py::module_::import("numpy");
  py::array a = py::isinstance<py::array>(obj) ? py::reinterpret_borrow<py::array>(obj)
                                                : py::array(np.attr("asarray")(obj));
  char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::type_error("argument '" + std::string(name) + "' must be an integer array, got " + dtype_name(a));
  if (a.dtype().equal(py::dtype::of<int64_t>()) && (a.flags() & py::array::c_style)) return a;
  if (kind == 'u' && a.itemsize() == 8 && a.size() > 0) {
    py::object mx = a.attr("max")();
    if (mx.cast<unsigned long long>() > (unsigned long long)std::numeric_limits<int64_t>::max())
      throw py::value_error("argument '" + std::string(name) + "' has values too large for int64");
  }
  return as_c_array(a, py::dtype::of<int64_t>());
}

void shape_error(const char* name, const std::string& expect, const py::array& got) {
  throw py::value_error("argument '" + std::string(name) + "' must have shape " + expect + ", got " +
                        shape_str(shape_of(got)));
}

void check_ndim(const py::array& a, const char* name, int ndim, const char* expect) {
  if (a.ndim() != ndim) shape_error(name, expect, a);
}

void check_ndim_min(const py::array& a, const char* name, int min_ndim, const char* expect) {
  if (a.ndim() < min_ndim) shape_error(name, expect, a);
}

void check_shape(const py::array& a, const char* name, const Shape& want) {
  if (shape_of(a) != want) shape_error(name, shape_str(want), a);
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

void check_alloc(const Shape& s, size_t itemsize) {
  // Refuse sizes whose byte count overflows or cannot exist before anything is allocated.
  unsigned __int128 total = itemsize;
  for (auto d : s) {
    if (d < 0) throw py::value_error("negative dimension in shape " + shape_str(s));
    total *= static_cast<unsigned __int128>(d);
    if (total > (unsigned __int128)(std::numeric_limits<int64_t>::max() / 2))
    {
      PyErr_SetString(PyExc_MemoryError, ("cannot allocate an array of shape " + shape_str(s)).c_str());
      throw py::error_already_set();
    }
  }
}

// Large outputs come from a pool of 2 MiB-aligned blocks that NumPy hands back when the
// array dies: a training loop that allocates the same activations every step then reuses
// warm pages instead of faulting in fresh zeroed ones (measured: ~10% of an LSTM step).
namespace {
class BlockPool {
 public:
  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        idle_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    if (p) madvise(p, bytes, MADV_HUGEPAGE);
    return p;
  }
  void put(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_ + bytes > kMaxIdle) {
      // Over the cap: drop every idle block (sizes change when a model changes shape).
      for (auto& kv : free_)
        for (void* q : kv.second) std::free(q);
      free_.clear();
      idle_ = 0;
    }
    free_[bytes].push_back(p);
    idle_ += bytes;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_)
      for (void* q : kv.second) std::free(q);
    free_.clear();
    idle_ = 0;
  }
  static constexpr size_t kAlign = size_t(1) << 21;
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kMaxIdle = size_t(1) << 30;

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t idle_ = 0;
};
BlockPool& pool() {
  static BlockPool* p = new BlockPool();  // never destroyed: arrays may outlive static teardown
  return *p;
}
}  // namespace

void release_pool() { pool().clear(); }

template <class T>
py::array_t<T> make_out(const Shape& shape, const py::object& out, const char* out_name) {
  if (out.is_none()) {
    check_alloc(shape, sizeof(T));
    std::vector<py::ssize_t> shp(shape.begin(), shape.end());
    const size_t bytes = size_t(numel(shape)) * sizeof(T);
    if (bytes < BlockPool::kMinBytes) return py::array_t<T>(shp);
    const size_t rounded = (bytes + BlockPool::kAlign - 1) & ~(BlockPool::kAlign - 1);
    void* p = pool().get(rounded);
    if (!p) {
      PyErr_SetString(PyExc_MemoryError, ("cannot allocate an array of shape " + shape_str(shape)).c_str());
      throw py::error_already_set();
    }
    // The capsule's destructor returns the block; its size rides along in the context.
    py::capsule owner(p, "seqcore.block", [](PyObject* cap) {
      void* q = PyCapsule_GetPointer(cap, "seqcore.block");
      size_t sz = reinterpret_cast<size_t>(PyCapsule_GetContext(cap));
      pool().put(q, sz);
    });
    PyCapsule_SetContext(owner.ptr(), reinterpret_cast<void*>(rounded));
    return py::array_t<T>(shp, static_cast<T*>(p), owner);
  }
  if (!py::isinstance<py::array>(out))
    throw py::type_error("argument '" + std::string(out_name) + "' must be a numpy.ndarray");
  py::array o = py::reinterpret_borrow<py::array>(out);
  if (!o.dtype().equal(py::dtype::of<T>()))
    throw py::type_error("argument '" + std::string(out_name) + "' must have dtype " +
                         (sizeof(T) == 4 ? "float32" : "float64") + ", got " + dtype_name(o));
  if (!o.writeable()) throw py::value_error("argument '" + std::string(out_name) + "' is read-only");
  if (!(o.flags() & py::array::c_style))
    throw py::value_error("argument '" + std::string(out_name) + "' must be C-contiguous");
  if (shape_of(o) != shape) shape_error(out_name, shape_str(shape), o);
  return py::reinterpret_borrow<py::array_t<T>>(o);
}
template py::array_t<float> make_out<float>(const Shape&, const py::object&, const char*);
template py::array_t<double> make_out<double>(const Shape&, const py::object&, const char*);

namespace {
struct Workspace {
  void* p = nullptr;
  size_t bytes = 0;
  ~Workspace() { std::free(p); }
};
thread_local Workspace tls_ws;
}  // namespace

void* alloc_pages(size_t bytes) {
  constexpr size_t kHuge = size_t(1) << 21;
  const size_t align = bytes >= kHuge / 2 ? kHuge : 64;
  const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

void* thread_workspace(size_t bytes) {
  if (bytes > tls_ws.bytes) {
    std::free(tls_ws.p);
    tls_ws.p = nullptr;
    tls_ws.bytes = 0;
    size_t rounded = (bytes + (size_t(1) << 21) - 1) & ~((size_t(1) << 21) - 1);  // whole 2 MiB pages
    void* p = std::aligned_alloc(size_t(1) << 21, rounded);
    if (!p) {
      PyErr_SetString(PyExc_MemoryError, ("cannot allocate a workspace of " + std::to_string(bytes) + " bytes").c_str());
      throw py::error_already_set();
    }
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);
#endif
    tls_ws.p = p;
    tls_ws.bytes = rounded;
  }
  return tls_ws.p;
}

void release_workspace() {
  std::free(tls_ws.p);
  tls_ws.p = nullptr;
  tls_ws.bytes = 0;
}

bool memory_overlaps(const py::array& a, const py::array& b) {
  auto lo_a = reinterpret_cast<uintptr_t>(a.data()), lo_b = reinterpret_cast<uintptr_t>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && lo_a < lo_b + b.nbytes() && lo_b < lo_a + a.nbytes();
}

}  // namespace seqcore
