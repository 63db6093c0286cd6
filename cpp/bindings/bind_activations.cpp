// Activation bindings: one function per op (forward and backward), prelu, softmax.
#include <cstring>
#include <string>

#include "bindings/common.h"

namespace seqcore {
namespace {

py::array unary_fwd(Unary op, double param, const py::object& x_obj, const py::object& out) {
  FloatType ft = common_float_type({{x_obj, "x"}, {out, "out"}});
  py::array x = as_float_array(x_obj, "x", ft);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(shape_of(x), out);
    // In place (out is x, element for element) is fine for an elementwise kernel; any other
    // overlap goes through a temporary.
    const bool partial = memory_overlaps(y, x) && y.data() != x.data();
    py::array_t<T> dst = partial ? make_out<T>(shape_of(x), py::none()) : y;
    const T* px = cptr<T>(x);
    T* pd = dst.mutable_data();
    const int64_t n = x.size();
    {
      py::gil_scoped_release rel;
      K<T>().unary_forward(op, T(param), px, pd, n);
    }
    if (partial) std::memcpy(y.mutable_data(), pd, size_t(n) * sizeof(T));
    return y;
  });
}

py::array unary_bwd(Unary op, double param, const py::object& dy_obj, const py::object& s_obj, const char* s_name) {
  FloatType ft = common_float_type({{dy_obj, "dy"}, {s_obj, s_name}});
  py::array dy = as_float_array(dy_obj, "dy", ft), s = as_float_array(s_obj, s_name, ft);
  check_shape(s, s_name, shape_of(dy));
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> dx = make_out<T>(shape_of(dy), py::none());
    const T* pdy = cptr<T>(dy);
    const T* ps = cptr<T>(s);
    T* pdx = dx.mutable_data();
    const int64_t n = dy.size();
    {
      py::gil_scoped_release rel;
      K<T>().unary_backward(op, T(param), pdy, ps, pdx, n);
    }
    return dx;
  });
}

Unary gelu_kind(const std::string& approximate) {
  if (approximate == "none") return Unary::gelu;
  if (approximate == "tanh") return Unary::gelu_tanh;
  throw py::value_error("gelu: approximate must be 'none' or 'tanh', got '" + approximate + "'");
}

// x viewed as (outer, c, inner) for PReLU: channel axis 1 when x.ndim >= 2.
void prelu_dims(const py::array& x, const py::array& w, int64_t* outer, int64_t* c, int64_t* inner) {
  check_ndim(w, "weight", 1, "(num_parameters,)");
  const int64_t nw = w.shape(0);
  const int64_t channels = x.ndim() >= 2 ? x.shape(1) : 1;
  if (nw != 1 && nw != channels)
    shape_error("weight", "(1,) or (" + std::to_string(channels) + ",) (channels = x.shape[1])", w);
  if (x.ndim() < 2) { *outer = 1; *c = 1; *inner = x.size(); return; }
  *outer = x.shape(0);
  *c = nw == 1 ? 1 : channels;
  *inner = x.size() / std::max<int64_t>(*outer * *c, 1);
  if (*outer * *c == 0) *inner = 0;
}

py::array prelu(const py::object& x_obj, const py::object& w_obj) {
  FloatType ft = common_float_type({{x_obj, "x"}, {w_obj, "weight"}});
  py::array x = as_float_array(x_obj, "x", ft), w = as_float_array(w_obj, "weight", ft);
  int64_t outer, c, inner;
  prelu_dims(x, w, &outer, &c, &inner);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(shape_of(x), py::none());
    const T* px = cptr<T>(x);
    const T* pw = cptr<T>(w);
    T* py_ = y.mutable_data();
    {
      py::gil_scoped_release rel;
      if (x.size() > 0) K<T>().prelu_forward(px, pw, py_, outer, c, inner);
    }
    return y;
  });
}

py::tuple prelu_backward(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj) {
  FloatType ft = common_float_type({{dy_obj, "dy"}, {x_obj, "x"}, {w_obj, "weight"}});
  py::array dy = as_float_array(dy_obj, "dy", ft), x = as_float_array(x_obj, "x", ft), w = as_float_array(w_obj, "weight", ft);
  check_shape(dy, "dy", shape_of(x));
  int64_t outer, c, inner;
  prelu_dims(x, w, &outer, &c, &inner);
  return dispatch_float(ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array_t<T> dx = make_out<T>(shape_of(x), py::none());
    py::array_t<T> dw = make_out<T>(shape_of(w), py::none());
    const T* pdy = cptr<T>(dy);
    const T* px = cptr<T>(x);
    const T* pw = cptr<T>(w);
    T* pdx = dx.mutable_data();
    T* pdw = dw.mutable_data();
    const int64_t nw = w.size();
    {
      py::gil_scoped_release rel;
      if (x.size() > 0) {
        K<T>().prelu_backward(pdy, px, pw, pdx, pdw, outer, c, inner);
      } else {
        for (int64_t i = 0; i < nw; ++i) pdw[i] = T(0);
      }
    }
    return py::make_tuple(dx, dw);
  });
}

