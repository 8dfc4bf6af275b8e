"""The op registry and the helpers every op family uses.

Each op function takes the op's inputs by their MIL parameter names: tensors as torch tensors,
const parameters (axes, strides, modes) as Python values, and returns a tensor (or a tuple
for ops with several outputs). Optional parameters take the documented defaults. Rounding
to the declared output dtype happens in the runtime, not here.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable[..., Any]] = {}


VALUE_PRESERVING = {
    "identity", "reshape", "reshape_like", "transpose", "squeeze", "expand_dims", "flatten2d",
    "slice_by_index", "slice_by_size", "concat", "split", "stack", "tile", "reverse",
    "gather", "gather_along_axis", "gather_nd", "depth_to_space", "space_to_depth",
    "pixel_shuffle", "pixel_unshuffle", "max_pool", "relu", "relu6", "reduce_max",
    "reduce_min", "upsample_nearest_neighbor", "resize_nearest_neighbor", "crop", "topk",
    "select", "maximum", "minimum", "clip", "threshold", "pad", "band_part", "sort",
}


def op(*names: str, opset: bool = False):
    """Register ``fn`` as the kernel of MIL op types ``names`` (default: its own name).
    ``opset=True``: the op's semantics changed between opsets; the kernel takes ``opset``
    (coremltools' AvailableTarget value of the program: iOS15 = 6 ... iOS18 = 9)."""
    def register(fn):
        fn.wants_opset = opset
        for name in names or (fn.__name__,):
            OPS[name] = fn
        return fn
    return register


def kernel(op_type: str, opset: int) -> Callable[..., Any]:
    """The kernel of ``op_type`` for a program of opset ``opset``."""
    fn = OPS[op_type]
    return functools.partial(fn, opset=opset) if getattr(fn, "wants_opset", False) else fn


def py(value: Any) -> Any:
    """A const parameter as a plain Python value (lists for tensors)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def ints(value: Any) -> list[int]:
    """A const parameter as a flat list of ints (nested lists row by row)."""
    v = py(value)
    if isinstance(v, (int, float, bool)):
        return [int(v)]
    return [i for a in v for i in (ints(a) if isinstance(a, (list, tuple)) else [int(a)])]


def axes_of(axes: Any, rank: int) -> list[int] | None:
    if axes is None:
        return None
    return sorted(a % rank if rank else 0 for a in ints(axes))


def t(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    dtype = like.dtype if like is not None and like.is_floating_point() else None
    device = like.device if like is not None else None
    return torch.as_tensor(value, dtype=dtype, device=device)


def scalar(value: Any, default: float) -> float:
    return default if value is None else float(py(value))


def spatial_pads(pad_type, pad, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """Per spatial dim (begin, end) padding, as conv/pool define it."""
    n = len(in_sizes)
    pad_type = (py(pad_type) or "valid").lower()
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = ints(pad) if pad is not None else [0] * (2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    out = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if pad_type == "same" else (big, small))
    return out


def torch_pad(x, pads: list[tuple[int, int]], value: float = 0.0):
    flat = [a for begin_end in reversed(pads) for a in begin_end]
    return F.pad(x, flat, value=value) if any(flat) else x
