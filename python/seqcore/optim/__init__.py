"""Optimizers with torch.optim's names, defaults and update rules; each step is one fused
C++ pass per parameter, in place on ``Parameter.data``. Gradient clipping as in
``torch.nn.utils``.
"""
from seqcore.optim.optimizer import Optimizer, SGD, Adam, AdamW, RMSprop
from seqcore.optim.clip import clip_grad_norm_, clip_grad_value_

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm_", "clip_grad_value_"]
