// Recurrent bindings: whole-sequence forward/backward for one layer and one direction.
// The context returned by forward keeps what backward needs (activations saved by the
// kernel, references to x and the weights).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "bindings/common.h"

namespace seqcore {
namespace {

struct CellInfo {
  Cell cell;
  int G;
  const char* name;
};

CellInfo parse_cell(const std::string& mode) {
  if (mode == "rnn_tanh") return {Cell::rnn_tanh, 1, "rnn"};
  if (mode == "rnn_relu") return {Cell::rnn_relu, 1, "rnn"};
  if (mode == "lstm") return {Cell::lstm, 4, "lstm"};
  if (mode == "gru") return {Cell::gru, 3, "gru"};
  throw py::value_error("mode must be 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru', got '" + mode + "'");
}

class RecurrentContext {
 public:
  CellInfo ci{};
  FloatType ft = FloatType::f32;
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;  // P: projection size (0: none)
  bool reverse = false, has_bias = false;
  py::object lengths = py::none();  // int64 (B,) or None
  py::array x, w_ih, w_hh;
  py::object w_hr = py::none();
  py::object gates = py::none(), states = py::none(), cells = py::none(), hn = py::none(), htilde = py::none();
  int64_t HS() const { return P ? P : H; }  // width of the recurrent state h
};

struct Checked {
  CellInfo ci;
  FloatType ft;
  py::array x, w_ih, w_hh;
  std::optional<py::array> h0, c0, b_ih, b_hh, w_hr;  // absent: zeros / no bias / no projection
  py::object lengths = py::none();
  int64_t T, B, I, H, P = 0;
};

Checked check_inputs(const std::string& mode, const py::object& x_o, const py::object& h0_o, const py::object& c0_o,
                     const py::object& wih_o, const py::object& whh_o, const py::object& bih_o, const py::object& bhh_o,
                     const py::object& len_o, const py::object& whr_o) {
  Checked c;
  c.ci = parse_cell(mode);
  const char* fn = c.ci.name;
  if (c.ci.cell != Cell::lstm && !c0_o.is_none())
    throw py::value_error(std::string(fn) + ": c0 is only for LSTM");
  if (c.ci.cell != Cell::lstm && !whr_o.is_none())
    throw py::value_error(std::string(fn) + ": w_hr (a projection) is only for LSTM");
  c.ft = common_float_type({{x_o, "x"}, {wih_o, "w_ih"}, {whh_o, "w_hh"}, {h0_o, "h0"}, {c0_o, "c0"},
                            {bih_o, "b_ih"}, {bhh_o, "b_hh"}, {whr_o, "w_hr"}});
  c.x = as_float_array(x_o, "x", c.ft);
  c.w_ih = as_float_array(wih_o, "w_ih", c.ft);
  c.w_hh = as_float_array(whh_o, "w_hh", c.ft);
  if (!whr_o.is_none()) {  // LSTM with a projection: w_hr (P, H), w_hh (4H, P)
    c.w_hr = as_float_array(whr_o, "w_hr", c.ft);
    check_ndim(*c.w_hr, "w_hr", 2, "(proj_size, hidden_size)");
    c.P = c.w_hr->shape(0);
    c.H = c.w_hr->shape(1);
    if (c.P < 1 || c.P >= c.H) shape_error("w_hr", "(proj_size, hidden_size) with 1 <= proj_size < hidden_size", *c.w_hr);
    check_shape(c.w_hh, "w_hh", {c.ci.G * c.H, c.P});
  } else {
    check_ndim(c.w_hh, "w_hh", 2, "(G*hidden_size, hidden_size)");
    c.H = c.w_hh.shape(1);
    if (c.H < 1 || c.w_hh.shape(0) != c.ci.G * c.H)
      shape_error("w_hh", "(" + std::to_string(c.ci.G) + "*H, H) with H >= 1", c.w_hh);
  }
  const int64_t GH = c.ci.G * c.H;
  check_ndim(c.w_ih, "w_ih", 2, ("(" + std::to_string(GH) + ", input_size)").c_str());
  if (c.w_ih.shape(0) != GH || c.w_ih.shape(1) < 1) shape_error("w_ih", "(" + std::to_string(GH) + ", input_size >= 1)", c.w_ih);
  c.I = c.w_ih.shape(1);
  check_ndim(c.x, "x", 3, ("(T, B, " + std::to_string(c.I) + ")").c_str());
  if (c.x.shape(2) != c.I) shape_error("x", "(T, B, " + std::to_string(c.I) + ")", c.x);
  c.T = c.x.shape(0);
  c.B = c.x.shape(1);
  const Shape state{c.B, c.P ? c.P : c.H}, cstate{c.B, c.H};
  if (!h0_o.is_none()) { c.h0 = as_float_array(h0_o, "h0", c.ft); check_shape(*c.h0, "h0", state); }
  if (!c0_o.is_none()) { c.c0 = as_float_array(c0_o, "c0", c.ft); check_shape(*c.c0, "c0", cstate); }
  if (!bih_o.is_none()) { c.b_ih = as_float_array(bih_o, "b_ih", c.ft); check_shape(*c.b_ih, "b_ih", {GH}); }
  if (!bhh_o.is_none()) { c.b_hh = as_float_array(bhh_o, "b_hh", c.ft); check_shape(*c.b_hh, "b_hh", {GH}); }
  if (!len_o.is_none()) {
    py::array l = as_index_array(len_o, "lengths");
    check_shape(l, "lengths", {c.B});
    const int64_t* p = static_cast<const int64_t*>(l.data());
    for (int64_t b = 0; b < c.B; ++b)
      if (p[b] < 1 || p[b] > c.T)
        throw py::value_error("lengths[" + std::to_string(b) + "] = " + std::to_string(p[b]) +
                              " is outside [1, T] with T = " + std::to_string(c.T));
    c.lengths = l;
  }
  return c;
}

RecurrentShape shape_of(const Checked& c, bool reverse) {
  const int64_t* len = c.lengths.is_none() ? nullptr : static_cast<const int64_t*>(py::array(c.lengths).data());
  return RecurrentShape{c.ci.cell, c.T, c.B, c.I, c.H, reverse, len, c.P};
}

template <class T> const T* opt(const std::optional<py::array>& a) { return a ? cptr<T>(*a) : nullptr; }

py::tuple recurrent_forward(const std::string& mode, const py::object& x_o, const py::object& h0_o, const py::object& c0_o,
                            const py::object& wih_o, const py::object& whh_o, const py::object& bih_o,
                            const py::object& bhh_o, const py::object& len_o, bool reverse, bool training,
                            const py::object& whr_o) {
  Checked c = check_inputs(mode, x_o, h0_o, c0_o, wih_o, whh_o, bih_o, bhh_o, len_o, whr_o);
  const int64_t HS = c.P ? c.P : c.H;
  const bool lstm = c.ci.cell == Cell::lstm, gru = c.ci.cell == Cell::gru;
  return dispatch_float(c.ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const auto& K_ = K<T>();
    RecurrentShape s = shape_of(c, reverse);
    const int64_t N = K_.recurrent_gate_cols(c.ci.cell, c.H);
    check_alloc({c.T, c.B, N}, sizeof(T));
    const int64_t wsize = K_.recurrent_workspace_size(s, training, false);
    check_alloc({wsize}, sizeof(T));
    T* work = static_cast<T*>(thread_workspace(size_t(wsize) * sizeof(T)));
    py::array_t<T> h_n = make_out<T>({c.B, HS}, py::none());
    py::object c_n = py::none();
    RecurrentForwardArgs<T> a;
    a.x = cptr<T>(c.x); a.h0 = opt<T>(c.h0); a.c0 = opt<T>(c.c0);
    a.w_ih = cptr<T>(c.w_ih); a.w_hh = cptr<T>(c.w_hh); a.b_ih = opt<T>(c.b_ih); a.b_hh = opt<T>(c.b_hh);
    a.w_hr = opt<T>(c.w_hr);
    a.h_n = h_n.mutable_data();
    a.work = work;
    if (lstm) { py::array_t<T> cn = make_out<T>({c.B, c.H}, py::none()); a.c_n = cn.mutable_data(); c_n = cn; }
    py::object y;
    auto ctx = std::make_unique<RecurrentContext>();
    py::object keep_gates;  // RNN's gate buffer is only needed during forward
    if (training) {
      py::array_t<T> gates = make_out<T>({c.T, c.B, N}, py::none());
      py::array_t<T> states = make_out<T>({c.T + 1, c.B, HS}, py::none());
      a.gates = gates.mutable_data();
      a.states = states.mutable_data();
      if (lstm) { py::array_t<T> cells = make_out<T>({c.T + 1, c.B, c.H}, py::none()); a.cells = cells.mutable_data(); ctx->cells = cells; }
      if (gru) { py::array_t<T> hn = make_out<T>({c.T, c.B, c.H}, py::none()); a.hn = hn.mutable_data(); ctx->hn = hn; }
      if (c.P) { py::array_t<T> ht = make_out<T>({c.T, c.B, c.H}, py::none()); a.htilde = ht.mutable_data(); ctx->htilde = ht; }
      keep_gates = gates;
      if (c.ci.cell != Cell::rnn_tanh && c.ci.cell != Cell::rnn_relu) ctx->gates = gates;
      ctx->states = states;
      if (c.lengths.is_none() && !reverse) {
        y = states.attr("__getitem__")(py::slice(1, c.T + 1, 1));  // h_1..h_T: the outputs themselves
        a.y = a.states + c.B * HS;
      }
    }
    if (!y) { py::array_t<T> ya = make_out<T>({c.T, c.B, HS}, py::none()); a.y = ya.mutable_data(); y = ya; }
    {
      py::gil_scoped_release rel;
      K_.recurrent_forward(s, a);
    }
    py::object ctx_obj = py::none();
    if (training) {
      ctx->ci = c.ci; ctx->ft = c.ft; ctx->T = c.T; ctx->B = c.B; ctx->I = c.I; ctx->H = c.H;
      ctx->reverse = reverse; ctx->has_bias = bool(c.b_ih) || bool(c.b_hh);
      ctx->lengths = c.lengths; ctx->x = c.x; ctx->w_ih = c.w_ih; ctx->w_hh = c.w_hh;
      ctx->P = c.P;
      if (c.w_hr) ctx->w_hr = *c.w_hr;
      ctx_obj = py::cast(std::move(ctx));
    }
    return py::make_tuple(y, h_n, c_n, ctx_obj);
  });
}

py::tuple recurrent_backward(RecurrentContext& ctx, const py::object& dy_o, const py::object& dhn_o, const py::object& dcn_o,
                             bool need_norms, bool need_input_grad) {
  const char* fn = ctx.ci.name;
  if (ctx.ci.cell != Cell::lstm && !dcn_o.is_none()) throw py::value_error(std::string(fn) + ": dc_n is only for LSTM");
  const Shape yshape{ctx.T, ctx.B, ctx.HS()}, state{ctx.B, ctx.HS()}, cstate{ctx.B, ctx.H};
  std::optional<py::array> dy, dhn, dcn;
  FloatType ft = common_float_type({{dy_o, "dy"}, {dhn_o, "dh_n"}, {dcn_o, "dc_n"}});
  bool any = !dy_o.is_none() || !dhn_o.is_none() || !dcn_o.is_none();
  if (any && ft != ctx.ft)
    throw py::type_error(std::string(fn) + "_backward: gradients must have the forward's dtype (" +
                         (ctx.ft == FloatType::f32 ? "float32" : "float64") + ")");
  if (!dy_o.is_none()) { dy = as_float_array(dy_o, "dy", ctx.ft); check_shape(*dy, "dy", yshape); }
  if (!dhn_o.is_none()) { dhn = as_float_array(dhn_o, "dh_n", ctx.ft); check_shape(*dhn, "dh_n", state); }
  if (!dcn_o.is_none()) { dcn = as_float_array(dcn_o, "dc_n", ctx.ft); check_shape(*dcn, "dc_n", cstate); }
  const bool lstm = ctx.ci.cell == Cell::lstm;
  return dispatch_float(ctx.ft, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const auto& K_ = K<T>();
    const int64_t* len = ctx.lengths.is_none() ? nullptr : static_cast<const int64_t*>(py::array(ctx.lengths).data());
    RecurrentShape s{ctx.ci.cell, ctx.T, ctx.B, ctx.I, ctx.H, ctx.reverse, len, ctx.P};
    const int64_t GH = ctx.ci.G * ctx.H;
    const int64_t wsize = K_.recurrent_workspace_size(s, true, true);
    check_alloc({wsize}, sizeof(T));
    T* work = static_cast<T*>(thread_workspace(size_t(wsize) * sizeof(T)));
    py::object dx = py::none();
    py::array_t<T> dh0 = make_out<T>(state, py::none());
    py::array_t<T> dwih = make_out<T>({GH, ctx.I}, py::none()), dwhh = make_out<T>({GH, ctx.HS()}, py::none());
    py::object dc0 = py::none(), dbih = py::none(), dbhh = py::none(), norms = py::none(), dwhr = py::none();
    RecurrentBackwardArgs<T> a;
    if (need_input_grad) { py::array_t<T> t = make_out<T>({ctx.T, ctx.B, ctx.I}, py::none()); a.dx = t.mutable_data(); dx = t; }
    a.x = cptr<T>(ctx.x); a.w_ih = cptr<T>(ctx.w_ih); a.w_hh = cptr<T>(ctx.w_hh);
    a.gates = ctx.gates.is_none() ? nullptr : cptr<T>(py::array(ctx.gates));
    a.states = cptr<T>(py::array(ctx.states));
    a.cells = ctx.cells.is_none() ? nullptr : cptr<T>(py::array(ctx.cells));
    a.hn = ctx.hn.is_none() ? nullptr : cptr<T>(py::array(ctx.hn));
    if (ctx.P) {
      a.w_hr = cptr<T>(py::array(ctx.w_hr));
      a.htilde = cptr<T>(py::array(ctx.htilde));
      py::array_t<T> t = make_out<T>({ctx.P, ctx.H}, py::none());
      a.dw_hr = t.mutable_data();
      dwhr = t;
    }
    a.dy = opt<T>(dy); a.dh_n = opt<T>(dhn); a.dc_n = opt<T>(dcn);
    a.dh0 = dh0.mutable_data();
    a.dw_ih = dwih.mutable_data(); a.dw_hh = dwhh.mutable_data();
    a.work = work;
    if (lstm) { py::array_t<T> t = make_out<T>(cstate, py::none()); a.dc0 = t.mutable_data(); dc0 = t; }
    if (ctx.has_bias) {
      py::array_t<T> b1 = make_out<T>({GH}, py::none()), b2 = make_out<T>({GH}, py::none());
      a.db_ih = b1.mutable_data(); a.db_hh = b2.mutable_data(); dbih = b1; dbhh = b2;
    }
    if (need_norms) { py::array_t<T> t = make_out<T>({ctx.T}, py::none()); a.dh_norms = t.mutable_data(); norms = t; }
    {
      py::gil_scoped_release rel;
      K_.recurrent_backward(s, a);
    }
    return py::make_tuple(dx, dh0, dc0, dwih, dwhh, dbih, dbhh, norms, dwhr);
  });
}

