// Training bindings: fused optimizer steps on the caller's arrays (in place), gradient norms
// and in-place scaling/clamping for clipping, the cross-entropy kernels.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "bindings/common.h"

namespace seqcore {
namespace {

FloatType param_type(const py::object& p) {
  if (!py::isinstance<py::array>(p)) throw py::type_error("argument 'param' must be a numpy.ndarray (it is updated in place)");
  return common_float_type({{p, "param"}});
}

void check_lr(double lr) {
  if (!(lr >= 0)) throw py::value_error("lr must be >= 0, got " + std::to_string(lr));
}

void adam_step(const py::object& p_o, const py::object& g_o, const py::object& m_o, const py::object& v_o,
               const py::object& vmax_o, int64_t step, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool amsgrad, bool decoupled, bool maximize) {
  check_lr(lr);
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
  if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
    throw py::value_error("betas must be in [0, 1)");
  FloatType ft = param_type(p_o);
  py::array p = inplace(p_o, "param", ft, nullptr);
  const Shape shp = shape_of(p);
  py::array g = as_float_array(g_o, "grad", ft);
  check_shape(g, "grad", shp);
  py::array m = inplace(m_o, "exp_avg", ft, &shp), v = inplace(v_o, "exp_avg_sq", ft, &shp);
  py::array vmax;
  if (amsgrad) vmax = inplace(vmax_o, "max_exp_avg_sq", ft, &shp);
  AdamHyper h{lr, beta1, beta2, eps, weight_decay, step, amsgrad, decoupled, maximize};
  dispatch_float(ft, [&](auto tag) {
    using T = decltype(tag);
    T* pp = ptr<T>(p);
    const T* pg = cptr<T>(g);
    T* pm = ptr<T>(m);
    T* pv = ptr<T>(v);
    T* px = amsgrad ? ptr<T>(vmax) : nullptr;
    const int64_t n = p.size();
    py::gil_scoped_release rel;
    K<T>().adam_step(pp, pg, pm, pv, px, n, h);
    return 0;
  });
}

void sgd_step(const py::object& p_o, const py::object& g_o, const py::object& buf_o, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step) {
  check_lr(lr);
  FloatType ft = param_type(p_o);
  py::array p = inplace(p_o, "param", ft, nullptr);
  const Shape shp = shape_of(p);
  py::array g = as_float_array(g_o, "grad", ft);
  check_shape(g, "grad", shp);
  py::array buf;
  if (momentum != 0) buf = inplace(buf_o, "momentum_buffer", ft, &shp);
  SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step};
  dispatch_float(ft, [&](auto tag) {
    using T = decltype(tag);
    T* pp = ptr<T>(p);
    const T* pg = cptr<T>(g);
    T* pb = momentum != 0 ? ptr<T>(buf) : nullptr;
    const int64_t n = p.size();
    py::gil_scoped_release rel;
    K<T>().sgd_step(pp, pg, pb, n, h);
    return 0;
  });
}

void rmsprop_step(const py::object& p_o, const py::object& g_o, const py::object& sq_o, const py::object& ga_o,
                  const py::object& buf_o, double lr, double alpha, double eps, double weight_decay, double momentum,
                  bool centered, bool maximize) {
  check_lr(lr);
  FloatType ft = param_type(p_o);
  py::array p = inplace(p_o, "param", ft, nullptr);
  const Shape shp = shape_of(p);
  py::array g = as_float_array(g_o, "grad", ft);
  check_shape(g, "grad", shp);
  py::array sq = inplace(sq_o, "square_avg", ft, &shp), ga, buf;
  if (centered) ga = inplace(ga_o, "grad_avg", ft, &shp);
  if (momentum > 0) buf = inplace(buf_o, "momentum_buffer", ft, &shp);
  RmspropHyper h{lr, alpha, eps, weight_decay, momentum, centered, maximize};
  dispatch_float(ft, [&](auto tag) {
    using T = decltype(tag);
    T* pp = ptr<T>(p);
    const T* pg = cptr<T>(g);
    T* ps = ptr<T>(sq);
    T* pga = centered ? ptr<T>(ga) : nullptr;
    T* pb = momentum > 0 ? ptr<T>(buf) : nullptr;
    const int64_t n = p.size();
    py::gil_scoped_release rel;
    K<T>().rmsprop_step(pp, pg, ps, pga, pb, n, h);
    return 0;
  });
}

// Arrays of one float dtype from a list (read-only use: any strides, converted once).
struct TensorList {
  FloatType ft = FloatType::f32;
  std::vector<py::array> arrs;
};

TensorList tensor_list(const py::iterable& xs, const char* name, bool writeable) {
  TensorList t;
  std::vector<py::object> objs;
  for (py::handle h : xs) objs.push_back(py::reinterpret_borrow<py::object>(h));
  int found = -1;
  for (size_t i = 0; i < objs.size(); ++i) {
    std::string nm = std::string(name) + "[" + std::to_string(i) + "]";
    FloatType f = common_float_type({{objs[i], nm.c_str()}});
    int fi = f == FloatType::f32 ? 0 : 1;
    if (found >= 0 && fi != found)
      throw py::type_error(std::string("mixed float dtypes in '") + name + "': all must be float32 or all float64");
    found = fi;
    t.arrs.push_back(writeable ? inplace(objs[i], nm.c_str(), f, nullptr) : as_float_array(objs[i], nm.c_str(), f));
  }
  t.ft = found == 1 ? FloatType::f64 : FloatType::f32;
  return t;
}

// The p-norm of all arrays taken together (p = inf: max |x|), reduced in a fixed order.
double total_norm(const py::iterable& xs, double p) {
  if (!(p > 0)) throw py::value_error("norm_type must be > 0 (or inf), got " + std::to_string(p));
  TensorList t = tensor_list(xs, "tensors", false);
  if (t.arrs.empty()) return 0.0;
  return dispatch_float(t.ft, [&](auto tag) -> double {
    using T = decltype(tag);
    std::vector<const T*> ptrs;
    std::vector<int64_t> ns;
    int64_t items = 0;
    for (auto& a : t.arrs) {
      ptrs.push_back(cptr<T>(a));
      ns.push_back(a.size());
      items += (a.size() + (1 << 14) - 1) >> 14;
    }
    std::vector<double> part(size_t(std::max<int64_t>(items, 1)), 0.0);
    {
      py::gil_scoped_release rel;
      K<T>().norm_partials(ptrs.data(), ns.data(), int64_t(ptrs.size()), p, part.data());
    }
    if (std::isinf(p)) {
      double m = 0;
      for (int64_t i = 0; i < items; ++i) {
        if (std::isnan(part[i])) return std::numeric_limits<double>::quiet_NaN();
        m = std::max(m, part[i]);
      }
      return m;
    }
    double s = 0;
    for (int64_t i = 0; i < items; ++i) s += part[i];
    return p == 2 ? std::sqrt(s) : std::pow(s, 1.0 / p);
  });
}

void scale_all(const py::iterable& xs, double factor) {
  TensorList t = tensor_list(xs, "tensors", true);
  dispatch_float(t.ft, [&](auto tag) {
    using T = decltype(tag);
    for (auto& a : t.arrs) {
      T* px = ptr<T>(a);
      const int64_t n = a.size();
      py::gil_scoped_release rel;
      K<T>().scale_inplace(px, n, T(factor));
    }
    return 0;
  });
}

void clamp_all(const py::iterable& xs, double clip_value) {
  if (!(clip_value >= 0)) throw py::value_error("clip_value must be >= 0");
  TensorList t = tensor_list(xs, "tensors", true);
  dispatch_float(t.ft, [&](auto tag) {
    using T = decltype(tag);
    for (auto& a : t.arrs) {
      T* px = ptr<T>(a);
      const int64_t n = a.size();
      py::gil_scoped_release rel;
      K<T>().clamp_inplace(px, n, T(-clip_value), T(clip_value));
    }
    return 0;
  });
}

struct CeInputs {
  FloatType ft;
  py::array x, t;
  int64_t N, C;
};

CeInputs ce_inputs(const py::object& x_o, const py::object& t_o, int64_t ignore_index) {
  CeInputs c;
  c.ft = common_float_type({{x_o, "logits"}});
  c.x = as_float_array(x_o, "logits", c.ft);
  check_ndim(c.x, "logits", 2, "(N, C)");
  c.N = c.x.shape(0);
  c.C = c.x.shape(1);
  c.t = as_index_array(t_o, "target");
  check_shape(c.t, "target", {c.N});
  const int64_t* pt = static_cast<const int64_t*>(c.t.data());
  for (int64_t i = 0; i < c.N; ++i)
    if (pt[i] != ignore_index && (pt[i] < 0 || pt[i] >= c.C))
      throw py::value_error("target[" + std::to_string(i) + "] = " + std::to_string(pt[i]) + " is outside [0, " +
                            std::to_string(c.C) + ") and is not ignore_index");
  if (c.C == 0 && c.N > 0) throw py::value_error("logits must have at least one class");
  return c;
}

py::tuple ce_forward(const py::object& x_o, const py::object& t_o, int64_t ignore_index, double smoothing) {
  if (!(smoothing >= 0 && smoothing <= 1)) throw py::value_error("label_smoothing must be in [0, 1]");
  CeInputs c = ce_inputs(x_o, t_o, ignore_index);
  return dispatch_float(c.ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array_t<T> loss = make_out<T>({c.N}, py::none());
    py::array_t<double> lse = make_out<double>({c.N}, py::none());  // float64 for any T
    const T* px = cptr<T>(c.x);
    const int64_t* pt = static_cast<const int64_t*>(c.t.data());
    T* pl = loss.mutable_data();
    double* pe = lse.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().cross_entropy_forward(px, pt, c.N, c.C, ignore_index, smoothing, pl, pe);
    }
    return py::make_tuple(loss, lse);
  });
}

