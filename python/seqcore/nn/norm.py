"""LayerNorm (PyTorch's ``nn.LayerNorm``) on the fused C++ kernels."""
import numpy as np

from seqcore import functional as F
from seqcore.nn.module import Module, Parameter


class LayerNorm(Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the trailing
    ``normalized_shape`` dims; ``weight`` (ones) and ``bias`` (zeros) of that shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, dtype=np.float32):
        super().__init__()
        shape = (int(normalized_shape),) if np.isscalar(normalized_shape) else tuple(int(s) for s in normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, float(eps), bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(shape, dtype=dtype))
            self.bias = Parameter(np.zeros(shape, dtype=dtype)) if bias else None
        else:
            self.weight = self.bias = None
        self._ctx = None

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

    def forward(self, x):
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y, ctx = F.layer_norm(x, self.normalized_shape, w, b, self.eps)
        self._ctx = ctx
        return y

    def backward(self, dy):
        """Returns dx; adds into weight.grad and bias.grad."""
        if self._ctx is None:
            raise RuntimeError("LayerNorm.backward needs a preceding forward")
        dx, dw, db = F.layer_norm_backward(self._ctx, dy)
        if self.weight is not None:
            self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx
