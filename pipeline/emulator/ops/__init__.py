"""MIL op semantics in torch, one module per family of coremltools' op definitions
(coremltools/converters/mil/mil/ops/defs/iOS15..iOS18, and coreml_dialect), so each module
reads against its source. Every op registers itself in ``OPS`` with the ``@op`` decorator
(see base.py)."""
from pipeline.emulator.ops import (  # noqa: F401 - importing a family registers its ops
    activation, classify, constexpr, control_flow, conv, elementwise_binary,
    elementwise_unary, image_resizing, linear, normalization, pool, quantization, random,
    recurrent, reduction, scatter_gather, states, tensor_operation, tensor_transformation,
    transformers,
)
from pipeline.emulator.ops.base import OPS, VALUE_PRESERVING, kernel, op

__all__ = ["OPS", "VALUE_PRESERVING", "kernel", "op"]
