// Attention bindings. Operands are (*batch, rows, features) arrays whose batch dims already
// agree (the Python layer broadcasts with views); any strides are read in place as long as the
// feature dim is contiguous, so MHA's per-head views of its projections cost no copy. Outputs are
// new C-contiguous arrays, or caller-given writeable views (MHA writes heads into (L, B, E)).
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings/common.h"

namespace seqcore {
namespace {

// An operand with per-head offsets (flattened batch index) and its row stride, in elements.
struct Heads {
  py::array arr;
  std::vector<int64_t> off;
  int64_t rs = 0;
};

bool usable_in_place(const py::array& a, size_t itemsize) {
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) return false;
  if (!a.dtype().attr("isnative").cast<bool>()) return false;
  const py::ssize_t nd = a.ndim();
  for (py::ssize_t d = 0; d < nd; ++d)
    if (a.strides(d) % py::ssize_t(itemsize) != 0) return false;
  return nd == 0 || a.shape(nd - 1) <= 1 || a.strides(nd - 1) == py::ssize_t(itemsize);
}

// Offsets of each batch index of `a` (batch dims = all but the last two), in elements.
std::vector<int64_t> head_offsets(const py::array& a, size_t itemsize) {
  const py::ssize_t nb = a.ndim() - 2;
  int64_t count = 1;
  for (py::ssize_t d = 0; d < nb; ++d) count *= a.shape(d);
  std::vector<int64_t> off(size_t(std::max<int64_t>(count, 0)), 0);
  for (int64_t f = 0; f < count; ++f) {
    int64_t rem = f, o = 0;
    for (py::ssize_t d = nb - 1; d >= 0; --d) {
      const int64_t idx = rem % a.shape(d);
      rem /= a.shape(d);
      o += idx * (a.strides(d) / py::ssize_t(itemsize));
    }
    off[size_t(f)] = o;
  }
  return off;
}

template <class T>
Heads input_heads(const py::object& obj, const char* name, FloatType ft) {
  Heads h;
  py::array a;
  if (py::isinstance<py::array>(obj)) {
    a = py::reinterpret_borrow<py::array>(obj);
    const char kind = a.dtype().kind();
    if (kind != 'f' || (a.itemsize() != 4 && a.itemsize() != 8))
      throw py::type_error("argument '" + std::string(name) + "' must be float32 or float64, got " + dtype_name(a));
    if (size_t(a.itemsize()) != sizeof(T) || !usable_in_place(a, sizeof(T))) a = as_float_array(obj, name, ft);
  } else {
    a = as_float_array(obj, name, ft);
  }
  h.arr = a;
  return h;
}

void finish_heads(Heads& h, size_t itemsize) {
  h.off = head_offsets(h.arr, itemsize);
  h.rs = h.arr.ndim() >= 2 ? int64_t(h.arr.strides(h.arr.ndim() - 2) / py::ssize_t(itemsize)) : 0;
}

// An output of `shape`: new C-contiguous, or the caller's writeable view (checked).
template <class T>
Heads output_heads(const Shape& shape, const py::object& given, const char* name) {
  Heads h;
  if (given.is_none()) {
    h.arr = make_out<T>(shape, py::none());
  } else {
    if (!py::isinstance<py::array>(given)) throw py::type_error("argument '" + std::string(name) + "' must be a numpy.ndarray");
    py::array a = py::reinterpret_borrow<py::array>(given);
    if (!a.dtype().equal(py::dtype::of<T>()))
      throw py::type_error("argument '" + std::string(name) + "' must have dtype " + (sizeof(T) == 4 ? "float32" : "float64") +
                           ", got " + dtype_name(a));
    if (!a.writeable()) throw py::value_error("argument '" + std::string(name) + "' is read-only");
    if (shape_of(a) != shape) shape_error(name, shape_str(shape), a);
    if (!usable_in_place(a, sizeof(T)))
      throw py::value_error("argument '" + std::string(name) + "' must have a contiguous last dimension");
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      if (a.shape(d) > 1 && a.strides(d) == 0)
        throw py::value_error("argument '" + std::string(name) + "' must not be a broadcast view");
    h.arr = a;
  }
  finish_heads(h, sizeof(T));
  return h;
}

struct MaskIn {
  MaskKind kind = MaskKind::none;
  py::array arr;  // uint8 or T, shape (*batch, L, S)
  std::vector<int64_t> off;
  int64_t rs = 0;
};

MaskKind parse_kind(const std::string& k) {
  if (k == "keep") return MaskKind::keep_u8;
  if (k == "block") return MaskKind::block_u8;
  if (k == "add") return MaskKind::add;
  throw py::value_error("mask kind must be 'keep', 'block' or 'add', got '" + k + "'");
}

// A mask broadcast (by the caller) to (*batch, L, S): bool -> keep/block as uint8, float ->
// added. The key dim must be contiguous (else one copy).
template <class T>
MaskIn mask_in(const py::object& obj, const std::string& kind, const char* name, const Shape& want, FloatType ft) {
  MaskIn m;
  if (obj.is_none()) return m;
  if (!py::isinstance<py::array>(obj)) throw py::type_error("argument '" + std::string(name) + "' must be a numpy.ndarray");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (shape_of(a) != want) shape_error(name, shape_str(want), a);
  const char dk = a.dtype().kind();
  if (dk == 'b') {
    m.kind = parse_kind(kind);
    if (m.kind == MaskKind::add) throw py::type_error("argument '" + std::string(name) + "': a bool mask cannot be 'add'");
    py::module_ np = py::module_::import("numpy");
    if (!usable_in_place(a, 1)) a = np.attr("ascontiguousarray")(a);
    a = a.attr("view")(np.attr("uint8"));
    m.arr = a;
    m.off = head_offsets(a, 1);
    m.rs = int64_t(a.strides(a.ndim() - 2));
  } else if (dk == 'f') {
    m.kind = MaskKind::add;
    if (size_t(a.itemsize()) != sizeof(T) || !usable_in_place(a, sizeof(T))) {
      py::module_ np = py::module_::import("numpy");
      a = np.attr("ascontiguousarray")(a, ft == FloatType::f32 ? py::dtype::of<float>() : py::dtype::of<double>());
    }
    m.arr = a;
    m.off = head_offsets(a, sizeof(T));
    m.rs = int64_t(a.strides(a.ndim() - 2) / py::ssize_t(sizeof(T)));
  } else {
    throw py::type_error("argument '" + std::string(name) + "' must be a bool or float array, got " + dtype_name(a));
  }
  return m;
}

AttnMask as_kernel_mask(const MaskIn& m) {
  AttnMask k;
  k.kind = m.kind;
  if (m.kind == MaskKind::none) return k;
  k.base = m.arr.data();
  k.off = m.off.data();
  k.rs = m.rs;
  return k;
}

AttnLayout layout(const Heads& h) { return AttnLayout{h.off.data(), h.rs}; }

struct Dims {
  Shape batch;
  int64_t BH, L, S, D, Dv;
};

// "(b0, b1, tail)" for an expected shape with batch dims.
std::string expect_str(const Shape& batch, const std::string& tail) {
  std::string r = "(";
  for (auto b : batch) r += std::to_string(b) + ", ";
  return r + tail + ")";
}

Dims check_qkv(const py::array& q, const py::array& k, const py::array& v) {
  check_ndim_min(q, "q", 2, "(*, L, E)");
  Dims d;
  d.batch = shape_of(q);
  d.batch.resize(d.batch.size() - 2);
  d.L = q.shape(q.ndim() - 2);
  d.D = q.shape(q.ndim() - 1);
  const std::string ke = expect_str(d.batch, "S, " + std::to_string(d.D));
  if (k.ndim() != q.ndim()) shape_error("k", ke, k);
  for (size_t i = 0; i < d.batch.size(); ++i)
    if (k.shape(py::ssize_t(i)) != d.batch[i]) shape_error("k", ke, k);
  if (k.shape(k.ndim() - 1) != d.D) shape_error("k", ke, k);
  d.S = k.shape(k.ndim() - 2);
  const std::string ve = expect_str(d.batch, std::to_string(d.S) + ", Ev");
  if (v.ndim() != q.ndim()) shape_error("v", ve, v);
  for (size_t i = 0; i < d.batch.size(); ++i)
    if (v.shape(py::ssize_t(i)) != d.batch[i]) shape_error("v", ve, v);
  if (v.shape(v.ndim() - 2) != d.S) shape_error("v", ve, v);
  d.Dv = v.shape(v.ndim() - 1);
  d.BH = numel(d.batch);
  return d;
}

[[noreturn]] void workspace_error(const Dims& d) {
  PyErr_SetString(PyExc_MemoryError, ("attention: cannot allocate the per-head workspace for L=" + std::to_string(d.L) +
                                      ", S=" + std::to_string(d.S) + ", E=" + std::to_string(d.D) + ", Ev=" +
                                      std::to_string(d.Dv) + " (it grows linearly with L and S)").c_str());
  throw py::error_already_set();
}

Shape with_rows(const Shape& batch, int64_t rows, int64_t cols) {
  Shape s = batch;
  s.push_back(rows);
  if (cols >= 0) s.push_back(cols);
  return s;
}

AttnShape attn_shape(const Dims& d, bool causal, double scale, double dropout_p, uint64_t seed) {
  if (!(dropout_p >= 0.0 && dropout_p < 1.0)) throw py::value_error("dropout_p must be in [0, 1), got " + std::to_string(dropout_p));
  return AttnShape{d.BH, d.L, d.S, d.D, d.Dv, scale, causal, dropout_p, seed};
}

py::tuple attention_forward(const py::object& q_o, const py::object& k_o, const py::object& v_o, const py::object& m1_o,
                            const std::string& m1_kind, const py::object& m2_o, const std::string& m2_kind, bool causal,
                            double scale, double dropout_p, uint64_t seed, bool need_lse, bool need_probs,
                            const py::object& out_o) {
  FloatType ft = common_float_type({{q_o, "q"}, {k_o, "k"}, {v_o, "v"}});
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    Heads q = input_heads<T>(q_o, "q", ft), k = input_heads<T>(k_o, "k", ft), v = input_heads<T>(v_o, "v", ft);
    Dims d = check_qkv(q.arr, k.arr, v.arr);
    finish_heads(q, sizeof(T));
    finish_heads(k, sizeof(T));
    finish_heads(v, sizeof(T));
    const Shape ms = with_rows(d.batch, d.L, d.S);
    MaskIn m1 = mask_in<T>(m1_o, m1_kind, "attn_mask", ms, ft), m2 = mask_in<T>(m2_o, m2_kind, "key_padding_mask", ms, ft);
    Heads out = output_heads<T>(with_rows(d.batch, d.L, d.Dv), out_o, "out");
    py::object lse_o = py::none(), probs_o = py::none();
    T* plse = nullptr;
    if (need_lse || need_probs) {
      Shape ls = with_rows(d.batch, d.L, -1);
      check_alloc(ls, sizeof(T));
      py::array_t<T> l = make_out<T>(ls, py::none());
      plse = l.mutable_data();
      lse_o = l;
    }
    T* pprobs = nullptr;
    if (need_probs) {
      check_alloc(ms, sizeof(T));
      py::array_t<T> p = make_out<T>(ms, py::none());
      pprobs = p.mutable_data();
      probs_o = p;
    }
    AttnShape s = attn_shape(d, causal, scale, dropout_p, seed);
    AttnForwardArgs<T> a;
    a.q = cptr<T>(q.arr);
    a.k = cptr<T>(k.arr);
    a.v = cptr<T>(v.arr);
    a.ql = layout(q);
    a.kl = layout(k);
    a.vl = layout(v);
    a.m1 = as_kernel_mask(m1);
    a.m2 = as_kernel_mask(m2);
    a.out = ptr<T>(out.arr);
    a.ol = layout(out);
    a.lse = plse;
    try {
      py::gil_scoped_release rel;
      K<T>().attention_forward(s, a);
      if (pprobs) K<T>().attention_probs(s, a, pprobs);
    } catch (const std::bad_alloc&) {
      workspace_error(d);
    }
    return py::make_tuple(out.arr, lse_o, probs_o);
  });
}

