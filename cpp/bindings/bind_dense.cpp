// Dense bindings: matmul (NumPy semantics), gemm (BLAS-style, in place), linear and its
// backward, and PackedMatrix (a right operand packed once, multiplied many times).
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "bindings/common.h"

namespace seqcore {
namespace {

Act parse_act(const py::object& a) {
  if (a.is_none()) return Act::none;
  std::string s = py::str(a);
  if (s == "relu") return Act::relu;
  if (s == "gelu") return Act::gelu;
  if (s == "gelu_tanh") return Act::gelu_tanh;
  if (s == "tanh") return Act::tanh;
  if (s == "sigmoid") return Act::sigmoid;
  if (s == "silu") return Act::silu;
  throw py::value_error("activation must be one of None, 'relu', 'gelu', 'gelu_tanh', 'tanh', 'sigmoid', 'silu'; got '" + s + "'");
}

// How the last two dims of `a` can feed the GEMM without a copy: row-major (trans=false,
// ld = row stride) or column-major (trans=true, ld = column stride). False: copy needed.
bool gemm_layout(const py::array& a, int64_t* ld, bool* trans) {
  const int nd = int(a.ndim());
  const int64_t r = a.shape(nd - 2), c = a.shape(nd - 1), isz = a.itemsize();
  const int64_t sr = a.strides(nd - 2), sc = a.strides(nd - 1);
  if (r == 0 || c == 0) {  // nothing is read: any layout will do (NumPy gives such strides 0)
    *trans = false;
    *ld = std::max<int64_t>(c, 1);
    return true;
  }
  if ((sc == isz || c <= 1) && (r <= 1 || (sr > 0 && sr % isz == 0 && sr / isz >= c))) {
    *trans = false;
    *ld = r <= 1 ? std::max<int64_t>(c, 1) : sr / isz;
    return true;
  }
  if ((sr == isz || r <= 1) && (c <= 1 || (sc > 0 && sc % isz == 0 && sc / isz >= r))) {
    *trans = true;
    *ld = c <= 1 ? std::max<int64_t>(r, 1) : sc / isz;
    return true;
  }
  return false;
}

// A float array of the call's dtype that need not be contiguous (matmul reads strides).
py::array as_float_strided(const py::object& obj, const char* name, FloatType ft) {
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().kind() == 'f' && a.itemsize() == (ft == FloatType::f32 ? 4 : 8) &&
        a.dtype().attr("isnative").cast<bool>())
      return a;
  }
  return as_float_array(obj, name, ft);
}

