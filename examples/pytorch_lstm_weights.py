"""Load a PyTorch LSTM's weights into seqcore and run it without PyTorch.

seqcore's nn.LSTM uses PyTorch's parameter names, shapes and gate order (i, f, g, o), so a
``state_dict`` converted with ``.numpy()`` loads as is. Step 1 (needs torch) exports the
weights of a torch.nn.LSTM to an .npz file; step 2 (NumPy + seqcore only) loads them and
runs the model; when torch is importable the outputs are compared.

    python examples/pytorch_lstm_weights.py [--weights lstm_weights.npz]
"""
import argparse
import os

import numpy as np

from seqcore import nn

try:
    import torch
except ImportError:  # step 2 works without it
    torch = None

I, H, LAYERS = 16, 32, 2


def export_from_torch(path):
    torch.manual_seed(0)
    t_lstm = torch.nn.LSTM(I, H, num_layers=LAYERS, batch_first=True)
    np.savez(path, **{k: v.detach().numpy() for k, v in t_lstm.state_dict().items()})
    return t_lstm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="lstm_weights.npz")
    args = ap.parse_args()
    t_lstm = None
    if torch is not None:
        t_lstm = export_from_torch(args.weights)
        print(f"exported torch.nn.LSTM({I}, {H}, num_layers={LAYERS}) weights to {args.weights}")
    elif not os.path.exists(args.weights):
        print(f"PyTorch is not installed and {args.weights} does not exist: export the weights on a machine "
              f"with torch (this script's step 1), then run it here")
        return

    # ---- from here on: NumPy and seqcore only
    with np.load(args.weights) as f:
        state = {k: f[k] for k in f.files}
    lstm = nn.LSTM(I, H, num_layers=LAYERS, batch_first=True)
    lstm.load_state_dict(state)
    lstm.eval()
    x = np.random.default_rng(1).standard_normal((4, 25, I)).astype(np.float32)   # (B, T, I)
    out, (h_n, c_n) = lstm.forward(x)
    print(f"seqcore output {out.shape}, h_n {h_n.shape}, c_n {c_n.shape}")

    if t_lstm is not None:
        with torch.no_grad():
            t_out, (t_h, t_c) = t_lstm(torch.from_numpy(x))
        err = max(float(np.max(np.abs(out - t_out.numpy()))), float(np.max(np.abs(h_n - t_h.numpy()))),
                  float(np.max(np.abs(c_n - t_c.numpy()))))
        print(f"max |seqcore - torch| over output, h_n, c_n: {err:.2e}")
        assert err < 1e-5


if __name__ == "__main__":
    main()