// Weights of one cell blocked and packed once, for streaming steps on small batches.
class PackedRecurrent {
 public:
  PackedRecurrent(const std::string& mode, const py::object& wih_o, const py::object& whh_o, const py::object& bih_o,
                  const py::object& bhh_o) {
    ci_ = parse_cell(mode);
    // Shapes come from the weights: validate through the sequence checker with an empty x.
    FloatType ft = common_float_type({{wih_o, "w_ih"}, {whh_o, "w_hh"}, {bih_o, "b_ih"}, {bhh_o, "b_hh"}});
    py::array wih = as_float_array(wih_o, "w_ih", ft);
    check_ndim(wih, "w_ih", 2, "(G*H, input_size)");
    py::object x_empty = py::module_::import("numpy").attr("zeros")(py::make_tuple(0, 0, wih.shape(1)),
                                                                   ft == FloatType::f32 ? "float32" : "float64");
    Checked c = check_inputs(mode, x_empty, py::none(), py::none(), wih_o, whh_o, bih_o, bhh_o, py::none(), py::none());
    ft_ = c.ft; I_ = c.I; H_ = c.H;
    dispatch_float(ft_, [&](auto tag) {
      using T = decltype(tag);
      const auto& K_ = K<T>();
      N_ = K_.recurrent_gate_cols(ci_.cell, H_);
      bytes_ = size_t(K_.recurrent_packed_size(ci_.cell, I_, H_)) * sizeof(T);
      data_.reset(alloc_pages(bytes_));
      const T* bi = opt<T>(c.b_ih);
      const T* bh = opt<T>(c.b_hh);
      const T* wi = cptr<T>(c.w_ih);
      const T* wh = cptr<T>(c.w_hh);
      T* dst = static_cast<T*>(data_.get());
      py::gil_scoped_release rel;
      K_.recurrent_pack(ci_.cell, I_, H_, wi, wh, bi, bh, dst);
      return 0;
    });
  }

