"""From-scratch NumPy layers with hand-written backward passes, in PyTorch's layouts.

Each layer keeps what its backward needs from the last ``forward`` call. ``backward(dout)``
returns the gradient with respect to the layer's input(s) and fills ``grads`` (same keys as
``params``). Planted bugs are switched on by the nets through constructor flags.
"""
from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


class Layer:
    op_type = "Layer"

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}


class Linear(Layer):
    """y = x W^T + b over the last axis; W is [out, in] as in torch.nn.Linear."""

    op_type = "Linear"

    def __init__(self, weight, bias, *, use_bias=True, weight_grad_bug=None):
        super().__init__()
        self.params = {"weight": weight, "bias": bias}
        self.use_bias = use_bias
        self.weight_grad_bug = weight_grad_bug  # None | "double_mean" | "transposed"

    def forward(self, x):
        self.x = x
        y = x @ self.params["weight"].T
        return y + self.params["bias"] if self.use_bias else y

    def backward(self, dout):
        x2 = self.x.reshape(-1, self.x.shape[-1])
        d2 = dout.reshape(-1, dout.shape[-1])
        dweight = d2.T @ x2
        if self.weight_grad_bug == "double_mean":
            dweight = dweight / x2.shape[0]  # divides by the batch again: dout is already averaged
        elif self.weight_grad_bug == "transposed":
            dweight = x2.T @ d2  # [in, out]: the transpose is missing
        self.grads = {"weight": dweight, "bias": d2.sum(axis=0)}
        return dout @ self.params["weight"]


class ReLU(Layer):
    op_type = "ReLU"

    def __init__(self, *, derivative_bug=False):
        super().__init__()
        self.derivative_bug = derivative_bug

    def forward(self, x):
        self.x = x
        return np.maximum(x, 0.0)

    def backward(self, dout):
        if self.derivative_bug:
            return dout * np.maximum(self.x, 0.0)  # the function where its derivative belongs
        return dout * (self.x > 0)


class Tanh(Layer):
    op_type = "Tanh"

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dout):
        return dout * (1.0 - self.y ** 2)


class GELU(Layer):
    """Exact GELU, x * Phi(x); ``approximate_tanh`` plants the tanh approximation."""

    op_type = "GELU"

    def __init__(self, *, approximate_tanh=False):
        super().__init__()
        self.approximate_tanh = approximate_tanh

    def forward(self, x):
        self.x = x
        if self.approximate_tanh:
            c = math.sqrt(2.0 / math.pi)
            self.t = np.tanh(c * (x + 0.044715 * x ** 3))
            return 0.5 * x * (1.0 + self.t)
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))

    def backward(self, dout):
        x = self.x
        if self.approximate_tanh:
            c = math.sqrt(2.0 / math.pi)
            dt = (1.0 - self.t ** 2) * c * (1.0 + 3 * 0.044715 * x ** 2)
            return dout * (0.5 * (1.0 + self.t) + 0.5 * x * dt)
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * x ** 2) / math.sqrt(2.0 * math.pi)
        return dout * (cdf + x * pdf)


class LayerNorm(Layer):
    op_type = "LayerNorm"

    def __init__(self, weight, bias, eps=1e-5):
        super().__init__()
        self.params = {"weight": weight, "bias": bias}
        self.eps = eps

    def forward(self, x):
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x - mean) * self.inv_std
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dout):
        axes = tuple(range(dout.ndim - 1))
        self.grads = {"weight": (dout * self.xhat).sum(axis=axes), "bias": dout.sum(axis=axes)}
        dxhat = dout * self.params["weight"]
        n = dout.shape[-1]
        return self.inv_std / n * (n * dxhat - dxhat.sum(-1, keepdims=True)
                                   - self.xhat * (dxhat * self.xhat).sum(-1, keepdims=True))


class Softmax(Layer):
    op_type = "Softmax"

    def forward(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        self.y = e / e.sum(axis=-1, keepdims=True)
        return self.y

    def backward(self, dout):
        return self.y * (dout - (dout * self.y).sum(axis=-1, keepdims=True))


class Scores(Layer):
    """Attention scores q k^T * scale; ``scale=1`` plants the missing 1/sqrt(d)."""

    op_type = "Scores"

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, q, k):
        self.q, self.k = q, k
        return q @ np.swapaxes(k, -1, -2) * self.scale

    def backward(self, dout):
        dout = dout * self.scale
        return dout @ self.k, np.swapaxes(dout, -1, -2) @ self.q


class Mix(Layer):
    """Attention output: the probabilities applied to the values, p @ v."""

    op_type = "Mix"

    def forward(self, p, v):
        self.p, self.v = p, v
        return p @ v

    def backward(self, dout):
        return dout @ np.swapaxes(self.v, -1, -2), np.swapaxes(self.p, -1, -2) @ dout


