"""Control flow: coremltools/converters/mil/mil/ops/defs/iOS15/control_flow.py."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, t


@op()
def select(cond, a, b):
    a_t = t(a, b if isinstance(b, torch.Tensor) else None)
    b_t = t(b, a_t)
    return torch.where(t(cond).bool(), a_t, b_t)
