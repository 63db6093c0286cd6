// Normalization bindings. LayerNorm: x (*, F...) normalized over the trailing normalized_shape
// dims. BatchNorm: x (N, C) or (N, C, L) normalized per channel (axis 1).
#include <optional>
#include <string>

#include "bindings/common.h"

namespace seqcore {
namespace {

Shape norm_shape(const py::object& ns) {
  Shape s;
  if (py::isinstance<py::int_>(ns)) {
    s.push_back(ns.cast<int64_t>());
  } else {
    for (py::handle h : ns) s.push_back(py::reinterpret_borrow<py::object>(h).cast<int64_t>());
  }
  if (s.empty()) throw py::value_error("normalized_shape must not be empty");
  for (auto d : s)
    if (d < 1) throw py::value_error("normalized_shape entries must be >= 1, got " + shape_str(s));
  return s;
}

// (M, F) view of x for normalized_shape; raises naming 'x' when the trailing dims differ.
// The gradients a norm backward returns: dx shaped like x, dweight and dbias shaped like the
// parameters, each allocated only when asked for (None otherwise).
template <class T> struct NormGrads {
  py::object dx = py::none(), dw = py::none(), db = py::none();
  T *pdx = nullptr, *pdw = nullptr, *pdb = nullptr;
  NormGrads(const Shape& xs, const Shape& ps, bool need_input, bool need_weight, bool need_bias) {
    if (need_input) { py::array_t<T> a = make_out<T>(xs, py::none()); pdx = a.mutable_data(); dx = a; }
    if (need_weight) { py::array_t<T> a = make_out<T>(ps, py::none()); pdw = a.mutable_data(); dw = a; }
    if (need_bias) { py::array_t<T> a = make_out<T>(ps, py::none()); pdb = a.mutable_data(); db = a; }
  }
  py::tuple tuple() const { return py::make_tuple(dx, dw, db); }
};

void rows_cols(const py::array& x, const Shape& ns, int64_t* M, int64_t* F) {
  const int64_t nd = x.ndim(), k = int64_t(ns.size());
  bool ok = nd >= k;
  for (int64_t i = 0; ok && i < k; ++i) ok = x.shape(nd - k + i) == ns[i];
  if (!ok) shape_error("x", "(*, " + shape_str(ns).substr(1), x);
  *F = numel(ns);
  *M = *F ? x.size() / *F : 0;
}

py::tuple layer_norm(const py::object& x_o, const py::object& ns_o, const py::object& w_o, const py::object& b_o,
                     double eps) {
  Shape ns = norm_shape(ns_o);
  FloatType ft = common_float_type({{x_o, "x"}, {w_o, "weight"}, {b_o, "bias"}});
  py::array x = as_float_array(x_o, "x", ft);
  int64_t M, F;
  rows_cols(x, ns, &M, &F);
  std::optional<py::array> w, b;
  if (!w_o.is_none()) { w = as_float_array(w_o, "weight", ft); check_shape(*w, "weight", ns); }
  if (!b_o.is_none()) { b = as_float_array(b_o, "bias", ft); check_shape(*b, "bias", ns); }
  Shape stat = shape_of(x);
  stat.resize(stat.size() - ns.size());
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(shape_of(x), py::none());
    py::array_t<T> mean = make_out<T>(stat, py::none()), rstd = make_out<T>(stat, py::none());
    const T* px = cptr<T>(x);
    const T* pw = w ? cptr<T>(*w) : nullptr;
    const T* pb = b ? cptr<T>(*b) : nullptr;
    T* py_ = y.mutable_data();
    T* pm = mean.mutable_data();
    T* pr = rstd.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().layer_norm_forward(px, pw, pb, M, F, eps, py_, pm, pr);
    }
    return py::make_tuple(y, mean, rstd);
  });
}

