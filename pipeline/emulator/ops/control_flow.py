"""Control flow: coremltools/converters/mil/mil/ops/defs/iOS15/control_flow.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.emulator.ops.base import ints, op, py, t


@op()
def const(val):
    """A constant (the runtime folds consts into the plan; this is for completeness)."""
    return val


@op()
def select(cond, a, b):
    a_t = t(a, b if isinstance(b, torch.Tensor) else None)
    b_t = t(b, a_t)
    return torch.where(t(cond).bool(), a_t, b_t)


# Ops with nested blocks get ``blocks``: each block as a function of its inputs returning its
# outputs, run by the runtime (runtime.Emulator._block_runner).

@op()
def cond(pred, blocks):
    """Run the true block if ``pred`` holds, else the false block; their outputs are the op's."""
    true_fn, false_fn = blocks
    return tuple((true_fn if bool(t(pred)) else false_fn)())


@op()
def while_loop(loop_vars, blocks):
    """Run the body on the loop variables while the condition block returns true."""
    cond_fn, body = blocks
    values = list(loop_vars)
    while bool(t(cond_fn(*values)[0])):
        values = list(body(*values))
    return tuple(values)


# A MIL list: a growable array of same-shaped tensors, updated by value (each list_write or
# list_scatter returns a new list).

@dataclass(frozen=True)
class TensorList:
    items: tuple
    elem_shape: tuple
    dtype: str
    dynamic: bool

    def element(self, i: int) -> torch.Tensor:
        value = self.items[i] if i < len(self.items) else None
        if value is None:  # never written: zeros of the element shape
            device = next((v.device for v in self.items if v is not None), None)
            return torch.zeros(self.elem_shape, device=device,
                               dtype=_LIST_DTYPES.get(self.dtype, torch.float32))
        return value

    def written(self, index: int, value: torch.Tensor) -> "TensorList":
        if index >= len(self.items) and not self.dynamic:
            raise IndexError(f"list index {index} past the fixed length {len(self.items)}")
        items = list(self.items) + [None] * max(0, index + 1 - len(self.items))
        items[index] = value
        return TensorList(tuple(items), self.elem_shape, self.dtype, self.dynamic)


_LIST_DTYPES = {"fp32": torch.float32, "fp16": torch.float32, "int32": torch.int32,
                "bool": torch.bool}


@op()
def make_list(elem_shape, init_length=None, dynamic_length=None, dtype=None):
    length = 1 if init_length is None else int(py(init_length))
    dynamic = True if dynamic_length is None else bool(py(dynamic_length))
    return TensorList((None,) * length, tuple(int(py(s)) for s in elem_shape),
                      py(dtype) or "fp32", dynamic)


@op()
def list_length(ls):
    return torch.tensor(len(ls.items), dtype=torch.int32)


@op()
def list_read(ls, index):
    return ls.element(int(py(index)))


@op()
def list_write(ls, index, value):
    return ls.written(int(py(index)), value)


@op()
def list_gather(ls, indices):
    return torch.stack([ls.element(int(i)) for i in ints(indices)])


@op()
def list_scatter(ls, indices, value):
    for j, i in enumerate(ints(indices)):
        ls = ls.written(int(i), value[j])
    return ls