template <class T>
py::array matmul_impl(py::array a, py::array b, const py::object& out) {
  const bool a1 = a.ndim() == 1, b1 = b.ndim() == 1;
  if (a.ndim() == 0) throw py::value_error("matmul: argument 'a' must have at least 1 dimension, got a scalar");
  if (b.ndim() == 0) throw py::value_error("matmul: argument 'b' must have at least 1 dimension, got a scalar");
  if (a1) a = a.attr("reshape")(1, a.shape(0));
  if (b1) b = b.attr("reshape")(b.shape(0), 1);
  const int na = int(a.ndim()), nb = int(b.ndim());
  const int64_t m = a.shape(na - 2), k = a.shape(na - 1), kb = b.shape(nb - 2), n = b.shape(nb - 1);
  if (k != kb)
    throw py::value_error("matmul: inner dimensions differ: argument 'a' has shape " + shape_str(shape_of(a)) +
                          " (k=" + std::to_string(k) + ") but argument 'b' has shape " + shape_str(shape_of(b)) +
                          " (k=" + std::to_string(kb) + ")");
  // Broadcast batch dims.
  const int nbatch = std::max(na, nb) - 2;
  Shape batch(nbatch);
  for (int i = 0; i < nbatch; ++i) {
    int ia = i - (nbatch - (na - 2)), ib = i - (nbatch - (nb - 2));
    int64_t da = ia >= 0 ? a.shape(ia) : 1, db = ib >= 0 ? b.shape(ib) : 1;
    if (da != db && da != 1 && db != 1)
      throw py::value_error("matmul: batch dimensions do not broadcast: argument 'a' has shape " +
                            shape_str(shape_of(a)) + ", argument 'b' has shape " + shape_str(shape_of(b)));
    batch[i] = da == 1 ? db : da;  // NumPy: a 1 broadcasts, even against 0
  }
  Shape oshape = batch;
  if (!a1) oshape.push_back(m);
  if (!b1) oshape.push_back(n);
  int64_t ld_a = 1, ld_b = 1;
  bool ta = false, tb = false;
  if (!gemm_layout(a, &ld_a, &ta)) { a = py::module_::import("numpy").attr("ascontiguousarray")(a); gemm_layout(a, &ld_a, &ta); }
  if (!gemm_layout(b, &ld_b, &tb)) { b = py::module_::import("numpy").attr("ascontiguousarray")(b); gemm_layout(b, &ld_b, &tb); }
  for (auto* arr : {&a, &b})
    for (int i = 0; i < arr->ndim() - 2; ++i)
      if (arr->strides(i) % arr->itemsize() != 0) *arr = py::module_::import("numpy").attr("ascontiguousarray")(*arr);
  py::array_t<T> result = make_out<T>(oshape, out);
  py::array res = result;
  bool tmp = !out.is_none() && (memory_overlaps(res, a) || memory_overlaps(res, b));
  py::array_t<T> target = tmp ? py::array_t<T>(std::vector<py::ssize_t>(oshape.begin(), oshape.end())) : result;
  const int64_t nbt = numel(batch);
  // Element strides of each batch dim (0 where broadcast).
  std::vector<int64_t> sa(nbatch, 0), sb(nbatch, 0);
  for (int i = 0; i < nbatch; ++i) {
    int ia = i - (nbatch - (na - 2)), ib = i - (nbatch - (nb - 2));
    if (ia >= 0 && a.shape(ia) != 1) sa[i] = a.strides(ia) / a.itemsize();
    if (ib >= 0 && b.shape(ib) != 1) sb[i] = b.strides(ib) / b.itemsize();
  }
  const T* pa = cptr<T>(a);
  const T* pb = cptr<T>(b);
  T* pc = target.mutable_data();
  {
    py::gil_scoped_release rel;
    const auto& K_ = K<T>();
    // A 2-D right operand and a row-major batched left operand whose rows are evenly spaced:
    // one big GEMM over all rows.
    bool fold = nbatch > 0 && !ta && nb == 2;
    for (int i = 0; fold && i < nbatch; ++i) {
      int64_t expect = m * ld_a;
      for (int j = i + 1; j < nbatch; ++j) expect *= batch[j];
      fold = batch[i] == 1 || sa[i] == expect;
    }
    if (nbt == 0 || m == 0 || n == 0) {
    } else if (nbatch == 0 || fold) {
      K_.gemm(ta, tb, m * nbt, n, k, T(1), pa, ld_a, pb, ld_b, T(0), pc, n, nullptr);
    } else {
      std::vector<int64_t> idx(nbatch, 0);
      for (int64_t t = 0; t < nbt; ++t) {
        int64_t oa = 0, ob = 0;
        for (int i = 0; i < nbatch; ++i) { oa += idx[i] * sa[i]; ob += idx[i] * sb[i]; }
        K_.gemm(ta, tb, m, n, k, T(1), pa + oa, ld_a, pb + ob, ld_b, T(0), pc + t * m * n, n, nullptr);
        for (int i = nbatch - 1; i >= 0; --i) {
          if (++idx[i] < batch[i]) break;
          idx[i] = 0;
        }
      }
    }
  }
  if (tmp) result.attr("__setitem__")(py::ellipsis(), target);
  return result;
}

py::array matmul(const py::object& a_obj, const py::object& b_obj, const py::object& out) {
  FloatType ft = common_float_type({{a_obj, "a"}, {b_obj, "b"}, {out, "out"}});
  py::array a = as_float_strided(a_obj, "a", ft), b = as_float_strided(b_obj, "b", ft);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    return matmul_impl<T>(a, b, out);
  });
}

