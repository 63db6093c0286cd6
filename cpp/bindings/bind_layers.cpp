// Embedding and dropout bindings.
#include <string>

#include "bindings/common.h"

namespace seqcore {
namespace {

// ids as contiguous int64 with every value in [0, V) (ValueError naming the first bad one).
py::array checked_ids(const py::object& ids_o, int64_t V) {
  py::array ids = as_index_array(ids_o, "input");
  const int64_t* p = cptr<int64_t>(ids);
  for (int64_t t = 0, n = ids.size(); t < n; ++t)
    if (p[t] < 0 || p[t] >= V)
      throw py::value_error("argument 'input' has index " + std::to_string(p[t]) + " out of range [0, " +
                            std::to_string(V) + ")");
  return ids;
}

int64_t norm_padding(const py::object& pad_o, int64_t V) {
  if (pad_o.is_none()) return -1;
  const int64_t p = pad_o.cast<int64_t>();
  if (p < -V || p >= V)
    throw py::value_error("padding_idx must be within [-" + std::to_string(V) + ", " + std::to_string(V) + "), got " +
                          std::to_string(p));
  return p < 0 ? p + V : p;
}

py::array embedding(const py::object& ids_o, const py::object& w_o, const py::object& pad_o) {
  FloatType ft = common_float_type({{w_o, "weight"}});
  py::array w = as_float_array(w_o, "weight", ft);
  check_ndim(w, "weight", 2, "(num_embeddings, embedding_dim)");
  const int64_t V = w.shape(0), E = w.shape(1);
  norm_padding(pad_o, V);
  py::array ids = checked_ids(ids_o, V);
  Shape ys = shape_of(ids);
  ys.push_back(E);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(ys, py::none());
    const int64_t* pi = cptr<int64_t>(ids);
    const T* pw = cptr<T>(w);
    T* py_ = y.mutable_data();
    const int64_t N = ids.size();
    {
      py::gil_scoped_release rel;
      K<T>().embedding_forward(pi, N, pw, E, py_);
    }
    return y;
  });
}

py::array embedding_backward(const py::object& dy_o, const py::object& ids_o, int64_t V, const py::object& pad_o) {
  if (V < 0) throw py::value_error("num_embeddings must be >= 0");
  FloatType ft = common_float_type({{dy_o, "dy"}});
  py::array dy = as_float_array(dy_o, "dy", ft);
  const int64_t pad = norm_padding(pad_o, V);
  py::array ids = checked_ids(ids_o, V);
  Shape want = shape_of(ids);
  if (dy.ndim() != ids.ndim() + 1) shape_error("dy", shape_str(want).substr(0, shape_str(want).size() - 1) + ", E)", dy);
  for (py::ssize_t d = 0; d < ids.ndim(); ++d)
    if (dy.shape(d) != ids.shape(d)) shape_error("dy", "(*input.shape, E)", dy);
  const int64_t E = dy.shape(dy.ndim() - 1);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> dw = make_out<T>({V, E}, py::none());
    const int64_t* pi = cptr<int64_t>(ids);
    const T* pdy = cptr<T>(dy);
    T* pdw = dw.mutable_data();
    const int64_t N = ids.size();
    {
      py::gil_scoped_release rel;
      K<T>().embedding_backward(pi, N, pdy, E, V, pad, pdw);
    }
    return dw;
  });
}

py::array dropout(const py::object& x_o, double p, uint64_t seed) {
  if (!(p >= 0.0 && p < 1.0)) throw py::value_error("dropout probability must be in [0, 1), got " + std::to_string(p));
  FloatType ft = common_float_type({{x_o, "x"}});
  py::array x = as_float_array(x_o, "x", ft);
  return dispatch_float(ft, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array_t<T> y = make_out<T>(shape_of(x), py::none());
    const T* px = cptr<T>(x);
    T* py_ = y.mutable_data();
    const int64_t n = x.size();
    {
      py::gil_scoped_release rel;
      K<T>().dropout_apply(px, n, p, seed, py_);
    }
    return y;
  });
}

}  // namespace

void bind_layers(py::module_& m) {
  m.def("embedding", &embedding, py::arg("input"), py::arg("weight"), py::arg("padding_idx") = py::none());
  m.def("embedding_backward", &embedding_backward, py::arg("dy"), py::arg("input"), py::arg("num_embeddings"),
        py::arg("padding_idx") = py::none());
  m.def("dropout", &dropout, py::arg("x"), py::arg("p"), py::arg("seed"));
}

}  // namespace seqcore