int64_t norm_axis(int64_t axis, int64_t ndim, const char* fn) {
  if (axis < -ndim || axis >= ndim || ndim == 0)
    throw py::value_error(std::string(fn) + ": axis " + std::to_string(axis) + " is out of bounds for an array of dimension " +
                          std::to_string(ndim));
  return axis < 0 ? axis + ndim : axis;
}

void axis_dims(const py::array& x, int64_t axis, int64_t* outer, int64_t* n, int64_t* inner) {
  *outer = 1; *inner = 1;
  for (int64_t i = 0; i < axis; ++i) *outer *= x.shape(i);
  *n = x.shape(axis);
  for (int64_t i = axis + 1; i < x.ndim(); ++i) *inner *= x.shape(i);
}

py::array softmax(const py::object& x_obj, int64_t axis, bool log) {
  const char* fn = log ? "log_softmax" : "softmax";
  FloatType ft = common_float_type({{x_obj, "x"}});
  py::array x = as_float_array(x_obj, "x", ft);
  int64_t ax = norm_axis(axis, x.ndim(), fn), outer, n, inner;
  axis_dims(x, ax, &outer, &n, &inner);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(shape_of(x), py::none());
    const T* px = cptr<T>(x);
    T* py_ = y.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().softmax_forward(log, px, py_, outer, n, inner);
    }
    return y;
  });
}

py::array softmax_backward(const py::object& dy_obj, const py::object& y_obj, int64_t axis, bool log) {
  const char* fn = log ? "log_softmax_backward" : "softmax_backward";
  FloatType ft = common_float_type({{dy_obj, "dy"}, {y_obj, "y"}});
  py::array dy = as_float_array(dy_obj, "dy", ft), y = as_float_array(y_obj, "y", ft);
  check_shape(y, "y", shape_of(dy));
  int64_t ax = norm_axis(axis, dy.ndim(), fn), outer, n, inner;
  axis_dims(dy, ax, &outer, &n, &inner);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> dx = make_out<T>(shape_of(dy), py::none());
    const T* pdy = cptr<T>(dy);
    const T* py_ = cptr<T>(y);
    T* pdx = dx.mutable_data();
    {
      py::gil_scoped_release rel;
      K<T>().softmax_backward(log, pdy, py_, pdx, outer, n, inner);
    }
    return dx;
  });
}

}  // namespace

void bind_activations(py::module_& m) {
  struct Op { const char* name; Unary op; const char* saved; };
  static const Op ops[] = {
      {"tanh", Unary::tanh, "y"},       {"sigmoid", Unary::sigmoid, "y"}, {"relu", Unary::relu, "x"},
      {"silu", Unary::silu, "x"},       {"exp", Unary::exp, "y"},         {"erf", Unary::erf, "x"},
  };
  for (const Op& o : ops) {
    Unary op = o.op;
    m.def(o.name, [op](const py::object& x, const py::object& out) { return unary_fwd(op, 0.0, x, out); },
          py::arg("x"), py::arg("out") = py::none());
    const char* saved = o.saved;
    m.def((std::string(o.name) + "_backward").c_str(),
          [op, saved](const py::object& dy, const py::object& s) { return unary_bwd(op, 0.0, dy, s, saved); },
          py::arg("dy"), py::arg(saved));
  }
  m.def("leaky_relu", [](const py::object& x, double slope, const py::object& out) {
    return unary_fwd(Unary::leaky_relu, slope, x, out);
  }, py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("out") = py::none());
  m.def("leaky_relu_backward", [](const py::object& dy, const py::object& x, double slope) {
    return unary_bwd(Unary::leaky_relu, slope, dy, x, "x");
  }, py::arg("dy"), py::arg("x"), py::arg("negative_slope") = 0.01);
  m.def("gelu", [](const py::object& x, const std::string& approximate, const py::object& out) {
    return unary_fwd(gelu_kind(approximate), 0.0, x, out);
  }, py::arg("x"), py::arg("approximate") = "none", py::arg("out") = py::none());
  m.def("gelu_backward", [](const py::object& dy, const py::object& x, const std::string& approximate) {
    return unary_bwd(gelu_kind(approximate), 0.0, dy, x, "x");
  }, py::arg("dy"), py::arg("x"), py::arg("approximate") = "none");
  m.def("prelu", &prelu, py::arg("x"), py::arg("weight"));
  m.def("prelu_backward", &prelu_backward, py::arg("dy"), py::arg("x"), py::arg("weight"));
  m.def("softmax", [](const py::object& x, int64_t axis) { return softmax(x, axis, false); }, py::arg("x"), py::arg("axis") = -1);
  m.def("log_softmax", [](const py::object& x, int64_t axis) { return softmax(x, axis, true); }, py::arg("x"), py::arg("axis") = -1);
  m.def("softmax_backward", [](const py::object& dy, const py::object& y, int64_t axis) {
    return softmax_backward(dy, y, axis, false);
  }, py::arg("dy"), py::arg("y"), py::arg("axis") = -1);
  m.def("log_softmax_backward", [](const py::object& dy, const py::object& y, int64_t axis) {
    return softmax_backward(dy, y, axis, true);
  }, py::arg("dy"), py::arg("y"), py::arg("axis") = -1);
}

}  // namespace seqcore