// C = alpha op(A) op(B) + beta C, in place on c.
py::object gemm(const py::object& a_obj, const py::object& b_obj, const py::object& c_obj, double alpha,
                double beta, bool trans_a, bool trans_b) {
  if (!py::isinstance<py::array>(c_obj)) throw py::type_error("gemm: argument 'c' must be a numpy.ndarray");
  FloatType ft = common_float_type({{c_obj, "c"}, {a_obj, "a"}, {b_obj, "b"}});
  py::array c = py::reinterpret_borrow<py::array>(c_obj);
  py::array a = as_float_strided(a_obj, "a", ft), b = as_float_strided(b_obj, "b", ft);
  check_ndim(a, "a", 2, "(m, k)");
  check_ndim(b, "b", 2, "(k, n)");
  check_ndim(c, "c", 2, "(m, n)");
  if (!c.writeable()) throw py::value_error("gemm: argument 'c' is read-only");
  const int64_t isz = c.itemsize();
  if (!(c.strides(1) == isz || c.shape(1) <= 1) || (c.shape(0) > 1 && (c.strides(0) % isz || c.strides(0) / isz < c.shape(1))))
    throw py::value_error("gemm: argument 'c' must have contiguous rows (row-major, positive strides)");
  int64_t m = trans_a ? a.shape(1) : a.shape(0), k = trans_a ? a.shape(0) : a.shape(1);
  int64_t kb = trans_b ? b.shape(1) : b.shape(0), n = trans_b ? b.shape(0) : b.shape(1);
  if (k != kb) shape_error("b", trans_b ? "(n, " + std::to_string(k) + ")" : "(" + std::to_string(k) + ", n)", b);
  if (c.shape(0) != m || c.shape(1) != n) shape_error("c", shape_str({m, n}), c);
  if (memory_overlaps(c, a) || memory_overlaps(c, b)) throw py::value_error("gemm: 'c' must not share memory with 'a' or 'b'");
  int64_t lda = 1, ldb = 1;
  bool la = false, lb = false;
  if (!gemm_layout(a, &lda, &la)) { a = py::module_::import("numpy").attr("ascontiguousarray")(a); gemm_layout(a, &lda, &la); }
  if (!gemm_layout(b, &ldb, &lb)) { b = py::module_::import("numpy").attr("ascontiguousarray")(b); gemm_layout(b, &ldb, &lb); }
  const int64_t ldc = c.shape(0) > 1 ? c.strides(0) / isz : std::max<int64_t>(n, 1);
  dispatch_float(ft, [&](auto tag) {
    using T = decltype(tag);
    const T* pa = cptr<T>(a);
    const T* pb = cptr<T>(b);
    T* pc = ptr<T>(c);
    {
      py::gil_scoped_release rel;
      K<T>().gemm(trans_a != la, trans_b != lb, m, n, k, T(alpha), pa, lda, pb, ldb, T(beta), pc, ldc, nullptr);
    }
    return 0;
  });
  return c_obj;
}

// x (..., in), weight (out, in), bias (out,) -> (..., out)
py::array linear(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj, const py::object& act_obj) {
  Act act = parse_act(act_obj);
  FloatType ft = common_float_type({{x_obj, "x"}, {w_obj, "weight"}, {b_obj, "bias"}});
  py::array x = as_float_array(x_obj, "x", ft), w = as_float_array(w_obj, "weight", ft);
  check_ndim(w, "weight", 2, "(out_features, in_features)");
  const int64_t nout = w.shape(0), nin = w.shape(1);
  check_ndim_min(x, "x", 1, ("(..., " + std::to_string(nin) + ")").c_str());
  if (x.shape(x.ndim() - 1) != nin) shape_error("x", "(..., " + std::to_string(nin) + ")", x);
  std::optional<py::array> b;  // absent: no bias (a default py::array is an empty array, not null)
  if (!b_obj.is_none()) {
    b = as_float_array(b_obj, "bias", ft);
    check_shape(*b, "bias", {nout});
  }
  Shape oshape = shape_of(x);
  oshape.back() = nout;
  const int64_t mrows = numel(Shape(oshape.begin(), oshape.end() - 1));
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(oshape, py::none());
    Epilogue<T> ep;
    ep.bias = b ? cptr<T>(*b) : nullptr;
    ep.act = act;
    const T* px = cptr<T>(x);
    const T* pw = cptr<T>(w);
    T* py_ = y.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().gemm(false, true, mrows, nout, nin, T(1), px, std::max<int64_t>(nin, 1), pw, std::max<int64_t>(nin, 1), T(0),
                  py_, std::max<int64_t>(nout, 1), (ep.bias || act != Act::none) ? &ep : nullptr);
    }
    return y;
  });
}

