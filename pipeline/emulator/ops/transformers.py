"""Attention: coremltools/converters/mil/mil/ops/defs/iOS18/transformers.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.emulator.ops.base import op, t


@op()
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    query, key, value = t(query), t(key), t(value)
    mask = None
    if attn_mask is not None:
        attn_mask = t(attn_mask)
        mask = attn_mask.bool() if attn_mask.dtype == torch.bool else attn_mask.to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
