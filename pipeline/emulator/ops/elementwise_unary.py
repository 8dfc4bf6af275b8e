"""Elementwise unary ops, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/elementwise_unary.py, iOS17/elementwise_unary.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, t, scalar


_UNARY = {
    "abs": torch.abs, "acos": torch.acos, "asin": torch.asin, "atan": torch.atan,
    "atanh": torch.atanh, "ceil": torch.ceil, "cos": torch.cos, "cosh": torch.cosh,
    "erf": torch.erf, "exp": torch.exp, "exp2": torch.exp2, "floor": torch.floor,
    "logical_not": torch.logical_not, "round": torch.round, "sign": torch.sign,
    "sin": torch.sin, "sinh": torch.sinh, "sqrt": torch.sqrt, "square": torch.square,
    "tan": torch.tan, "tanh": torch.tanh,
}


def _unary(fn):
    def run(x):
        return fn(t(x))
    return run


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op()
def clip(x, alpha, beta):
    return torch.clamp(x, scalar(alpha, 0.0), scalar(beta, 0.0))


@op()
def threshold(x, alpha):
    return torch.clamp_min(x, scalar(alpha, 0.0))


@op()
def inverse(x, epsilon=None):
    return 1.0 / (x + scalar(epsilon, 1e-4))


@op()
def log(x, epsilon=None):
    return torch.log(x + scalar(epsilon, 1e-45))


@op()
def rsqrt(x, epsilon=None):
    return torch.rsqrt(x + scalar(epsilon, 1e-12))


@op()
def cast(x, dtype):
    return x  # the runtime converts to the declared output dtype
