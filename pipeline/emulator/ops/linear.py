"""Linear algebra: coremltools/converters/mil/mil/ops/defs/iOS15/linear.py, iOS17/linear.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, t


@op()
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


@op()
def matmul(x, y, transpose_x=None, transpose_y=None):
    x, y = t(x, y if isinstance(y, torch.Tensor) else None), t(y, x)
    if py(transpose_x) and x.dim() > 1:
        x = x.transpose(-1, -2)
    if py(transpose_y) and y.dim() > 1:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@op()
def einsum(values, equation):
    return torch.einsum(py(equation), *values)