  // x (B, I); h, c (B, H) or None (zeros) -> h' (LSTM: (h', c')).
  py::object step(const py::object& x_o, const py::object& h_o, const py::object& c_o) {
    const bool lstm = ci_.cell == Cell::lstm;
    if (!lstm && !c_o.is_none()) throw py::value_error("step: c is only for LSTM");
    FloatType ft = common_float_type({{x_o, "input"}, {h_o, "h"}, {c_o, "c"}});
    if (ft != ft_ && (py::isinstance<py::array>(x_o) || !h_o.is_none()))
      throw py::type_error(std::string("step: inputs must have the weights' dtype (") +
                           (ft_ == FloatType::f32 ? "float32" : "float64") + ")");
    py::array x = as_float_array(x_o, "input", ft_);
    check_ndim(x, "input", 2, ("(B, " + std::to_string(I_) + ")").c_str());
    if (x.shape(1) != I_) shape_error("input", "(B, " + std::to_string(I_) + ")", x);
    const int64_t B = x.shape(0);
    std::optional<py::array> h, c;
    if (!h_o.is_none()) { h = as_float_array(h_o, "h", ft_); check_shape(*h, "h", {B, H_}); }
    if (!c_o.is_none()) { c = as_float_array(c_o, "c", ft_); check_shape(*c, "c", {B, H_}); }
    return dispatch_float(ft_, [&](auto tag) -> py::object {
      using T = decltype(tag);
      py::array_t<T> h_out = make_out<T>({B, H_}, py::none());
      py::object c_ret = py::none();
      T* pc_out = nullptr;
      if (lstm) { py::array_t<T> t = make_out<T>({B, H_}, py::none()); pc_out = t.mutable_data(); c_ret = t; }
      const int64_t wsize = 2 * B * N_ + 2 * B * H_ + 64;
      T* work = static_cast<T*>(thread_workspace(size_t(wsize) * sizeof(T)));
      T* zeros = work + 2 * B * N_ + 32;
      const T* px = cptr<T>(x);
      const T* ph = h ? cptr<T>(*h) : zeros;
      const T* pcc = c ? cptr<T>(*c) : zeros;
      T* ph_out = h_out.mutable_data();
      const T* packed = static_cast<const T*>(data_.get());
      const bool backwards = (calls_.fetch_add(1, std::memory_order_relaxed) & 1) != 0;
      {
        py::gil_scoped_release rel;
        if (!h || (lstm && !c)) std::memset(zeros, 0, size_t(B * H_) * sizeof(T));
        if (B > 0) K<T>().recurrent_step(ci_.cell, B, I_, H_, packed, px, ph, lstm ? pcc : nullptr, ph_out, pc_out, work, backwards);
      }
      if (lstm) return py::make_tuple(h_out, c_ret);
      return h_out;
    });
  }

