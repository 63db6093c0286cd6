"""Layers with PyTorch's names, shapes and defaults, explicit forward/backward."""
from seqcore.nn.module import Module, Parameter
from seqcore.nn.recurrent import RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, RNNBase, RNNCellBase

__all__ = ["Module", "Parameter", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase",
           "RNNCellBase"]