// dy (..., out), x (..., in), weight (out, in) -> (dx, dweight, dbias | None)
py::tuple linear_backward(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj, bool need_bias,
                          bool need_input_grad) {
  FloatType ft = common_float_type({{dy_obj, "dy"}, {x_obj, "x"}, {w_obj, "weight"}});
  py::array dy = as_float_array(dy_obj, "dy", ft), x = as_float_array(x_obj, "x", ft), w = as_float_array(w_obj, "weight", ft);
  check_ndim(w, "weight", 2, "(out_features, in_features)");
  const int64_t nout = w.shape(0), nin = w.shape(1);
  check_ndim_min(x, "x", 1, ("(..., " + std::to_string(nin) + ")").c_str());
  if (x.shape(x.ndim() - 1) != nin) shape_error("x", "(..., " + std::to_string(nin) + ")", x);
  Shape yshape = shape_of(x);
  yshape.back() = nout;
  check_shape(dy, "dy", yshape);
  const int64_t rows = numel(Shape(yshape.begin(), yshape.end() - 1));
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::object dx = py::none(), db = py::none();
    py::array_t<T> dw = make_out<T>({nout, nin}, py::none());
    T* pdx = nullptr;
    T* pdb = nullptr;
    if (need_input_grad) { py::array_t<T> a = make_out<T>(shape_of(x), py::none()); pdx = a.mutable_data(); dx = a; }
    if (need_bias) { py::array_t<T> a = make_out<T>({nout}, py::none()); pdb = a.mutable_data(); db = a; }
    const T* pdy = cptr<T>(dy);
    const T* px = cptr<T>(x);
    const T* pw = cptr<T>(w);
    T* pdw = dw.mutable_data();
    {
      py::gil_scoped_release rel;
      const auto& K_ = K<T>();
      const int64_t ldo = std::max<int64_t>(nout, 1), ldi = std::max<int64_t>(nin, 1);
      if (pdx) K_.gemm(false, false, rows, nin, nout, T(1), pdy, ldo, pw, ldi, T(0), pdx, ldi, nullptr);
      K_.gemm(true, false, nout, nin, rows, T(1), pdy, ldo, px, ldi, T(0), pdw, ldi, nullptr);
      if (pdb) K_.col_sum(pdy, rows, nout, pdb, false);
    }
    return py::make_tuple(dx, dw, db);
  });
}

// A right operand B (k, n) — or a weight W (n, k) with trans=True, so that a @ W.T — packed
// once in the GEMM's panel layout for this ISA.
class PackedMatrix {
 public:
  PackedMatrix(const py::object& b_obj, bool trans) {
    ft_ = common_float_type({{b_obj, "b"}});
    py::array b = as_float_array(b_obj, "b", ft_);
    check_ndim(b, "b", 2, trans ? "(n, k)" : "(k, n)");
    trans_ = trans;
    k_ = trans ? b.shape(1) : b.shape(0);
    n_ = trans ? b.shape(0) : b.shape(1);
    dispatch_float(ft_, [&](auto tag) {
      using T = decltype(tag);
      int64_t elems = K<T>().packed_b_size(k_, n_);
      bytes_ = size_t(elems) * sizeof(T);
      data_.reset(alloc_pages(bytes_));
      const T* pb = cptr<T>(b);
      T* dst = static_cast<T*>(data_.get());
      int64_t ld = std::max<int64_t>(b.shape(1), 1);
      {
        py::gil_scoped_release rel;
        if (k_ > 0 && n_ > 0) K<T>().pack_b(trans, k_, n_, pb, ld, dst);
      }
      return 0;
    });
  }

