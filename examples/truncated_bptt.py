"""Truncated backpropagation through time over one long stream (a char-level LM).

The text is cut into B parallel streams, read in chunks of K characters. Each chunk is one
forward (starting from the state the previous chunk ended in) and one backward: the state
is carried forward across chunks, the gradient stops at the chunk boundary. The whole chunk
runs in C++ (no Python loop over time steps).

    python examples/truncated_bptt.py [--chunk 50] [--epochs 5]
"""
import argparse

import numpy as np

from seqcore import functional as F, nn, optim
from seqcore.tasks import default_corpus, encode_chars


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=50, help="K: time steps per backward")
    ap.add_argument("--streams", type=int, default=16, help="B: parallel streams")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ids = encode_chars(text, vocab)                                   # char -> index into vocab
    V, B, K = len(vocab), args.streams, args.chunk
    n = len(ids) // B
    streams = ids[: n * B].reshape(B, n).T                            # (n, B): column b is one stream
    onehot = np.eye(V, dtype=np.float32)

    lstm = nn.LSTM(V, args.hidden, rng=0)
    head = nn.Linear(args.hidden, V, rng=1)
    params = lstm.parameters() + head.parameters()
    opt = optim.Adam(params, lr=3e-3)
    for epoch in range(args.epochs):
        state, losses = None, []                                      # zero state at the stream start
        for s in range(0, n - 1 - K, K):
            x, y = streams[s:s + K], streams[s + 1:s + K + 1]         # (K, B) inputs and next chars
            for p in params:
                p.zero_grad()
            out, state = lstm.forward(onehot[x], hx=state)            # continue from the carried state
            logits = head.forward(out)                                # (K, B, V)
            flat, t = logits.reshape(-1, V), y.reshape(-1)
            losses.append(float(F.cross_entropy(flat, t)))
            d = F.cross_entropy_backward(1.0, flat, t).reshape(logits.shape)
            lstm.backward(head.backward(d), need_input_grad=False)    # gradient stops at the chunk start
            optim.clip_grad_norm_(params, 1.0)
            opt.step()
            if len(losses) % 10 == 0:
                print(f"epoch {epoch + 1} chars {s + K:6d}/{n}: loss {np.mean(losses[-10:]):.3f} nats/char")
    print(f"final loss {np.mean(losses[-10:]):.3f} nats/char (uniform over {V} chars: {np.log(V):.3f})")


if __name__ == "__main__":
    main()
