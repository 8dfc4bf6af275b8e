"""Activations: coremltools/converters/mil/mil/ops/defs/iOS15/activation.py, iOS17/activation.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, t, scalar


@op()
def relu(x):
    return torch.relu(x)


@op()
def sigmoid(x):
    return torch.sigmoid(x)


@op()
def softsign(x):
    return F.softsign(x)


@op()
def gelu(x, mode=None):
    mode = py(mode) or "EXACT"
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"gelu mode {mode!r}")


@op()
def silu(x):
    return F.silu(x)


@op()
def relu6(x):
    return torch.clamp(x, 0.0, 6.0)


@op()
def clamped_relu(x, alpha, beta):
    a, b = scalar(alpha, 0.0), scalar(beta, 0.0)
    return torch.clamp_max(torch.clamp_min(x, 0) + torch.clamp_max(x, 0) * a, b)


@op()
def elu(x, alpha=None):
    return F.elu(x, scalar(alpha, 1.0))


@op()
def leaky_relu(x, alpha=None):
    return F.leaky_relu(x, scalar(alpha, 0.01))


@op()
def linear_activation(x, alpha, beta=None):
    return x * scalar(alpha, 1.0) + scalar(beta, 0.0)


def _channel_param(p, x):
    p = t(p, x).reshape(-1)
    return p.reshape([1, -1] + [1] * (x.dim() - 2))


@op()
def prelu(x, alpha):
    a = _channel_param(alpha, x)
    return torch.where(x >= 0, x, x * a)


@op()
def scaled_tanh(x, alpha=None, beta=None):
    return scalar(alpha, 1.0) * torch.tanh(x * scalar(beta, 1.0))


@op()
def sigmoid_hard(x, alpha=None, beta=None):
    return torch.clamp(x * scalar(alpha, 0.2) + scalar(beta, 0.5), 0.0, 1.0)


@op()
def softplus(x):
    return F.softplus(x)


@op()
def softplus_parametric(x, alpha, beta):
    return _channel_param(alpha, x) * F.softplus(x * _channel_param(beta, x))


@op()
def thresholded_relu(x, alpha=None):
    a = scalar(alpha, 1.0)
    return torch.where(x >= a, x, torch.zeros_like(x))


@op()
def softmax(x, axis=None):
    return torch.softmax(x, dim=-1 if axis is None else int(py(axis)))
