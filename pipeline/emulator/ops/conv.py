"""Convolutions: coremltools/converters/mil/mil/ops/defs/iOS15/conv.py, iOS17/conv.py."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from pipeline.emulator.ops.base import ints, op, py, spatial_pads, t, torch_pad


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op()
def conv(x, weight, bias=None, strides=None, pad_type=None, pad=None, dilations=None,
         groups=None):
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    pads = spatial_pads(pad_type, pad, x.shape[2:], weight.shape[2:], strides, dilations)
    padding: Any = 0
    if all(b == e for b, e in pads):
        padding = [b for b, _ in pads]
    else:
        x = torch_pad(x, pads)
    return _CONV[n](x, weight, bias, strides, padding, dilations, int(py(groups) or 1))


@op()
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type=None,
                   strides=None, dilations=None, groups=None):
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    y = _CONV_T[n](x, weight, None, strides, 0, 0, int(py(groups) or 1), dilations)
    full = y.shape[2:]
    kind = (py(pad_type) or "valid").lower()
    if output_shape is not None:
        target = ints(output_shape)[-n:]
    else:
        target = None
    crops = []
    for i in range(n):
        if kind == "custom" and pad is not None:
            p = ints(pad)
            b, e = p[2 * i], p[2 * i + 1]
        elif kind in ("same", "same_lower"):
            want = target[i] if target else x.shape[2 + i] * strides[i]
            total = max(full[i] - want, 0)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if kind == "same" else (big, small)
        else:
            b, e = 0, 0
        if target is not None:
            e = full[i] - b - target[i]
        crops.append((b, e))
    for i, (b, e) in enumerate(crops):
        size = y.shape[2 + i]
        if e < 0:  # output_shape asks for more than the full transposed conv: zero-pad at the end
            pads = [(0, 0)] * n
            pads[i] = (0, -e)
            y = torch_pad(y, pads)
            e = 0
            size = y.shape[2 + i]
        y = y.narrow(2 + i, b, size - b - e)
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * n)
    return y


@op()
def conv_quantized(x, weight, quantization_type, quant_scale, quant_bias, bias=None, nbits=None,
                   strides=None, pad_type=None, pad=None, dilations=None, groups=None):
    """conv with a quantized weight: ``linear`` W = W_q * quant_scale + quant_bias;
    ``lut`` W = quant_scale[W_q] (quant_scale holds the 2^nbits table)."""
    weight, scale = t(weight), t(quant_scale, x)
    if py(quantization_type) == "lut":
        w = scale.reshape(-1)[weight.long()]
    else:
        w = weight.to(x.dtype) * scale + t(quant_bias, x)
    return conv(x, w.to(x.dtype), bias, strides, pad_type, pad, dilations, groups)
