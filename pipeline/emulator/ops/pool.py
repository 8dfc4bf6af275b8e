"""Pooling: coremltools/converters/mil/mil/ops/defs/iOS15/pool.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, ints, spatial_pads, torch_pad


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, kind, exclude_padding=False):
    n = len(ints(kernel_sizes))
    kernel = ints(kernel_sizes)
    strides = ints(strides) if strides is not None else [1] * n
    pads = spatial_pads(pad_type, pad, x.shape[-n:], kernel, strides, [1] * n)
    ceil_mode = bool(py(ceil_mode))
    fn = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d),
          3: (F.max_pool3d, F.avg_pool3d)}[n]
    if kind == "max":
        xp = torch_pad(x, pads, value=-math.inf)
        return fn[0](xp, kernel, strides, 0, 1, ceil_mode)
    if kind == "l2":
        xp = torch_pad(x * x, pads)
        return torch.sqrt(fn[1](xp, kernel, strides, 0, ceil_mode) * math.prod(kernel))
    xp = torch_pad(x, pads)
    sums = fn[1](xp, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
    if exclude_padding and any(b or e for b, e in pads):
        ones = torch_pad(torch.ones_like(x[..., :1, :, :] if n == 2 else x), pads)
        counts = fn[1](ones, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
        return sums / counts
    if ceil_mode:  # windows that run past the padded input average over what they cover
        ones = torch.ones_like(xp[..., :1, :, :] if n == 2 else xp)
        counts = fn[1](ones, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
        return sums / counts
    return sums / math.prod(kernel)


@op()
def max_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "max")


@op()
def avg_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None,
             exclude_padding_from_average=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "avg",
                 bool(py(exclude_padding_from_average)))


@op()
def l2_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "l2")
