"""Elementwise binary ops: coremltools/converters/mil/mil/ops/defs/iOS15/elementwise_binary.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, t


_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum,
    "minimum": torch.minimum, "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt,
    "less_equal": torch.le, "greater": torch.gt, "greater_equal": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor, "mod": torch.remainder,
}


def _binary(fn):
    def run(x, y):
        return fn(t(x, y if isinstance(y, torch.Tensor) else None),
                  t(y, x if isinstance(x, torch.Tensor) else None))
    return run


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op()
def real_div(x, y):
    x, y = t(x), t(y)
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return torch.div(x, y)


@op()
def floor_div(x, y):
    return torch.div(t(x), t(y), rounding_mode="floor")


@op()
def pow(x, y):  # noqa: A001 - MIL's name
    x = t(x)
    return torch.pow(x, t(y, x))
