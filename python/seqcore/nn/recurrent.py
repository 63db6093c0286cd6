"""RNN, LSTM and GRU layers with PyTorch's constructor arguments, parameter names, shapes,
gate order and initialisation; forward over whole sequences and backprop through time in
C++ (:mod:`seqcore.functional`). Only a Python loop over layers and directions remains.
"""
import math

import numpy as np

from seqcore import functional as F
from seqcore.nn.module import Module, Parameter, make_rng

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_KERNEL_MODE = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _grad_array(a, name, dtype):
    """A gradient argument as an array of the module's dtype: numbers only (TypeError naming the
    argument for complex, object, str ...); float arrays of another precision are converted."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"argument '{name}' must be a float array, got {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _suffix(layer, d):
    """PyTorch's parameter-name suffix of a layer and direction: ``_l{layer}[_reverse]``."""
    return f"_l{layer}" + ("_reverse" if d else "")


class RNNBase(Module):
    """Multi-layer, optionally bidirectional recurrent layer (see RNN, LSTM, GRU).

    Parameters per layer k and direction (suffix ``_reverse`` for the second direction):
    ``weight_ih_l{k}`` (G*H, I_k), ``weight_hh_l{k}`` (G*H, H), ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (G*H,), where I_0 = input_size and I_k = H * num_directions; all
    initialised U(-1/sqrt(H), 1/sqrt(H)) as PyTorch does. LSTM with ``proj_size`` P > 0:
    also ``weight_hr_l{k}`` (P, H); h (and the output) then has P values, so
    ``weight_hh_l{k}`` is (4H, P) and I_k = P * num_directions.
    """

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32, rng=None):
        super().__init__()
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.proj_size = int(proj_size)
        if self.proj_size < 0:
            raise ValueError(f"proj_size must be >= 0, got {proj_size}")
        if self.proj_size and mode != "LSTM":
            raise ValueError("proj_size is only for LSTM")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got proj_size={self.proj_size}, "
                             f"hidden_size={self.hidden_size}")
        self._rng = make_rng(rng)
        dtype = _check_dtype(dtype)
        G, H = _GATES[mode], self.hidden_size
        HS = self.proj_size or H  # width of h
        k = 1.0 / math.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else HS * self.num_directions
            for d in range(self.num_directions):
                sfx = _suffix(layer, d)
                u = lambda *shape: self._rng.uniform(-k, k, size=shape).astype(dtype)
                setattr(self, "weight_ih" + sfx, Parameter(u(G * H, in_size)))
                setattr(self, "weight_hh" + sfx, Parameter(u(G * H, HS)))
                if self.bias:
                    setattr(self, "bias_ih" + sfx, Parameter(u(G * H)))
                    setattr(self, "bias_hh" + sfx, Parameter(u(G * H)))
                if self.proj_size:
                    setattr(self, "weight_hr" + sfx, Parameter(u(self.proj_size, H)))
        self._cache = None
        self.last_dh_norms = {}

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s

    def _weights(self, layer, d):
        sfx = _suffix(layer, d)
        w = [getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)]
        if self.bias:
            w += [getattr(self, "bias_ih" + sfx), getattr(self, "bias_hh" + sfx)]
        else:
            w += [None, None]
        return w

    def _proj(self, layer, d):
        if not self.proj_size:
            return None
        return getattr(self, "weight_hr" + _suffix(layer, d))

    # ------------------------------------------------------------------ forward
    def _split_hx(self, hx, B, dtype):
        L = self.num_layers * self.num_directions
        shape = (L, B, self.hidden_size)
        if self.mode == "LSTM":
            if hx is None:
                return None, None
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ValueError("LSTM hx must be a tuple (h_0, c_0)")
            h0, c0 = (np.asarray(a) for a in hx)
            for name, a, want in (("h_0", h0, (L, B, self.proj_size or self.hidden_size)), ("c_0", c0, shape)):
                if a.shape != want:
                    raise ValueError(f"argument '{name}' must have shape {want}, got {a.shape}")
            return h0, c0
        if hx is None:
            return None, None
        h0 = np.asarray(hx)
        if h0.shape != shape:
            raise ValueError(f"argument 'hx' must have shape {shape}, got {h0.shape}")
        return h0, None

    def forward(self, input, hx=None, lengths=None):
        """Runs the layer over a sequence.

        input: (T, B, input_size), or (B, T, input_size) with batch_first, or unbatched
        (T, input_size). hx: (num_layers*num_directions, B, H) (LSTM: a tuple (h_0, c_0)),
        zeros when None. lengths: optional (B,) valid steps per sequence (1..T).
        Returns (output (T, B, num_directions*H), h_n) — LSTM: (output, (h_n, c_n)); with
        proj_size P, output and h have P values in place of H.
        """
        x = np.asarray(input)
        if x.dtype.kind != "f":
            raise TypeError(f"argument 'input' must be float32 or float64, got {x.dtype}")
        if x.dtype != self.weight_hh_l0.dtype:
            raise TypeError(f"argument 'input' is {x.dtype} but the layer's parameters are "
                            f"{self.weight_hh_l0.dtype}; convert one (module.float() / .double())")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
            if hx is not None:
                hx = tuple(np.asarray(h)[:, None, :] for h in hx) if self.mode == "LSTM" else np.asarray(hx)[:, None, :]
        elif x.ndim != 3:
            raise ValueError(f"argument 'input' must have shape (T, B, {self.input_size})"
                             f"{' batch-first (B, T, I)' if self.batch_first else ''}, got {x.shape}")
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[2] != self.input_size:
            raise ValueError(f"argument 'input' must have {self.input_size} features in its last "
                             f"dimension, got shape {np.asarray(input).shape}")
        T, B = x.shape[0], x.shape[1]
        h0, c0 = self._split_hx(hx, B, x.dtype)
        nd, mode = self.num_directions, _KERNEL_MODE[self.mode]
        training = self.training
        ctxs, masks, hn, cn = [], [], [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(nd):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                w_hr = self._proj(layer, d)
                i = layer * nd + d
                y, h_n, c_n, ctx = F._core.recurrent_forward(
                    mode, layer_in, None if h0 is None else h0[i], None if c0 is None else c0[i],
                    w_ih.data, w_hh.data, None if b_ih is None else b_ih.data,
                    None if b_hh is None else b_hh.data, lengths, d == 1, training,
                    None if w_hr is None else w_hr.data)
                outs.append(y)
                hn.append(h_n)
                cn.append(c_n)
                ctxs.append(ctx)
            out = outs[0] if nd == 1 else np.concatenate(outs, axis=2)
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                mask = (self._rng.random(out.shape) >= self.dropout).astype(out.dtype) / (1.0 - self.dropout)
                out = out * mask
                masks.append(mask)
            else:
                masks.append(None)
            layer_in = out
        output = layer_in
        h_n = np.stack(hn) if hn else np.zeros((0, B, self.proj_size or self.hidden_size), x.dtype)
        if training:
            self._cache = (ctxs, masks, unbatched, T, B)
        else:
            self._cache = None
        if self.batch_first and not unbatched:
            output = output.transpose(1, 0, 2)
        if unbatched:
            output, h_n = output[:, 0], h_n[:, 0]
        if self.mode == "LSTM":
            c_n = np.stack(cn)
            if unbatched:
                c_n = c_n[:, 0]
            return output, (h_n, c_n)
        return output, h_n

    # ------------------------------------------------------------------ backward
    def backward(self, d_output, d_h_n=None, need_input_grad=True):
        """Backprop through time for the last training-mode forward.

        d_output: gradient of the output (same shape as output) or None; d_h_n: gradient of
        h_n (LSTM: a tuple (dh_n, dc_n), either may be None) for truncated BPTT across
        chunks. Adds into every parameter's .grad; returns (d_input, d_hx) with d_hx shaped
        like hx (LSTM: a tuple); d_input is None with ``need_input_grad=False`` (saves the
        first layer's input-gradient GEMM, like PyTorch when the input needs no grad). Records ||dL/dh_t|| per layer and direction in
        ``last_dh_norms[(layer, direction)]`` (shape (T,)).
        """
        if self._cache is None:
            raise RuntimeError("backward needs a preceding forward in training mode (call .train())")
        ctxs, masks, unbatched, T, B = self._cache
        nd, H = self.num_directions, self.proj_size or self.hidden_size  # H: width of h
        dtype = self.weight_hh_l0.dtype
        dy = None
        if d_output is not None:
            dy = _grad_array(d_output, "d_output", dtype)
            want = (T, nd * H) if unbatched else ((B, T, nd * H) if self.batch_first else (T, B, nd * H))
            if dy.shape != want:
                raise ValueError(f"argument 'd_output' must have the output's shape {want}, got {dy.shape}")
            if unbatched:
                dy = dy[:, None, :]
            elif self.batch_first:
                dy = dy.transpose(1, 0, 2)
            if dy.shape != (T, B, nd * H):
                raise ValueError(f"argument 'd_output' must have the output's shape, got {np.asarray(d_output).shape}")
        dhn = dcn = None
        if d_h_n is not None:
            if self.mode == "LSTM":
                dhn, dcn = d_h_n
            else:
                dhn = d_h_n
            L = self.num_layers * nd
            conv = []
            for name, a, w in (("d_h_n", dhn, H), ("d_c_n", dcn, self.hidden_size)):
                if a is not None:
                    a = _grad_array(a, name, dtype)
                    if a.ndim != (2 if unbatched else 3):
                        raise ValueError(f"argument '{name}' must have shape {(L, w) if unbatched else (L, B, w)}, "
                                         f"got {a.shape}")
                    if unbatched:
                        a = a[:, None, :]
                    if a.shape != (L, B, w):
                        raise ValueError(f"argument '{name}' must have shape {(L, B, w)}, got {a.shape}")
                conv.append(a)
            dhn, dcn = conv
        dh0 = [None] * (self.num_layers * nd)
        dc0 = [None] * (self.num_layers * nd)
        self.last_dh_norms = {}
        grad_out = dy
        for layer in reversed(range(self.num_layers)):
            d_in = None
            for d in range(nd):
                i = layer * nd + d
                g_y = None if grad_out is None else (grad_out if nd == 1 else grad_out[:, :, d * H:(d + 1) * H])
                out = F._core.recurrent_backward(ctxs[i], g_y, None if dhn is None else dhn[i],
                                                 None if dcn is None else dcn[i], True,
                                                 need_input_grad or layer > 0)
                dx, dh, dc, dwih, dwhh, dbih, dbhh, norms, dwhr = out
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                w_ih.grad += dwih
                w_hh.grad += dwhh
                if dwhr is not None:
                    self._proj(layer, d).grad += dwhr
                if b_ih is not None:
                    b_ih.grad += dbih
                    b_hh.grad += dbhh
                dh0[i], dc0[i] = dh, dc
                self.last_dh_norms[(layer, d)] = norms
                if dx is not None:
                    d_in = dx if d_in is None else d_in + dx
            if layer > 0 and masks[layer - 1] is not None:
                d_in = d_in * masks[layer - 1]
            grad_out = d_in
        dx = grad_out
        dhx = np.stack(dh0)
        if unbatched:
            dx = None if dx is None else dx[:, 0]
            dhx = dhx[:, 0]
        elif self.batch_first and dx is not None:
            dx = dx.transpose(1, 0, 2)
        if self.mode == "LSTM":
            dcx = np.stack(dc0)
            if unbatched:
                dcx = dcx[:, 0]
            return dx, (dhx, dcx)
        return dx, dhx


class RNN(RNNBase):
    """Elman RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32, rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype=dtype, rng=rng)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    """LSTM: ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of ``W_ih x_t + b_ih + W_hh h_{t-1} +
    b_hh`` (row blocks i, f, g, o); ``c_t = f c_{t-1} + i g``; ``h_t = o tanh(c_t)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32, rng=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype=dtype, rng=rng)