  py::array matmul(const py::object& a_obj, const py::object& out, const py::object& bias_obj, const py::object& act_obj,
                   double beta) {
    Act act = parse_act(act_obj);
    FloatType ft = common_float_type({{a_obj, "a"}, {bias_obj, "bias"}});
    if (ft != ft_) {
      py::array probe = as_float_array(a_obj, "a", ft);
      throw py::type_error(std::string("PackedMatrix.matmul: argument 'a' is ") + dtype_name(probe) +
                           " but the packed matrix is " + (ft_ == FloatType::f32 ? "float32" : "float64"));
    }
    py::array a = as_float_array(a_obj, "a", ft_);
    check_ndim_min(a, "a", 1, ("(..., " + std::to_string(k_) + ")").c_str());
    if (a.shape(a.ndim() - 1) != k_) shape_error("a", "(..., " + std::to_string(k_) + ")", a);
    std::optional<py::array> bias;
    if (!bias_obj.is_none()) { bias = as_float_array(bias_obj, "bias", ft_); check_shape(*bias, "bias", {n_}); }
    Shape oshape = shape_of(a);
    oshape.back() = n_;
    if (beta != 0.0 && out.is_none()) throw py::value_error("PackedMatrix.matmul: beta != 0 needs 'out'");
    const int64_t m = numel(Shape(oshape.begin(), oshape.end() - 1));
    return dispatch_float(ft_, [&](auto tag) -> py::array {
      using T = decltype(tag);
      py::array_t<T> y = make_out<T>(oshape, out);
      if (memory_overlaps(y, a)) throw py::value_error("PackedMatrix.matmul: 'out' must not share memory with 'a'");
      Epilogue<T> ep;
      ep.bias = bias ? cptr<T>(*bias) : nullptr;
      ep.act = act;
      const T* pa = cptr<T>(a);
      T* py_ = y.mutable_data();
      const T* pb = static_cast<const T*>(data_.get());
      {
        py::gil_scoped_release rel;
        K<T>().gemm_packed(false, m, n_, k_, T(1), pa, std::max<int64_t>(k_, 1), pb, T(beta), py_, std::max<int64_t>(n_, 1),
                           (ep.bias || act != Act::none) ? &ep : nullptr);
      }
      return y;
    });
  }

  py::tuple shape() const { return py::make_tuple(k_, n_); }
  size_t nbytes() const { return bytes_; }
  py::dtype dtype() const { return ft_ == FloatType::f32 ? py::dtype::of<float>() : py::dtype::of<double>(); }

 private:
  struct Free { void operator()(void* p) const { std::free(p); } };
  std::unique_ptr<void, Free> data_;
  size_t bytes_ = 0;
  FloatType ft_ = FloatType::f32;
  bool trans_ = false;
  int64_t k_ = 0, n_ = 0;
};

}  // namespace

void bind_dense(py::module_& m) {
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out") = py::none());
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
        py::arg("trans_a") = false, py::arg("trans_b") = false);
  m.def("linear", &linear, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("activation") = py::none());
  m.def("linear_backward", &linear_backward, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("need_bias") = true,
        py::arg("need_input_grad") = true);
  py::class_<PackedMatrix>(m, "PackedMatrix")
      .def(py::init<const py::object&, bool>(), py::arg("b"), py::arg("trans") = false)
      .def("matmul", &PackedMatrix::matmul, py::arg("a"), py::arg("out") = py::none(), py::arg("bias") = py::none(),
           py::arg("activation") = py::none(), py::arg("beta") = 0.0)
      .def_property_readonly("shape", &PackedMatrix::shape)
      .def_property_readonly("nbytes", &PackedMatrix::nbytes)
      .def_property_readonly("dtype", &PackedMatrix::dtype);
}

}  // namespace seqcore
