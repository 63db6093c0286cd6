"""A custom model with an explicit forward and backward: bidirectional GRU encoder, mean
pooling over time, linear classifier; its gradient checked against finite differences,
then trained.

Task: classify whether a sequence of symbols contains more 1s than 2s (needs the whole
sequence). A seqcore Module caches what backward needs in forward; backward returns the
input gradient and *adds* into every Parameter.grad.

    python examples/custom_model.py
"""
import numpy as np

from seqcore import functional as F, nn, optim


class PooledGRUClassifier(nn.Module):
    r"""x (T, B, I) -> logits (B, C):  h = BiGRU(x) (T, B, 2H),  m = mean_t h_t,  y = m W^T + b."""

    def __init__(self, n_in, n_hidden, n_classes, dtype=np.float32, seed=0):
        super().__init__()
        self.gru = nn.GRU(n_in, n_hidden, bidirectional=True, dtype=dtype, rng=seed)
        self.fc = nn.Linear(2 * n_hidden, n_classes, dtype=dtype, rng=seed + 1)

    def forward(self, x):
        h, _ = self.gru.forward(x)                    # (T, B, 2H)
        self._T = h.shape[0]
        return self.fc.forward(h.mean(axis=0))        # (B, C)

    def backward(self, dy):
        dm = self.fc.backward(dy)                     # d mean (B, 2H)
        dh = np.broadcast_to(dm / self._T, (self._T,) + dm.shape)   # d h_t = d mean / T for every t
        dx, _ = self.gru.backward(dh)
        return dx


def make_batch(rng, B, T=30, dtype=np.float32):
    sym = rng.integers(0, 4, size=(T, B))
    x = np.eye(4, dtype=dtype)[sym]                   # one-hot (T, B, 4)
    y = ((sym == 1).sum(0) > (sym == 2).sum(0)).astype(np.int64)
    return x, y


def gradient_check():
    """Central differences of the loss vs backward, in float64, for a few weights."""
    rng = np.random.default_rng(0)
    model = PooledGRUClassifier(4, 8, 2, dtype=np.float64)
    x, y = make_batch(rng, 5, T=7, dtype=np.float64)
    loss = lambda: float(F.cross_entropy(model.forward(x), y))
    model.zero_grad()
    logits = model.forward(x)
    model.backward(F.cross_entropy_backward(1.0, logits, y))
    worst = 0.0
    for name, p in model.named_parameters():
        i = np.unravel_index(rng.integers(p.data.size), p.shape)
        old = p.data[i]
        d = p.data.copy(); d[i] = old + 1e-6; p.data = d; up = loss()
        d = p.data.copy(); d[i] = old - 1e-6; p.data = d; down = loss()
        d = p.data.copy(); d[i] = old; p.data = d
        fd = (up - down) / 2e-6
        worst = max(worst, abs(fd - p.grad[i]) / max(1e-8, abs(fd) + abs(p.grad[i])))
    print(f"gradient check (float64, one weight per parameter): worst relative error {worst:.1e}")
    assert worst < 1e-5


def train():
    rng = np.random.default_rng(1)
    model = PooledGRUClassifier(4, 32, 2)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    xe, ye = make_batch(np.random.default_rng(99), 512)
    for step in range(1, 301):
        x, y = make_batch(rng, 32)
        model.zero_grad()
        logits = model.forward(x)
        loss = float(F.cross_entropy(logits, y))
        model.backward(F.cross_entropy_backward(1.0, logits, y))
        opt.step()
        if step % 100 == 0:
            model.eval()
            acc = float(np.mean(np.argmax(model.forward(xe), axis=1) == ye))
            model.train()
            print(f"step {step}: loss {loss:.3f}, held-out accuracy {acc:.3f}")


if __name__ == "__main__":
    gradient_check()
    train()
