"""Normalization, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/normalization.py, iOS17/normalization.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, axes_of, scalar


def _broadcast_channels(p, x):
    return None if p is None else p.reshape([1, -1] + [1] * (x.dim() - 2))


def _channel_affine(y, gamma, beta):
    if gamma is not None:
        y = y * _broadcast_channels(gamma, y)
    if beta is not None:
        y = y + _broadcast_channels(beta, y)
    return y


@op()
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=None):
    eps = scalar(epsilon, 1e-5)
    y = (x - _broadcast_channels(mean, x)) * torch.rsqrt(_broadcast_channels(variance, x) + eps)
    return _channel_affine(y, gamma, beta)


@op()
def instance_norm(x, gamma=None, beta=None, epsilon=None):
    dims = list(range(2, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return _channel_affine((x - mean) / torch.sqrt(var + scalar(epsilon, 1e-5)), gamma, beta)


@op()
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=None):
    rank = x.dim()
    dims = axes_of(axes, rank) if axes is not None else list(range(rank))
    eps = scalar(epsilon, 1e-5)
    if dims == list(range(rank - len(dims), rank)):
        shape = x.shape[rank - len(dims):]
        return F.layer_norm(x, shape, gamma.reshape(shape) if gamma is not None else None,
                            beta.reshape(shape) if beta is not None else None, eps)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    shape = [x.shape[i] if i in dims else 1 for i in range(rank)]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op()
def l2_norm(x, epsilon=None):
    dims = list(range(max(x.dim() - 3, 0), x.dim()))
    return x / torch.sqrt((x * x).sum(dims, keepdim=True) + scalar(epsilon, 1e-6))


@op()
def local_response_norm(x, size, alpha=None, beta=None, k=None):
    return F.local_response_norm(x, int(py(size)), scalar(alpha, 1e-4), scalar(beta, 0.75),
                                 scalar(k, 1.0))