py::tuple attention_backward(const py::object& dout_o, const py::object& q_o, const py::object& k_o, const py::object& v_o,
                             const py::object& out_o, const py::object& lse_o, const py::object& m1_o,
                             const std::string& m1_kind, const py::object& m2_o, const std::string& m2_kind, bool causal,
                             double scale, double dropout_p, uint64_t seed, const py::object& dq_o,
                             const py::object& dk_o, const py::object& dv_o) {
  FloatType ft = common_float_type({{dout_o, "dout"}, {q_o, "q"}, {k_o, "k"}, {v_o, "v"}, {out_o, "out"}});
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    Heads q = input_heads<T>(q_o, "q", ft), k = input_heads<T>(k_o, "k", ft), v = input_heads<T>(v_o, "v", ft);
    Dims d = check_qkv(q.arr, k.arr, v.arr);
    Heads o = input_heads<T>(out_o, "out", ft), g = input_heads<T>(dout_o, "dout", ft);
    const Shape os = with_rows(d.batch, d.L, d.Dv);
    check_shape(o.arr, "out", os);
    check_shape(g.arr, "dout", os);
    py::array lse = as_float_array(lse_o, "lse", ft);
    check_shape(lse, "lse", with_rows(d.batch, d.L, -1));
    for (Heads* h : {&q, &k, &v, &o, &g}) finish_heads(*h, sizeof(T));
    const Shape ms = with_rows(d.batch, d.L, d.S);
    MaskIn m1 = mask_in<T>(m1_o, m1_kind, "attn_mask", ms, ft), m2 = mask_in<T>(m2_o, m2_kind, "key_padding_mask", ms, ft);
    Heads dq = output_heads<T>(with_rows(d.batch, d.L, d.D), dq_o, "dq");
    Heads dk = output_heads<T>(with_rows(d.batch, d.S, d.D), dk_o, "dk");
    Heads dv = output_heads<T>(with_rows(d.batch, d.S, d.Dv), dv_o, "dv");
    AttnShape s = attn_shape(d, causal, scale, dropout_p, seed);
    AttnBackwardArgs<T> a;
    a.q = cptr<T>(q.arr);
    a.k = cptr<T>(k.arr);
    a.v = cptr<T>(v.arr);
    a.out = cptr<T>(o.arr);
    a.dout = cptr<T>(g.arr);
    a.lse = cptr<T>(lse);
    a.ql = layout(q);
    a.kl = layout(k);
    a.vl = layout(v);
    a.ol = layout(o);
    a.dol = layout(g);
    a.m1 = as_kernel_mask(m1);
    a.m2 = as_kernel_mask(m2);
    a.dq = ptr<T>(dq.arr);
    a.dk = ptr<T>(dk.arr);
    a.dv = ptr<T>(dv.arr);
    a.dql = layout(dq);
    a.dkl = layout(dk);
    a.dvl = layout(dv);
    try {
      py::gil_scoped_release rel;
      K<T>().attention_backward(s, a);
    } catch (const std::bad_alloc&) {
      workspace_error(d);
    }
    return py::make_tuple(dq.arr, dk.arr, dv.arr);
  });
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def("attention_forward", &attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask1") = py::none(),
        py::arg("mask1_kind") = "keep", py::arg("mask2") = py::none(), py::arg("mask2_kind") = "block",
        py::arg("is_causal") = false, py::arg("scale") = 1.0, py::arg("dropout_p") = 0.0, py::arg("seed") = 0,
        py::arg("need_lse") = true, py::arg("need_probs") = false, py::arg("out") = py::none());
  m.def("attention_backward", &attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("mask1") = py::none(), py::arg("mask1_kind") = "keep",
        py::arg("mask2") = py::none(), py::arg("mask2_kind") = "block", py::arg("is_causal") = false,
        py::arg("scale") = 1.0, py::arg("dropout_p") = 0.0, py::arg("seed") = 0, py::arg("dq") = py::none(),
        py::arg("dk") = py::none(), py::arg("dv") = py::none());
}

}  // namespace seqcore