py::tuple layer_norm_backward(const py::object& dy_o, const py::object& x_o, const py::object& mean_o,
                              const py::object& rstd_o, const py::object& ns_o, const py::object& w_o,
                              bool need_weight, bool need_bias, bool need_input) {
  Shape ns = norm_shape(ns_o);
  FloatType ft = common_float_type({{dy_o, "dy"}, {x_o, "x"}, {w_o, "weight"}});
  py::array dy = as_float_array(dy_o, "dy", ft), x = as_float_array(x_o, "x", ft);
  check_shape(dy, "dy", shape_of(x));
  int64_t M, F;
  rows_cols(x, ns, &M, &F);
  Shape stat = shape_of(x);
  stat.resize(stat.size() - ns.size());
  py::array mean = as_float_array(mean_o, "mean", ft), rstd = as_float_array(rstd_o, "rstd", ft);
  check_shape(mean, "mean", stat);
  check_shape(rstd, "rstd", stat);
  std::optional<py::array> w;
  if (!w_o.is_none()) { w = as_float_array(w_o, "weight", ft); check_shape(*w, "weight", ns); }
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const auto& K_ = K<T>();
    NormGrads<T> g(shape_of(x), ns, need_input, need_weight, need_bias);
    T *pdx = g.pdx, *pdw = g.pdw, *pdb = g.pdb;
    const int64_t wsize = K_.layer_norm_backward_work(M, F) + 64;
    check_alloc({wsize}, sizeof(T));
    T* work = static_cast<T*>(thread_workspace(size_t(wsize) * sizeof(T)));
    const T* pdy = cptr<T>(dy);
    const T* px = cptr<T>(x);
    const T* pm = cptr<T>(mean);
    const T* pr = cptr<T>(rstd);
    const T* pw = w ? cptr<T>(*w) : nullptr;
    {
      py::gil_scoped_release rel;
      if (M == 0) {
        for (int64_t j = 0; j < F; ++j) { if (pdw) pdw[j] = T(0); if (pdb) pdb[j] = T(0); }
      } else {
        K_.layer_norm_backward(pdy, px, pm, pr, pw, M, F, pdx, pdw, pdb, work);
      }
    }
    return g.tuple();
  });
}

// ---- BatchNorm: x (N, C) or (N, C, L) -> (N, C, L) sizes; raises naming 'x' otherwise.
void bn_sizes(const py::array& x, const char* name, int64_t* N, int64_t* C, int64_t* L) {
  if (x.ndim() != 2 && x.ndim() != 3) shape_error(name, "(N, C) or (N, C, L)", x);
  *N = x.shape(0);
  *C = x.shape(1);
  *L = x.ndim() == 3 ? x.shape(2) : 1;
}

// A per-channel (C,) input, or nothing for None.
std::optional<py::array> channel_array(const py::object& o, const char* name, FloatType ft, int64_t C) {
  if (o.is_none()) return std::nullopt;
  py::array a = as_float_array(o, name, ft);
  check_shape(a, name, {C});
  return a;
}

