"""Image resizing, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/image_resizing.py, iOS16/.., iOS17/image_resizing.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


@op()
def resize(x, shape, resized_dims, interpolation_mode=None, sampling_mode=None):
    """iOS17 resize: the last ``resized_dims`` dims of ``x`` take the last ones of ``shape``
    (0 keeps the dim of ``x``), sampled as resize_bilinear / resize_nearest_neighbor do."""
    n = int(py(resized_dims))
    target = ints(shape)[len(ints(shape)) - n:] if n else []
    mode = py(sampling_mode) or "DEFAULT"
    linear = (py(interpolation_mode) or "LINEAR") == "LINEAR"
    for i, size in enumerate(target):
        axis = x.dim() - n + i
        size = size or x.shape[axis]
        if linear:
            x = _linear_resample(x.float() if not x.is_floating_point() else x, axis,
                                 _grid(x.shape[axis], size, mode, x.device))
        elif mode == "DEFAULT":
            idx = (torch.arange(size, device=x.device) * x.shape[axis] // size)
            x = x.index_select(axis, idx.clamp(max=x.shape[axis] - 1))
        else:
            idx = torch.floor(_grid(x.shape[axis], size, mode, x.device) + 0.5).long()
            x = x.index_select(axis, idx)
    return x


def _sample_bilinear(img, ys, xs, pad_value: float):
    """img [C, H, W] sampled at pixel coordinates ys [h], xs [w] (a separable grid);
    points outside the image take ``pad_value``."""
    h, w = img.shape[-2:]
    inside = ((ys >= 0) & (ys <= h - 1)).unsqueeze(1) & ((xs >= 0) & (xs <= w - 1)).unsqueeze(0)
    y = _linear_resample(img, 1, ys.clamp(0, h - 1))
    out = _linear_resample(y, 2, xs.clamp(0, w - 1))
    return torch.where(inside, out, torch.full_like(out, pad_value))


def _box_points(start, end, n: int, mode: str) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        return start + i * (end - start) / (n - 1) if n > 1 else torch.full((1,), (start + end) / 2)
    if mode == "DEFAULT":
        return start + i * (end - start) / n
    if mode == "OFFSET_CORNERS":
        return start + (i + 0.5) * (end - start) / n
    if mode == "UNALIGN_CORNERS":
        return start + (i + 0.5) * (end - start) / n - 0.5
    raise ValueError(f"sampling mode {mode!r}")


@op()
def crop_resize(x, roi=None, boxes=None, box_indices=None, target_height=None,
                target_width=None, normalized_coordinates=None, spatial_scale=None,
                box_coordinate_mode=None, sampling_mode=None, pad_value=None):
    """Bilinear crops of ``x`` [B, C, H, W] at boxes: iOS15/16 ``roi`` [N, 1, 4|5, 1, 1]
    -> [N, B|1, C, h, w]; iOS17 ``boxes`` [N, 4] + ``box_indices`` -> [N, C, h, w]."""
    th, tw = int(py(target_height) or 1), int(py(target_width) or 1)
    norm = bool(py(normalized_coordinates))
    scale = scalar(spatial_scale, 1.0)
    cmode = py(box_coordinate_mode) or "CORNERS_HEIGHT_FIRST"
    smode = py(sampling_mode) or "DEFAULT"
    pad = scalar(pad_value, 0.0)
    h, w = x.shape[-2:]

    def crop(img, box):
        a, b, c, d = [float(v) * scale for v in box]
        if cmode == "CORNERS_HEIGHT_FIRST":
            y0, x0, y1, x1 = a, b, c, d
        elif cmode == "CORNERS_WIDTH_FIRST":
            x0, y0, x1, y1 = a, b, c, d
        elif cmode == "CENTER_SIZE_HEIGHT_FIRST":
            y0, x0, y1, x1 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
        else:  # CENTER_SIZE_WIDTH_FIRST
            x0, y0, x1, y1 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
        if norm:
            y0, y1, x0, x1 = y0 * (h - 1), y1 * (h - 1), x0 * (w - 1), x1 * (w - 1)
        ys = _box_points(y0, y1, th, smode).to(img.device)
        xs = _box_points(x0, x1, tw, smode).to(img.device)
        return _sample_bilinear(img, ys, xs, pad)

    if boxes is not None:  # iOS17
        bx = boxes.tolist()
        idx = ints(box_indices) if box_indices is not None else list(range(len(bx)))
        return torch.stack([crop(x[i], b) for i, b in zip(idx, bx)])
    rois = roi.reshape(roi.shape[0], -1).tolist()
    if len(rois[0]) == 5:
        return torch.stack([crop(x[int(r[0])], r[1:]).unsqueeze(0) for r in rois])
    return torch.stack([torch.stack([crop(img, r) for img in x]) for r in rois])


_PADDING = {"constant": "zeros", "border": "border", "reflection": "reflection"}


def _grid_sample(x, grid, sampling_mode, padding_mode, padding_value, align_corners):
    padding = py(padding_mode)
    if padding not in _PADDING:
        raise ValueError(f"padding mode {padding!r} (the emulator has constant, border, "
                         "reflection)")
    mode = "nearest" if py(sampling_mode) == "nearest" else "bilinear"
    value = scalar(padding_value, 0.0) if padding == "constant" else 0.0
    y = F.grid_sample(x - value, grid.to(x.dtype), mode=mode, padding_mode=_PADDING[padding],
                      align_corners=align_corners)
    return y + value


@op()
def resample(x, coordinates, sampling_mode, padding_mode, padding_value, coordinates_mode,
             align_corners):
    """x [B, C, H, W] sampled at ``coordinates`` [B, h, w, 2] ((x, y) pairs), as
    torch's grid_sample: normalized [-1, 1] coordinates or pixel ones."""
    cmode = py(coordinates_mode)
    grid = coordinates.float()
    ac = bool(py(align_corners))
    if cmode == "unnormalized":  # pixel indices: -1 and 1 are the corner pixels' centers
        size = torch.tensor([x.shape[-1] - 1, x.shape[-2] - 1], dtype=grid.dtype, device=grid.device)
        grid, ac = grid * 2 / size.clamp(min=1) - 1, True
    elif cmode == "normalized_zero_to_one":
        grid = grid * 2 - 1
    return _grid_sample(x, grid, sampling_mode, padding_mode, padding_value, ac)


@op()
def affine(x, transform_matrix, output_height, output_width, sampling_mode, padding_mode,
           padding_value, coordinates_mode, align_corners):
    """Output pixel (x, y), in normalized [-1, 1] coordinates, samples the input at
    (a0 x + a1 y + a2, b0 x + b1 y + b2): torch's affine_grid + grid_sample."""
    theta = transform_matrix.float().reshape(-1, 2, 3).expand(x.shape[0], 2, 3)
    ac = bool(py(align_corners))
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], int(py(output_height)),
                                 int(py(output_width))], align_corners=ac)
    return _grid_sample(x, grid, sampling_mode, padding_mode, padding_value, ac)
