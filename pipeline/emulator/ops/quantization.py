"""Activation quantization: coremltools/converters/mil/mil/ops/defs/iOS17/quantization_ops.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, py, t


def _along(p, x, axis):
    p = t(p, x if x.is_floating_point() else None)
    if p.dim() == 0 or axis is None:
        return p
    shape = [1] * x.dim()
    shape[int(py(axis)) % x.dim()] = -1
    return p.reshape(shape)


@op()
def dequantize(input, scale, zero_point=None, axis=None):  # noqa: A002 - MIL's name
    input = t(input)
    x = input.float()
    if zero_point is not None:
        x = x - _along(zero_point, input, axis).float()
    return x * _along(scale, input, axis).float()


@op()
def quantize(input, scale, output_dtype, zero_point=None, axis=None):  # noqa: A002
    input = t(input)
    q = torch.round(input / _along(scale, input, axis))
    if zero_point is not None:
        q = q + _along(zero_point, input, axis).float()
    lo, hi = (-128, 127) if py(output_dtype) == "int8" else (0, 255)
    return q.clamp(lo, hi)
