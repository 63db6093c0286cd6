"""Dense layers: pure-NumPy twins.

Shape letters: ``*`` any leading dims, I in features, O out features.
"""
import numpy as np

__all__ = ["matmul", "linear", "linear_backward"]


def matmul(a, b):
    r"""Matrix product with NumPy/PyTorch broadcasting rules.

    Parameters
    ----------
    a : ndarray, shape (*, M, K) or (K,)
    b : ndarray, shape (*, K, N) or (K,)

    Returns
    -------
    c : ndarray, shape (*, M, N) (vector operands drop their axis, as ``np.matmul``)

    Notes
    -----
    .. math:: c_{mn} = \sum_k a_{mk} b_{kn}
    """
    return np.matmul(a, b)


def linear(x, weight, bias=None):
    r"""Affine map over the last axis, PyTorch ``Linear`` layout.

    Parameters
    ----------
    x : ndarray, shape (*, I)
    weight : ndarray, shape (O, I)
    bias : ndarray, shape (O,), optional

    Returns
    -------
    y : ndarray, shape (*, O)

    Notes
    -----
    .. math:: y = x W^\top + b
    """
    y = np.matmul(x, np.asarray(weight).T)
    return y if bias is None else y + bias


def linear_backward(dy, x, weight, need_bias=True):
    r"""Gradients of :func:`linear`.

    Parameters
    ----------
    dy : ndarray, shape (*, O)
    x : ndarray, shape (*, I)
    weight : ndarray, shape (O, I)
    need_bias : bool
        Whether to return the bias gradient.

    Returns
    -------
    dx : ndarray, shape (*, I)
    dweight : ndarray, shape (O, I)
    dbias : ndarray, shape (O,), or None when ``need_bias`` is False

    Notes
    -----
    With the leading dims flattened into rows ``n``:

    .. math::

        dx = dy\,W, \qquad dW = \sum_n dy_n^\top x_n, \qquad db = \sum_n dy_n
    """
    dy, x, weight = np.asarray(dy), np.asarray(x), np.asarray(weight)
    rows = int(np.prod(x.shape[:-1]))  # not reshape(-1, ...): that fails for 0 features
    dy2 = dy.reshape(rows, weight.shape[0])
    x2 = x.reshape(rows, weight.shape[1])
    dx = np.matmul(dy, weight)
    dweight = dy2.T @ x2
    dbias = dy2.sum(axis=0) if need_bias else None
    return dx, dweight, dbias