class Add(Layer):
    """A residual connection; ``skip_term_bug`` drops the skip path's gradient."""

    op_type = "Add"

    def __init__(self, *, skip_term_bug=False):
        super().__init__()
        self.skip_term_bug = skip_term_bug

    def forward(self, a, b):
        return a + b

    def backward(self, dout):
        return (np.zeros_like(dout) if self.skip_term_bug else dout), dout


class Conv2d(Layer):
    """Cross-correlation over NCHW with an [out, in, kh, kw] kernel and (top, bottom, left,
    right) zero padding, stride 1."""

    op_type = "Conv2d"

    def __init__(self, weight, bias, pads, *, flip_kernel=False, flip_weight_grad=False):
        super().__init__()
        self.params = {"weight": weight, "bias": bias}
        self.pads = pads
        self.flip_kernel = flip_kernel            # a true convolution where torch correlates
        self.flip_weight_grad = flip_weight_grad  # the kernel gradient comes out rotated 180°

    def _kernel(self):
        w = self.params["weight"]
        return w[:, :, ::-1, ::-1] if self.flip_kernel else w

    def forward(self, x):
        top, bottom, left, right = self.pads
        self.xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        w = self._kernel()
        kh, kw = w.shape[2:]
        h = self.xp.shape[2] - kh + 1
        wd = self.xp.shape[3] - kw + 1
        self.out_hw = (h, wd)
        out = np.zeros((x.shape[0], w.shape[0], h, wd))
        for u in range(kh):
            for v in range(kw):
                out += np.einsum("nchw,oc->nohw", self.xp[:, :, u:u + h, v:v + wd], w[:, :, u, v])
        return out + self.params["bias"][None, :, None, None]

    def backward(self, dout):
        w = self._kernel()
        kh, kw = w.shape[2:]
        h, wd = self.out_hw
        dw = np.zeros_like(w)
        dxp = np.zeros_like(self.xp)
        for u in range(kh):
            for v in range(kw):
                window = self.xp[:, :, u:u + h, v:v + wd]
                dw[:, :, u, v] = np.einsum("nohw,nchw->oc", dout, window)
                dxp[:, :, u:u + h, v:v + wd] += np.einsum("nohw,oc->nchw", dout, w[:, :, u, v])
        if self.flip_kernel:
            dw = dw[:, :, ::-1, ::-1]  # back to the stored kernel's orientation
        if self.flip_weight_grad:
            dw = dw[:, :, ::-1, ::-1]
        self.grads = {"weight": np.ascontiguousarray(dw), "bias": dout.sum(axis=(0, 2, 3))}
        top, bottom, left, right = self.pads
        return dxp[:, :, top:dxp.shape[2] - bottom, left:dxp.shape[3] - right]


class MaxPool2d(Layer):
    """2x2 max pooling, stride 2; ties go to the first element, as in torch.
    ``average_grad_bug`` spreads the gradient over the window as average pooling would."""

    op_type = "MaxPool2d"

    def __init__(self, *, average_grad_bug=False):
        super().__init__()
        self.average_grad_bug = average_grad_bug

    def forward(self, x):
        n, c, h, w = x.shape
        self.in_shape = x.shape
        windows = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        windows = windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        self.argmax = windows.argmax(axis=-1)
        return windows.max(axis=-1)

    def backward(self, dout):
        n, c, h, w = self.in_shape
        if self.average_grad_bug:
            spread = np.repeat(dout[..., None], 4, axis=-1) / 4.0
        else:
            spread = np.zeros(dout.shape + (4,))
            np.put_along_axis(spread, self.argmax[..., None], dout[..., None], axis=-1)
        spread = spread.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
        dx = np.zeros(self.in_shape)
        dx[:, :, :h // 2 * 2, :w // 2 * 2] = spread.reshape(n, c, h // 2 * 2, w // 2 * 2)
        return dx


class Flatten(Layer):
    """[N, C, H, W] -> [N, C*H*W] in C order; ``channels_last_bug`` flattens as NHWC."""

    op_type = "Flatten"

    def __init__(self, *, channels_last_bug=False):
        super().__init__()
        self.channels_last_bug = channels_last_bug

    def forward(self, x):
        self.in_shape = x.shape
        if self.channels_last_bug:
            return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        n, c, h, w = self.in_shape
        if self.channels_last_bug:
            return dout.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return dout.reshape(self.in_shape)


def cross_entropy(logits, target):
    """Mean cross-entropy over every row of ``logits`` [rows, classes]; returns (loss, dlogits)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = np.arange(logits.shape[0])
    loss = -log_p[rows, target].mean()
    dlogits = np.exp(log_p)
    dlogits[rows, target] -= 1.0
    return loss, dlogits / logits.shape[0]
