"""Gather and scatter, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/scatter_gather.py, iOS16/.., iOS17/scatter_gather.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, py, t


def _long(indices, size: int | None = None):
    idx = t(indices).long()
    return torch.where(idx < 0, idx + size, idx) if size is not None else idx


@op()
def gather(x, indices, axis=None, batch_dims=None, validate_indices=None):
    a = int(py(axis) or 0) % x.dim()
    b = int(py(batch_dims) or 0)
    idx = _long(indices, x.shape[a])
    if b == 0:
        flat = x.index_select(a, idx.reshape(-1))
        return flat.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))
    outs = [gather(xi, ii, a - b, 0) for xi, ii in
            zip(x.reshape((-1,) + tuple(x.shape[b:])), idx.reshape((-1,) + tuple(idx.shape[b:])))]
    y = torch.stack(outs)
    return y.reshape(tuple(x.shape[:b]) + tuple(y.shape[1:]))


@op()
def gather_along_axis(x, indices, axis=None, validate_indices=None):
    a = int(py(axis) or 0) % x.dim()
    return torch.gather(x, a, _long(indices, x.shape[a]))


@op()
def gather_nd(x, indices, batch_dims=None, validate_indices=None):
    b = int(py(batch_dims) or 0)
    x, idx = t(x), t(indices).long()  # small consts arrive as lists
    if b:
        outs = [gather_nd(xi, ii) for xi, ii in
                zip(x.reshape((-1,) + tuple(x.shape[b:])), idx.reshape((-1,) + tuple(idx.shape[b:])))]
        y = torch.stack(outs)
        return y.reshape(tuple(x.shape[:b]) + tuple(y.shape[1:]))
    k = idx.shape[-1]
    parts = tuple(torch.where(idx[..., i] < 0, idx[..., i] + x.shape[i], idx[..., i])
                  for i in range(k))
    return x[parts]


def _scatter_combine(mode: str, old, new):
    return {"update": lambda: new, "add": lambda: old + new, "sub": lambda: old - new,
            "mul": lambda: old * new, "div": lambda: old / new,
            "max": lambda: torch.maximum(old, new), "min": lambda: torch.minimum(old, new)}[mode]()


@op()
def scatter(data, indices, updates, axis=None, mode=None, validate_indices=None):
    a = int(py(axis) or 0) % data.dim()
    idx = _long(indices, data.shape[a]).reshape(-1)
    upd = updates.reshape(tuple(data.shape[:a]) + (idx.numel(),) + tuple(data.shape[a + 1:]))
    out = data.clone()
    m = py(mode) or "add"
    for j, i in enumerate(idx.tolist()):  # sequential: later updates see earlier ones
        cur = out.select(a, i)
        cur.copy_(_scatter_combine(m, cur, upd.select(a, j)))
    return out


@op()
def scatter_along_axis(data, indices, updates, axis=None, mode=None, validate_indices=None):
    a = int(py(axis) or 0) % data.dim()
    idx = _long(indices, data.shape[a])
    m = py(mode) or "add"
    if m == "update":
        return data.scatter(a, idx, updates)
    if m == "add":
        return data.scatter_add(a, idx, updates)
    if m == "sub":
        return data.scatter_add(a, idx, -updates)
    red = {"mul": "prod", "max": "amax", "min": "amin"}.get(m)
    if red:
        return data.scatter_reduce(a, idx, updates, red)
    return data.scatter_reduce(a, idx, 1.0 / updates, "prod")


@op()
def scatter_nd(data, indices, updates, mode=None, validate_indices=None):
    idx = t(indices).long()
    k = idx.shape[-1]
    out = data.clone()
    m = py(mode) or "add"
    flat_idx = idx.reshape(-1, k)
    flat_upd = updates.reshape((flat_idx.shape[0],) + tuple(data.shape[k:]))
    for j in range(flat_idx.shape[0]):
        pos = tuple(int(v) % data.shape[i] for i, v in enumerate(flat_idx[j].tolist()))
        out[pos] = _scatter_combine(m, out[pos], flat_upd[j])
    return out
