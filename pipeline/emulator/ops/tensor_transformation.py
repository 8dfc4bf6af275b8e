"""Shape and layout transformations, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/tensor_transformation.py, iOS16/.., iOS17/.., iOS18/tensor_transformation.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, ints, axes_of


IOS17 = 8  # coremltools' AvailableTarget.iOS17


@op(opset=True)
def reshape(x, shape, opset=IOS17):
    """A 0 in ``shape`` copies a dim of ``x``: the same position before iOS17 (and then
    len(shape) == rank(x)); from iOS17 counted from the right, 1 where ``x`` has no such dim
    (iOS17/tensor_transformation.py, reshape.replace_zeros_in_shape)."""
    target = ints(shape)
    if 0 in target:
        dims = list(x.shape)
        if opset >= IOS17:
            right = [dims[len(dims) - len(target) + i] if len(dims) - len(target) + i >= 0 else 1
                     for i in range(len(target))]
            target = [right[i] if s == 0 else s for i, s in enumerate(target)]
        elif len(target) == len(dims):
            target = [dims[i] if s == 0 else s for i, s in enumerate(target)]
        else:
            raise ValueError(f"reshape: a 0 in shape {target} needs len(shape) == rank(x) "
                             f"({len(dims)}) before iOS17")
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


@op()
def space_to_batch(x, block_shape, paddings):
    """Pad H and W, then move each block offset into the batch (TF's space_to_batch_nd, NCHW):
    out[(bh * b1 + bw) * n + i, c, h, w] = padded[i, c, h * b0 + bh, w * b1 + bw]."""
    b0, b1 = ints(block_shape)
    p = ints(paddings)
    x = F.pad(x, [p[2], p[3], p[0], p[1]])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b0, b0, w // b1, b1).permute(3, 5, 0, 1, 2, 4)
    return y.reshape(b0 * b1 * n, c, h // b0, w // b1)


@op()
def batch_to_space(x, block_shape, crops):
    """The inverse of space_to_batch, then crop H and W."""
    b0, b1 = ints(block_shape)
    cr = ints(crops)
    big_n, c, h, w = x.shape
    n = big_n // (b0 * b1)
    y = x.reshape(b0, b1, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * b0, w * b1)
    return y[:, :, cr[0]: h * b0 - cr[1], cr[2]: w * b1 - cr[3]]


@op()
def reverse_sequence(x, lengths, seq_axis=None, batch_axis=None):
    """For each index i along ``batch_axis``, reverse the first lengths[i] elements along
    ``seq_axis``."""
    sa = int(py(seq_axis) or 0) % x.dim()
    ba = int(py(batch_axis) or 0) % x.dim()
    out = x.clone()
    for i, n in enumerate(ints(lengths)):
        row = out.select(ba, i)
        src = x.select(ba, i)
        axis = sa if sa < ba else sa - 1
        if n > 0:
            row.narrow(axis, 0, n).copy_(torch.flip(src.narrow(axis, 0, n), [axis]))
    return out


def _slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    rank = len(shape)
    stride = ints(stride) if stride is not None else [1] * rank
    bm = py(begin_mask) or [False] * rank
    em = py(end_mask) or [False] * rank
    sm = py(squeeze_mask) or [False] * rank
    begin, end = ints(begin), ints(end)
    index = []
    for axis in range(rank):
        if sm[axis]:
            index.append(begin[axis] % shape[axis])
            continue
        idx = list(range(*slice(None if bm[axis] else begin[axis],
                                None if em[axis] else end[axis], stride[axis]).indices(shape[axis])))
        index.append(torch.tensor(idx, dtype=torch.long))
    return index


@op()
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None,
                 squeeze_mask=None):
    """x with x[slice] = update, the slice as slice_by_index defines it."""
    index = _slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    tensors = [i for i in index if isinstance(i, torch.Tensor)]
    grids = iter(torch.meshgrid(*tensors, indexing="ij")) if tensors else iter(())
    full = tuple(next(grids).to(x.device) if isinstance(i, torch.Tensor) else i for i in index)
    out = x.clone()
    out[full] = update.to(x.dtype).reshape(out[full].shape)
    return out


@op()
def sliding_windows(x, axis, size, stride=None):
    """Windows of ``size`` along ``axis``, ``stride`` apart, as a new axis after ``axis``."""
    a = int(py(axis)) % x.dim()
    return x.unfold(a, int(py(size)), int(py(stride) or 1)).movedim(-1, a + 1)