class GRU(RNNBase):
    """GRU: ``r, z = sigmoid(W_i. x + b_i. + W_h. h + b_h.)``,
    ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``, ``h_t = (1 - z) n + z h_{t-1}``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, rng=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, rng=rng)


class RNNCellBase(Module):
    """One time step (PyTorch's *Cell layers). Parameters ``weight_ih`` (G*H, I),
    ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H,), initialised U(-1/sqrt(H), 1/sqrt(H)).
    ``forward(input, hx=None)`` takes input (B, I) or (I,); ``backward`` differentiates the
    last training-mode forward; ``step`` is forward without any caching (streaming inference).
    """

    def __init__(self, mode, input_size, hidden_size, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        if int(input_size) < 1 or int(hidden_size) < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        self.mode, self.input_size, self.hidden_size, self.bias = mode, int(input_size), int(hidden_size), bool(bias)
        dtype = _check_dtype(dtype)
        rng = make_rng(rng)
        G, H = _GATES[mode], self.hidden_size
        k = 1.0 / math.sqrt(H)
        u = lambda *shape: rng.uniform(-k, k, size=shape).astype(dtype)
        self.weight_ih = Parameter(u(G * H, self.input_size))
        self.weight_hh = Parameter(u(G * H, H))
        if self.bias:
            self.bias_ih = Parameter(u(G * H))
            self.bias_hh = Parameter(u(G * H))
        else:
            self.bias_ih = self.bias_hh = None
        self._cache = None
        self._packed = None
        self._packed_key = None

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _inputs(self, input, hx):
        """Validated (x (B, I), h (B, H) or None, c or None, unbatched)."""
        x = np.asarray(input)
        unbatched = x.ndim == 1
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"argument 'input' must have shape (B, {self.input_size}) or "
                             f"({self.input_size},), got {x.shape}")
        x = x[None] if unbatched else x
        B = x.shape[0]
        h = c = None
        if hx is not None:
            if self.mode == "LSTM":
                if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                    raise ValueError("LSTMCell hx must be a tuple (h, c)")
                h, c = hx
            else:
                h = hx
            st = (self.hidden_size,) if unbatched else (B, self.hidden_size)
            for name, a in (("h", h), ("c", c)):
                if a is not None and np.shape(a) != st:
                    raise ValueError(f"argument '{name}' must have shape {st}, got {np.shape(a)}")
            h = None if h is None else np.reshape(h, (B, self.hidden_size))
            c = None if c is None else np.reshape(c, (B, self.hidden_size))
        return x, h, c, unbatched

    def _run(self, input, hx, training):
        x, h, c, unbatched = self._inputs(input, hx)
        bi = None if self.bias_ih is None else self.bias_ih.data
        bh = None if self.bias_hh is None else self.bias_hh.data
        y, h_n, c_n, ctx = F._core.recurrent_forward(_KERNEL_MODE[self.mode], x[None], h, c, self.weight_ih.data,
                                                     self.weight_hh.data, bi, bh, None, False, training)
        self._cache = (ctx, unbatched) if training else None
        if unbatched:
            h_n = h_n[0]
            c_n = None if c_n is None else c_n[0]
        return (h_n, c_n) if self.mode == "LSTM" else h_n

    def forward(self, input, hx=None):
        if not self.training:
            return self.step(input, hx)
        return self._run(input, hx, True)

    def _packed_weights(self):
        wi, wh, bi, bh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        if bi is None:
            key = (id(wi), wi.version, id(wh), wh.version)
        else:
            key = (id(wi), wi.version, id(wh), wh.version, id(bi), bi.version, id(bh), bh.version)
        if self._packed_key != key:
            self._packed = F._core.PackedRecurrent(
                _KERNEL_MODE[self.mode], wi.data, wh.data, None if bi is None else bi.data,
                None if bh is None else bh.data)
            self._packed_key = key
        return self._packed

    def step(self, input, hx=None):
        """One step for inference (streaming), nothing kept for backward.

        Uses its own product path (both products per block of gate columns, on packed weights;
        for B <= 4 a GEMV-shaped kernel), so results may differ from a training-mode ``forward``
        in the last bit, never with the thread count. The weights are blocked and packed once and
        reused while the parameters are
        unchanged (seqcore's optimizers, ``load_state_dict`` and assigning ``.data`` bump
        ``Parameter.version``; after editing ``.data`` in place call ``refresh()``).
        """
        packed = self._packed_weights()
        if type(input) is np.ndarray and input.ndim == 2:
            # The batched fast path: the kernel checks shapes and dtypes itself.
            if hx is None:
                return packed.step(input, None, None)
            if self.mode != "LSTM":
                return packed.step(input, hx, None)
            if type(hx) is tuple and len(hx) == 2:
                return packed.step(input, hx[0], hx[1])
        x, h, c, unbatched = self._inputs(input, hx)
        out = packed.step(x, h, c)
        if unbatched:
            out = (out[0][0], out[1][0]) if self.mode == "LSTM" else out[0]
        return out

    def refresh(self):
        """Drops the packed weights used by ``step`` (after in-place edits of ``.data``)."""
        self._packed_key = None

    def backward(self, d_h, d_c=None):
        """Gradients of the last training-mode forward: d_h (and LSTM's d_c) of the new
        state. Adds into .grad; returns (d_input, d_hx) — LSTM: (d_input, (d_h0, d_c0))."""
        if self._cache is None:
            raise RuntimeError("backward needs a preceding forward in training mode")
        ctx, unbatched = self._cache
        dt = self.weight_hh.dtype
        dh = None if d_h is None else _grad_array(d_h, "d_h", dt)
        dc = None if d_c is None else _grad_array(d_c, "d_c", dt)
        for name, a in (("d_h", dh), ("d_c", dc)):
            if a is not None and (a.ndim != (1 if unbatched else 2) or a.shape[-1] != self.hidden_size):
                want = f"({self.hidden_size},)" if unbatched else f"(B, {self.hidden_size})"
                raise ValueError(f"argument '{name}' must have shape {want}, got {a.shape}")
        dh = None if dh is None else dh.reshape(-1, self.hidden_size)
        dc = None if dc is None else dc.reshape(-1, self.hidden_size)
        dx, dh0, dc0, dwih, dwhh, dbih, dbhh, _, _ = F._core.recurrent_backward(ctx, None, dh, dc, False, True)
        self.weight_ih.grad += dwih
        self.weight_hh.grad += dwhh
        if self.bias_ih is not None:
            self.bias_ih.grad += dbih
            self.bias_hh.grad += dbhh
        dx = dx[0]
        if unbatched:
            dx, dh0 = dx[0], dh0[0]
            dc0 = None if dc0 is None else dc0[0]
        return (dx, (dh0, dc0)) if self.mode == "LSTM" else (dx, dh0)


class RNNCell(RNNCellBase):
    """``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act tanh or relu."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *, dtype=np.float32, rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias,
                         dtype=dtype, rng=rng)
        self.nonlinearity = nonlinearity


class LSTMCell(RNNCellBase):
    """One LSTM step: returns (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, rng=None):
        super().__init__("LSTM", input_size, hidden_size, bias, dtype=dtype, rng=rng)


class GRUCell(RNNCellBase):
    """One GRU step: returns h'."""

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, rng=None):
        super().__init__("GRU", input_size, hidden_size, bias, dtype=dtype, rng=rng)