py::tuple batch_norm(const py::object& x_o, const py::object& rm_o, const py::object& rv_o, const py::object& w_o,
                     const py::object& b_o, bool training, double momentum, double eps) {
  FloatType ft = common_float_type(
      {{x_o, "x"}, {rm_o, "running_mean"}, {rv_o, "running_var"}, {w_o, "weight"}, {b_o, "bias"}});
  py::array x = as_float_array(x_o, "x", ft);
  int64_t N, C, L;
  bn_sizes(x, "x", &N, &C, &L);
  if (rm_o.is_none() != rv_o.is_none())
    throw py::value_error(std::string("argument '") + (rm_o.is_none() ? "running_mean" : "running_var") +
                          "' is None but '" + (rm_o.is_none() ? "running_var" : "running_mean") +
                          "' is given: pass both running statistics or neither");
  if (!training && rm_o.is_none())
    throw py::value_error("argument 'running_mean' must be given when training=False (eval mode normalizes with the "
                          "running statistics)");
  if (training && N * L <= 1)
    throw py::value_error("argument 'x': expected more than 1 value per channel when training, got input of shape " +
                          shape_str(shape_of(x)));
  if (!(eps >= 0)) throw py::value_error("eps must be >= 0, got " + std::to_string(eps));
  const Shape cs{C};
  std::optional<py::array> rm, rv;
  if (!rm_o.is_none()) {
    if (training) {  // updated in place
      rm = inplace(rm_o, "running_mean", ft, &cs);
      rv = inplace(rv_o, "running_var", ft, &cs);
    } else {
      rm = channel_array(rm_o, "running_mean", ft, C);
      rv = channel_array(rv_o, "running_var", ft, C);
    }
  }
  std::optional<py::array> w = channel_array(w_o, "weight", ft, C), b = channel_array(b_o, "bias", ft, C);
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const auto& K_ = K<T>();
    py::array_t<T> y = make_out<T>(shape_of(x), py::none());
    py::array_t<T> mean = make_out<T>(cs, py::none()), rstd = make_out<T>(cs, py::none());
    const int64_t wsize = K_.batch_norm_work(N, C, L) + 8;
    check_alloc({wsize}, sizeof(double));
    double* work = static_cast<double*>(thread_workspace(size_t(wsize) * sizeof(double)));
    const T* px = cptr<T>(x);
    const T* pw = w ? cptr<T>(*w) : nullptr;
    const T* pb = b ? cptr<T>(*b) : nullptr;
    // Written only in training (checked writeable above); eval reads them (may be read-only).
    T* prm = rm ? const_cast<T*>(cptr<T>(*rm)) : nullptr;
    T* prv = rv ? const_cast<T*>(cptr<T>(*rv)) : nullptr;
    T* py_ = y.mutable_data();
    T* pm = mean.mutable_data();
    T* pr = rstd.mutable_data();
    {
      py::gil_scoped_release rel;
      K_.batch_norm_forward(px, pw, pb, prm, prv, N, C, L, training, momentum, eps, py_, pm, pr, work);
    }
    return py::make_tuple(y, mean, rstd);
  });
}

py::tuple batch_norm_backward(const py::object& dy_o, const py::object& x_o, const py::object& mean_o,
                              const py::object& rstd_o, const py::object& w_o, bool training, bool need_weight,
                              bool need_bias, bool need_input) {
  FloatType ft = common_float_type({{dy_o, "dy"}, {x_o, "x"}, {mean_o, "mean"}, {rstd_o, "rstd"}, {w_o, "weight"}});
  py::array dy = as_float_array(dy_o, "dy", ft), x = as_float_array(x_o, "x", ft);
  int64_t N, C, L;
  bn_sizes(x, "x", &N, &C, &L);
  check_shape(dy, "dy", shape_of(x));
  py::array mean = as_float_array(mean_o, "mean", ft), rstd = as_float_array(rstd_o, "rstd", ft);
  const Shape cs{C};
  check_shape(mean, "mean", cs);
  check_shape(rstd, "rstd", cs);
  std::optional<py::array> w = channel_array(w_o, "weight", ft, C);
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const auto& K_ = K<T>();
    NormGrads<T> g(shape_of(x), cs, need_input, need_weight, need_bias);
    T *pdx = g.pdx, *pdw = g.pdw, *pdb = g.pdb;
    const int64_t wsize = K_.batch_norm_work(N, C, L) + 8;
    check_alloc({wsize}, sizeof(double));
    double* work = static_cast<double*>(thread_workspace(size_t(wsize) * sizeof(double)));
    const T* pdy = cptr<T>(dy);
    const T* px = cptr<T>(x);
    const T* pm = cptr<T>(mean);
    const T* pr = cptr<T>(rstd);
    const T* pw = w ? cptr<T>(*w) : nullptr;
    {
      py::gil_scoped_release rel;
      K_.batch_norm_backward(pdy, px, pm, pr, pw, N, C, L, training, pdx, pdw, pdb, work);
    }
    return g.tuple();
  });
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("normalized_shape"), py::arg("weight") = py::none(),
        py::arg("bias") = py::none(), py::arg("eps") = 1e-5);
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("normalized_shape"), py::arg("weight") = py::none(), py::arg("need_weight") = true,
        py::arg("need_bias") = true, py::arg("need_input") = true);
  m.def("batch_norm", &batch_norm, py::arg("x"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("training") = false,
        py::arg("momentum") = 0.1, py::arg("eps") = 1e-5);
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("weight") = py::none(), py::arg("training") = true, py::arg("need_weight") = true,
        py::arg("need_bias") = true, py::arg("need_input") = true);
}

}  // namespace seqcore
