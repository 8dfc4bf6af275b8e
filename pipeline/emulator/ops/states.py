"""State, as coremltools defines it: iOS18/states.py (read_state) and
coreml_dialect/ops.py (coreml_update_state). A state is a buffer that persists across
predictions (ct.StateType; the KV cache of an on-device LLM)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.emulator.ops.base import op


@dataclass
class State:
    """One state buffer: the runtime binds it to the program's state input."""
    value: torch.Tensor


@op()
def read_state(input):  # noqa: A002 - MIL's name
    return input.value


@op()
def coreml_update_state(state, value):
    """Write ``value`` into the state; the op's output is the value written."""
    state.value = value
    return value
