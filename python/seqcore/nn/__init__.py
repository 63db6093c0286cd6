"""Layers with PyTorch's names, shapes and defaults, explicit forward/backward."""
from seqcore.nn.module import Module, Parameter
from seqcore.nn.norm import LayerNorm
from seqcore.nn.recurrent import RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, RNNBase, RNNCellBase
from seqcore.nn.layers import (Linear, Identity, ReLU, LeakyReLU, PReLU, Tanh, Sigmoid, SiLU, GELU, Sequential,
                               CrossEntropyLoss, MSELoss, BatchNorm1d)

__all__ = ["Module", "Parameter", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase",
           "RNNCellBase", "Linear", "Identity", "ReLU", "LeakyReLU", "PReLU", "Tanh", "Sigmoid", "SiLU", "GELU",
           "Sequential", "CrossEntropyLoss", "MSELoss", "BatchNorm1d"]
