"""coremltools' FP16 pass, as the emulator applies it to an FP32 program without converting.

The rules of ``FP16ComputePrecision`` (coremltools/converters/mil/mil/passes/defs/
quantization.py, coremltools 8.x), each reused from coremltools where it is a function:
- an op is transformed when one of its parameters that the pass may cast reads an FP32 value
  (``transform_op``: chosen by its FP32 inputs, not its outputs; an op with FP32 inputs and
  an int or bool output, e.g. ``greater``, still reads FP16 inputs);
- ops of ``_UNSUPPORTED_FP16_OPS`` (cast, control flow, lists, state) are never transformed;
- an op with an FP32 const input beyond FP16's range (|c| > 65504, infinities aside) stays
  FP32 (``fp16_overflow``);
- a parameter is cast only if ``should_cast_parameter`` says so: its type domain admits fp16,
  and from iOS17 the alpha/beta of activations and the epsilon of inverse/log/rsqrt stay FP32;
- a const of fewer than 400 values that rounds to 0 in FP16 but is not 0 in FP32 becomes
  +-2^-24, the smallest FP16 subnormal (``_check_underflow_to_zero``): layer_norm's eps 1e-12
  becomes 6e-8, not 0.
Ops inside nested blocks (loop bodies, branches) are left as converted (the pass recurses into
them; the emulator's virtual program does not yet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

UNDERFLOW_MAX_VALUES = 400          # _check_underflow_to_zero skips larger arrays
FP16_TINY = float(np.nextafter(np.float16(0), np.float16(1)))   # 2^-24
FP32_TINY = float(np.nextafter(np.float32(0), np.float32(1)))   # 2^-149


@dataclass(frozen=True)
class OpRule:
    """What the pass may do to one op of the FP32 program."""
    valid: bool                 # not an unsupported op type, no overflowing FP32 const
    castable: frozenset         # parameter names should_cast_parameter admits


def rules(program) -> dict[str, OpRule]:
    """The pass's rule for every top-level op of the program's main function, by op name."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    fp16 = FP16ComputePrecision(op_selector=lambda op: True)
    func = program.functions["main"]
    out: dict[str, OpRule] = {}
    with func:  # should_cast_parameter reads the opset of the enclosing function (iOS17 rules)
        for op in func.operations:
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                continue
            valid = op.op_type not in fp16._UNSUPPORTED_FP16_OPS and not fp16.fp16_overflow(op)
            castable = frozenset(p for p in op.inputs if fp16.should_cast_parameter(op, p))
            out[op.name] = OpRule(valid, castable)
    return out


def transforms(rule: OpRule | None, args, dtype_of) -> bool:
    """Whether the pass rewrites this op: valid, and a castable parameter reads FP32.
    ``dtype_of(name)`` is the dtype a value has at this point of the (virtual) program."""
    if rule is None or not rule.valid:
        return False
    for param, kind, payload in args:
        if param in rule.castable and any(dtype_of(n) == "fp32"
                                          for n in (payload if kind == 2 else [payload])):
            return True
    return False


def half_const(value: torch.Tensor) -> torch.Tensor:
    """An FP32 const as the pass stores it in FP16 (as float32 values): rounded to half, and
    in arrays of fewer than 400 values, nonzero values that round to 0 become +-2^-24."""
    half = value.to(torch.float16).to(value.dtype)
    if value.numel() < UNDERFLOW_MAX_VALUES:
        lost = (half == 0) & (value.abs() > FP32_TINY)
        if bool(lost.any()):
            half = torch.where(lost, torch.sign(value) * FP16_TINY, half)
    return half


def half_const_as(value: Any, native: bool) -> Any:
    half = half_const(value.float())
    return half.to(torch.float16) if native else half
