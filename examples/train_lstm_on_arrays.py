"""Train an LSTM on your own NumPy arrays: many-to-one regression with seqcore.

Replace ``make_data`` with your arrays: ``X`` of shape (N, T, F) (batch-first, float32) and
``Y`` of shape (N, O). Here: predict the mean frequency of a noisy two-tone signal.

    python examples/train_lstm_on_arrays.py [--epochs 20]
"""
import argparse

import numpy as np

from seqcore import nn, optim


def make_data(rng, n=1024, T=50):
    freq = rng.uniform(0.05, 0.25, size=(n, 2))                      # two tones per sequence
    t = np.arange(T)
    X = np.sin(2 * np.pi * freq[:, None, :] * t[None, :, None])      # (N, T, 2)
    X += 0.1 * rng.standard_normal(X.shape)
    Y = freq.mean(axis=1, keepdims=True) * 10                        # (N, 1)
    return X.astype(np.float32), Y.astype(np.float32)


class Regressor(nn.Module):
    """LSTM over the sequence, a linear layer on the last hidden state."""

    def __init__(self, n_in, n_hidden, n_out, seed=0):
        super().__init__()
        self.lstm = nn.LSTM(n_in, n_hidden, batch_first=True, rng=seed)
        self.head = nn.Linear(n_hidden, n_out, rng=seed + 1)

    def forward(self, x):                                            # x (B, T, F)
        out, _ = self.lstm.forward(x)                                # (B, T, H)
        self._shape = out.shape
        return self.head.forward(out[:, -1])                         # (B, O)

    def backward(self, dy):
        d_out = np.zeros(self._shape, np.float32)
        d_out[:, -1] = self.head.backward(dy)                        # only the last step feeds the loss
        self.lstm.backward(d_out, need_input_grad=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X, Y = make_data(rng)
    Xtr, Ytr, Xte, Yte = X[:896], Y[:896], X[896:], Y[896:]
    model = Regressor(X.shape[2], 32, Y.shape[1])
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    for epoch in range(args.epochs):
        order = rng.permutation(len(Xtr))
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            model.zero_grad()
            loss = loss_fn.forward(model.forward(Xtr[idx]), Ytr[idx])
            model.backward(loss_fn.backward())
            optim.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        test = float(loss_fn.forward(model.forward(Xte), Yte))
        model.train()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}: train MSE {float(loss):.4f}, test MSE {test:.4f} "
                  f"(predicting the mean: {float(np.var(Yte)):.4f})")


if __name__ == "__main__":
    main()