py::array ce_backward(const py::object& x_o, const py::object& t_o, const py::object& lse_o, const py::object& s_o,
                      int64_t ignore_index, double smoothing) {
  CeInputs c = ce_inputs(x_o, t_o, ignore_index);
  py::array lse = as_float_array(lse_o, "lse", FloatType::f64), sc = as_float_array(s_o, "row_scale", c.ft);
  check_shape(lse, "lse", {c.N});
  check_shape(sc, "row_scale", {c.N});
  return dispatch_float(c.ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> dx = make_out<T>({c.N, c.C}, py::none());
    const T* px = cptr<T>(c.x);
    const int64_t* pt = static_cast<const int64_t*>(c.t.data());
    const double* pe = cptr<double>(lse);
    const T* ps = cptr<T>(sc);
    T* pd = dx.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().cross_entropy_backward(px, pt, pe, ps, c.N, c.C, ignore_index, smoothing, pd);
    }
    return dx;
  });
}

}  // namespace

void bind_training(py::module_& m) {
  m.def("adam_step", &adam_step, py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("max_exp_avg_sq"), py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("amsgrad"), py::arg("decoupled"), py::arg("maximize"));
  m.def("sgd_step", &sgd_step, py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("lr"),
        py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("first_step"));
  m.def("rmsprop_step", &rmsprop_step, py::arg("param"), py::arg("grad"), py::arg("square_avg"), py::arg("grad_avg"),
        py::arg("momentum_buffer"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("momentum"), py::arg("centered"), py::arg("maximize"));
  m.def("total_norm", &total_norm, py::arg("tensors"), py::arg("norm_type") = 2.0);
  m.def("scale_", &scale_all, py::arg("tensors"), py::arg("factor"));
  m.def("clamp_", &clamp_all, py::arg("tensors"), py::arg("clip_value"));
  m.def("cross_entropy_forward", &ce_forward, py::arg("logits"), py::arg("target"), py::arg("ignore_index"),
        py::arg("label_smoothing"));
  m.def("cross_entropy_backward", &ce_backward, py::arg("logits"), py::arg("target"), py::arg("lse"),
        py::arg("row_scale"), py::arg("ignore_index"), py::arg("label_smoothing"));
}

}  // namespace seqcore
