"""Shape and layout transformations, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/tensor_transformation.py, iOS16/.., iOS17/.., iOS18/tensor_transformation.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, ints, axes_of


@op()
def reshape(x, shape):
    target = ints(shape)
    if 0 in target and len(target) == x.dim():
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


@op()
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    shape: list[int] = []
    for ref, b, e, m in zip(ref_tensors, ints(begins), ints(ends), py(end_masks)):
        dims = list(ref.shape)
        shape += dims[b:] if m else dims[b:e]
    return x.reshape(shape)


@op()
def transpose(x, perm):
    return x.permute(ints(perm))


@op()
def squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    dims = axes_of(axes, x.dim())
    return x.squeeze(tuple(dims)) if dims else x


@op()
def expand_dims(x, axes):
    out_rank = x.dim() + len(ints(axes))
    for a in sorted(a % out_rank for a in ints(axes)):
        x = x.unsqueeze(a)
    return x


def _index_along(x, axis: int, idx: list[int]) -> torch.Tensor:
    if idx and all(b - a == 1 for a, b in zip(idx, idx[1:])):
        return x.narrow(axis, idx[0], len(idx))
    return x.index_select(axis, torch.tensor(idx, dtype=torch.long, device=x.device))


@op()
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None,
                   squeeze_mask=None):
    rank = x.dim()
    begin, end = ints(begin), ints(end)
    stride = ints(stride) if stride is not None else [1] * rank
    bm = py(begin_mask) or [False] * rank
    em = py(end_mask) or [False] * rank
    sm = py(squeeze_mask) or [False] * rank
    squeeze = []
    for axis in range(rank):
        size = x.shape[axis]
        if sm[axis]:
            x = x.narrow(axis, begin[axis] % size, 1)
            squeeze.append(axis)
            continue
        s = stride[axis]
        b = None if bm[axis] else begin[axis]
        e = None if em[axis] else end[axis]
        idx = list(range(*slice(b, e, s).indices(size)))
        if idx != list(range(size)):
            x = _index_along(x, axis, idx)
    return x.squeeze(tuple(squeeze)) if squeeze else x


@op()
def slice_by_size(x, begin, size):
    for axis, (b, s) in enumerate(zip(ints(begin), ints(size))):
        b = b % x.shape[axis] if x.shape[axis] else 0
        x = x.narrow(axis, b, x.shape[axis] - b if s == -1 else s)
    return x


@op()
def reverse(x, axes=None):
    dims = axes_of(axes, x.dim()) if axes is not None else list(range(x.dim()))
    return torch.flip(x, dims)


@op()
def depth_to_space(x, block_size):
    bs = int(py(block_size))
    n, c, h, w = x.shape
    y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op()
def space_to_depth(x, block_size):
    bs = int(py(block_size))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


@op()
def pixel_shuffle(x, upscale_factor):
    return F.pixel_shuffle(x, int(py(upscale_factor)))


@op()
def pixel_unshuffle(x, downscale_factor):
    return F.pixel_unshuffle(x, int(py(downscale_factor)))
