"""The activations whose presence or absence the hints test for (NumPy, float64)."""
from __future__ import annotations

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 refined (|error| < 1.2e-7): enough to recognise a GELU.
    t = 1.0 / (1.0 + 0.5 * np.abs(x))
    y = 1 - t * np.exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (
        0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (
            1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return np.where(x >= 0, y, -y)


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def tanh(x):
    return np.tanh(x)


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    if x.ndim == 0:
        return np.ones_like(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def silu(x):
    return x * sigmoid(x)


ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "gelu": gelu,
               "gelu (tanh approximation)": gelu_tanh, "silu": silu, "softmax": softmax}
