"""Image resizing, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/image_resizing.py, iOS16/.., iOS17/image_resizing.py."""
from __future__ import annotations

import math

import torch

from pipeline.emulator.ops.base import op, py, ints, scalar


def _linear_resample(x, axis: int, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` along ``axis`` at fractional ``coords`` (already clamped to the input)."""
    size = x.shape[axis]
    lo = coords.floor().long().clamp(0, size - 1)
    hi = (lo + 1).clamp(max=size - 1)
    frac = (coords - lo.to(coords.dtype)).to(x.dtype)
    shape = [1] * x.dim()
    shape[axis] = -1
    a, b = x.index_select(axis, lo), x.index_select(axis, hi)
    return a + (b - a) * frac.reshape(shape)


def _grid(x_in: int, x_out: int, mode: str, device) -> torch.Tensor:
    i = torch.arange(x_out, dtype=torch.float64, device=device)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if x_out == 1:
            g = torch.full_like(i, (x_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            g = i * (x_in - 1) / (x_out - 1)
    elif mode == "DEFAULT":
        g = i * x_in / x_out
    elif mode == "OFFSET_CORNERS":
        delta = max(1, x_in - 1) / x_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = x_in / x_out
        g = i * spacing + 0.5 * spacing - 0.5
    else:
        raise ValueError(f"sampling mode {mode!r}")
    return g.clamp(0, x_in - 1).float()


def _bilinear(x, out_h: int, out_w: int, mode: str):
    y = _linear_resample(x, x.dim() - 2, _grid(x.shape[-2], out_h, mode, x.device))
    return _linear_resample(y, y.dim() - 1, _grid(x.shape[-1], out_w, mode, x.device))


@op()
def upsample_bilinear(x, scale_factor_height=None, scale_factor_width=None, align_corners=None,
                      half_pixel_centers=None):
    sh, sw = scalar(scale_factor_height, 1.0), scalar(scale_factor_width, 1.0)
    out_h, out_w = int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw))
    ac = True if align_corners is None else bool(py(align_corners))
    hp = (not ac) if half_pixel_centers is None else bool(py(half_pixel_centers))
    mode = "STRICT_ALIGN_CORNERS" if ac else ("UNALIGN_CORNERS" if hp else "DEFAULT")
    return _bilinear(x, out_h, out_w, mode)


@op()
def resize_bilinear(x, target_size_height=None, target_size_width=None, sampling_mode=None):
    out_h = int(py(target_size_height) or 1)
    out_w = int(py(target_size_width) or 1)
    return _bilinear(x, out_h, out_w, py(sampling_mode) or "DEFAULT")


def _nearest(x, out_h: int, out_w: int):
    ih = (torch.arange(out_h, device=x.device) * x.shape[-2] // out_h).clamp(max=x.shape[-2] - 1)
    iw = (torch.arange(out_w, device=x.device) * x.shape[-1] // out_w).clamp(max=x.shape[-1] - 1)
    return x.index_select(x.dim() - 2, ih).index_select(x.dim() - 1, iw)


@op()
def upsample_nearest_neighbor(x, scale_factor_height=None, scale_factor_width=None):
    sh, sw = scalar(scale_factor_height, 1.0), scalar(scale_factor_width, 1.0)
    out_h, out_w = int(math.floor(x.shape[-2] * sh)), int(math.floor(x.shape[-1] * sw))
    if sh == int(sh) and sw == int(sw):
        return x.repeat_interleave(int(sh), dim=-2).repeat_interleave(int(sw), dim=-1)
    return _nearest(x, out_h, out_w)


@op()
def resize_nearest_neighbor(x, target_size_height=None, target_size_width=None):
    return _nearest(x, int(py(target_size_height) or 1), int(py(target_size_width) or 1))


@op()
def crop(x, crop_height, crop_width):
    ch, cw = ints(crop_height), ints(crop_width)
    return x[..., ch[0]: x.shape[-2] - ch[1], cw[0]: x.shape[-1] - cw[1]]