  size_t nbytes() const { return bytes_; }

 private:
  struct Free { void operator()(void* p) const { std::free(p); } };
  std::unique_ptr<void, Free> data_;
  size_t bytes_ = 0;
  CellInfo ci_{};
  FloatType ft_ = FloatType::f32;
  int64_t I_ = 0, H_ = 0, N_ = 0;
  std::atomic<uint64_t> calls_{0};  // alternates the weight order of successive steps
};

}  // namespace

void bind_recurrent(py::module_& m) {
  py::class_<RecurrentContext>(m, "RecurrentContext")
      .def_property_readonly("shape", [](const RecurrentContext& c) { return py::make_tuple(c.T, c.B, c.I, c.H); })
      .def_property_readonly("proj_size", [](const RecurrentContext& c) { return c.P; })
      .def_property_readonly("reverse", [](const RecurrentContext& c) { return c.reverse; })
      .def_property_readonly("nbytes", [](const RecurrentContext& c) {
        size_t n = 0;
        for (const py::object* o : {&c.gates, &c.states, &c.cells, &c.hn, &c.htilde})
          if (!o->is_none()) n += py::array(*o).nbytes();
        return n;
      }, "Bytes of activations kept for backward.");
  py::class_<PackedRecurrent>(m, "PackedRecurrent")
      .def(py::init<const std::string&, const py::object&, const py::object&, const py::object&, const py::object&>(),
           py::arg("mode"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih") = py::none(), py::arg("b_hh") = py::none())
      .def("step", &PackedRecurrent::step, py::arg("x"), py::arg("h") = py::none(), py::arg("c") = py::none())
      .def_property_readonly("nbytes", &PackedRecurrent::nbytes);
  m.def("recurrent_forward", &recurrent_forward, py::arg("mode"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("training"), py::arg("w_hr") = py::none());
  m.def("recurrent_backward", &recurrent_backward, py::arg("ctx"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("need_norms"), py::arg("need_input_grad") = true);
}

}  // namespace seqcore
