"""Reductions: coremltools/converters/mil/mil/ops/defs/iOS15/reduction.py, iOS17/reduction.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, py, axes_of


def _reduce(fn):
    def run(x, axes=None, keep_dims=None):
        keep = bool(py(keep_dims))
        dims = axes_of(axes, x.dim())
        if dims is None:
            dims = list(range(x.dim()))
        if not dims:
            return x
        return fn(x, dims, keep)
    return run


op("reduce_sum")(_reduce(lambda x, d, k: torch.sum(x, d, keepdim=k)))
op("reduce_mean")(_reduce(lambda x, d, k: torch.mean(x, d, keepdim=k)))
op("reduce_max")(_reduce(lambda x, d, k: torch.amax(x, d, keepdim=k)))
op("reduce_min")(_reduce(lambda x, d, k: torch.amin(x, d, keepdim=k)))


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


op("reduce_prod")(_reduce(_prod))
op("reduce_l1_norm")(_reduce(lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k)))
op("reduce_l2_norm")(_reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k))))
op("reduce_sum_square")(_reduce(lambda x, d, k: torch.sum(x * x, d, keepdim=k)))
op("reduce_log_sum")(_reduce(lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k))))
op("reduce_log_sum_exp")(_reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k)))


def _arg_reduce(fn):
    def run(x, axis=None, keep_dims=None, output_dtype=None):
        return fn(x, dim=int(py(axis) if axis is not None else -1), keepdim=bool(py(keep_dims)))
    return run


op("reduce_argmax")(_arg_reduce(torch.argmax))
op("reduce_argmin")(_arg_reduce(torch.argmin))
