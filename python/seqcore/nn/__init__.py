"""Layers with PyTorch's names, shapes and defaults, explicit forward/backward."""
from seqcore.nn.module import Module, ModuleList, Parameter
from seqcore.nn.norm import LayerNorm
from seqcore.nn.recurrent import RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, RNNBase, RNNCellBase
from seqcore.nn.layers import (Linear, Identity, ReLU, LeakyReLU, PReLU, Tanh, Sigmoid, SiLU, GELU, Sequential,
                               CrossEntropyLoss, MSELoss, BatchNorm1d)
from seqcore.nn.attention import MultiheadAttention
from seqcore.nn.transformer import (Embedding, Dropout, FeedForward, SinusoidalPositionalEncoding,
                                    TransformerEncoderLayer, TransformerEncoder)

__all__ = ["Module", "Parameter", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase",
           "RNNCellBase", "Linear", "Identity", "ReLU", "LeakyReLU", "PReLU", "Tanh", "Sigmoid", "SiLU", "GELU",
           "Sequential", "CrossEntropyLoss", "MSELoss", "BatchNorm1d", "ModuleList", "MultiheadAttention",
           "Embedding", "Dropout", "FeedForward", "SinusoidalPositionalEncoding", "TransformerEncoderLayer",
           "TransformerEncoder"]
