"""Tensor operations, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/tensor_operation.py, iOS16/.., iOS17/tensor_operation.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, py, ints, t, scalar


@op()
def identity(x):
    return x


@op()
def flatten2d(x, axis=None):
    a = int(py(axis)) if axis is not None else 1
    a = a % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))


@op()
def shape(x, output_dtype=None):
    return torch.tensor(list(x.shape), dtype=torch.int32)


@op()
def concat(values, axis, interleave=None):
    values = list(values)
    a = int(py(axis)) % values[0].dim()
    dtype = torch.promote_types(values[0].dtype, values[-1].dtype)
    values = [v.to(dtype) for v in values]
    if py(interleave):
        stacked = torch.stack(values, dim=a + 1)
        shape = list(values[0].shape)
        shape[a] *= len(values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=a)


@op()
def split(x, num_splits=None, split_sizes=None, axis=None):
    a = int(py(axis))
    if split_sizes is not None:
        return tuple(torch.split(x, ints(split_sizes), dim=a))
    return tuple(torch.chunk(x, int(py(num_splits)), dim=a))


@op()
def stack(values, axis):
    return torch.stack(list(values), dim=int(py(axis)))


@op()
def tile(x, reps):
    return x.repeat(ints(reps))


@op()
def pad(x, pad, mode=None, constant_val=None):
    p = ints(pad)
    n = len(p) // 2
    pairs = [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    flat = [a for pr in reversed(pairs) for a in pr]
    mode = py(mode) or "constant"
    if mode == "constant":
        return F.pad(x, flat, value=scalar(constant_val, 0.0))
    # torch's reflect/replicate pad the last 1-3 dims of a (N, C, ...) tensor
    while len(flat) and flat[-2:] == [0, 0] and len(flat) // 2 > 1:
        flat = flat[:-2]
    lead = x.dim() - len(flat) // 2
    shape = x.shape
    y = x.reshape((-1,) + tuple(shape[lead:])).unsqueeze(0) if lead != 2 else x
    y = F.pad(y, flat, mode=mode)
    return y.reshape(tuple(shape[:lead]) + tuple(y.shape[-(len(flat) // 2):]))


@op()
def fill(shape, value=None):
    return torch.full(ints(shape), scalar(value, 0.0))


@op()
def fill_like(ref_tensor, value=None):
    return torch.full(ref_tensor.shape, scalar(value, 0.0))


@op()
def range_1d(end, start, step):
    vals = [py(v) for v in (start, end, step)]
    return torch.arange(vals[0], vals[1], vals[2])


@op()
def band_part(x, lower=None, upper=None):
    lo = int(py(lower)) if lower is not None else -1
    up = int(py(upper)) if upper is not None else -1
    m, n = x.shape[-2], x.shape[-1]
    i = torch.arange(m, device=x.device).unsqueeze(1)
    j = torch.arange(n, device=x.device).unsqueeze(0)
    keep = torch.ones(m, n, dtype=torch.bool, device=x.device)
    if lo >= 0:
        keep &= (i - j) <= lo
    if up >= 0:
        keep &= (j - i) <= up
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@op()
def cumsum(x, axis=None, exclusive=None, reverse=None):
    a = int(py(axis) or 0)
    if py(reverse):
        x = torch.flip(x, [a])
    y = torch.cumsum(x, dim=a)
    if py(exclusive):
        y = y - x
    return torch.flip(y, [a]) if py(reverse) else y


@op()
def one_hot(indices, one_hot_vector_size, axis=None, on_value=None, off_value=None):
    depth = int(py(one_hot_vector_size))
    indices = t(indices)
    hot = F.one_hot(indices.long().clamp_min(0), depth) * (indices >= 0).unsqueeze(-1)
    on, off = scalar(on_value, 1.0), scalar(off_value, 0.0)
    y = hot.float() * (on - off) + off
    a = int(py(axis)) if axis is not None else -1
    return torch.movedim(y, -1, a)


@op()
def argsort(x, axis=None, ascending=None, output_dtype=None):
    return torch.argsort(x, dim=int(py(axis) if axis is not None else -1),
                         descending=not bool(py(ascending)), stable=True)


@op()
def topk(x, k=None, axis=None, ascending=None, sort=None, return_indices=None,
         output_indices_dtype=None):
    kk = int(py(k)) if k is not None else 1
    values, indices = torch.topk(x, kk, dim=int(py(axis) if axis is not None else -1),
                                 largest=not bool(py(ascending)), sorted=True)
    return (values, indices) if return_indices is None or py(return_indices) else (values,)


@op()
def non_zero(x):
    return torch.nonzero(x)


def _iou(a, b):
    """IoU of boxes in (center_x, center_y, width, height)."""
    def corners(v):
        return v[..., 0] - v[..., 2] / 2, v[..., 1] - v[..., 3] / 2, \
            v[..., 0] + v[..., 2] / 2, v[..., 1] + v[..., 3] / 2
    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) * \
        (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter)


def _greedy(boxes, score, ids, iou_threshold, max_boxes):
    keep: list[int] = []
    for i in sorted(ids, key=lambda k: -float(score[k])):
        if len(keep) == max_boxes:
            break
        if all(float(_iou(boxes[i], boxes[j])) <= iou_threshold for j in keep):
            keep.append(i)
    return keep


@op()
def non_maximum_suppression(boxes, scores, iou_threshold, max_boxes, score_threshold=None,
                            per_class_suppression=None):
    """Greedy NMS on each batch, boxes ranked by their best class score; outputs padded to
    ``max_boxes`` (zeros, index -1), at least one box kept (coremltools' op tests'
    reference, ops/tests/iOS14/test_tensor_operation.py). iOS17 has no score threshold."""
    n_batch, n_box, n_score = scores.shape
    k = int(py(max_boxes))
    iou_t = scalar(iou_threshold, 0.0)
    thr = scalar(score_threshold, float("-inf"))
    out_boxes = torch.zeros(n_batch, k, 4, dtype=boxes.dtype)
    out_scores = torch.zeros(n_batch, k, n_score, dtype=scores.dtype)
    out_ids = torch.full((n_batch, k), -1, dtype=torch.int32)
    counts = torch.zeros(n_batch, dtype=torch.int32)
    for b in range(n_batch):
        best = scores[b].max(-1)
        ids = [i for i in range(n_box) if float(best.values[i]) > thr]
        if py(per_class_suppression):
            keep = []
            for c in sorted({int(best.indices[i]) for i in ids}):
                keep += _greedy(boxes[b], best.values,
                                [i for i in ids if int(best.indices[i]) == c], iou_t, k)
            keep = sorted(keep, key=lambda i: -float(best.values[i]))[:k]
        else:
            keep = _greedy(boxes[b], best.values, ids, iou_t, k)
        keep = keep or [int(best.values.argmax())]
        n = len(keep)
        out_boxes[b, :n] = boxes[b, keep].cpu()
        out_scores[b, :n] = scores[b, keep].cpu()
        out_ids[b, :n] = torch.tensor(keep, dtype=torch.int32)
        counts[b] = n
    return out_boxes, out_scores, out_ids, counts
