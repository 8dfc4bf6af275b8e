"""Torch op converters that coremltools 9.0 lacks or gets wrong, registered on import.

Importing this module registers them with coremltools' own `register_torch_op`, so every
`ct.convert` in the process uses them (the convert stage and the search import it). Each
converter follows the torch op's documented semantics and builds plain MIL ops that
coremltools' own converters also emit, so the FP16 pass and the emulator treat them like
any other op. Needed by `transformers` models (tests/test_transformers.py):

- `new_ones`: transformers' mask functions (`masking_utils.and_masks`) start from
  `q_idx.new_ones((), dtype=torch.bool)`; coremltools has `new_zeros` and `new_full` but no
  `new_ones`, so BertModel with an attention mask does not convert.
- `scaled_dot_product_attention` with `enable_gqa=True`: transformers passes it for
  grouped-query attention (Llama with fewer key/value heads than query heads); coremltools'
  converter ignores the argument and fails to broadcast the key/value heads.
- `diff`: transformers' `masking_utils.find_packed_sequence_indices` takes
  `torch.diff(position_ids, prepend=...)` whenever it traces a decoder without an attention
  mask (LlamaModel); coremltools has no `diff`.
- `__and__` under torch.export (`aten.__and__.Tensor`, the same mask functions): coremltools
  converts it from TorchScript (as `and`), but its torch.export frontend checks the registry
  for the name `__and__` before stripping the underscores, and refuses the node.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from pipeline.coreml_import import coremltools

coremltools()  # the first import of coremltools, without its Linux proxy warnings
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.frontend.torch import register_torch_op  # noqa: E402
from coremltools.converters.mil.frontend.torch.ops import (  # noqa: E402
    _get_inputs, _get_kwinputs)
from coremltools.converters.mil.frontend.torch.torch_op_registry import (  # noqa: E402
    _TORCH_OPS_REGISTRY)
from coremltools.converters.mil.frontend.torch.utils import (  # noqa: E402
    NUM_TO_DTYPE_STRING, TORCH_DTYPE_TO_NUM)
from coremltools.converters.mil.mil import types  # noqa: E402

_COREMLTOOLS_SDPA = _TORCH_OPS_REGISTRY.get_func("scaled_dot_product_attention")


def _dtype_string(dtype_var, like) -> str:
    """The MIL dtype name of a torch `dtype=` argument (a ScalarType number), else `like`'s."""
    value = None if dtype_var is None else dtype_var.val
    if value is None:
        return types.builtin_to_string(like.dtype)
    if isinstance(value, torch.dtype):  # torch.export passes the dtype itself
        value = TORCH_DTYPE_TO_NUM[value]
    name = NUM_TO_DTYPE_STRING[int(value)]
    return {"int64": "int32", "fp64": "fp32"}.get(name, name)  # MIL has no 64-bit types


@register_torch_op
def new_ones(context, node):
    """`x.new_ones(size, dtype=None)`: ones of `size`, in `dtype`, else in x's dtype."""
    inputs = _get_inputs(context, node, min_expected=2)
    x, size = inputs[0], inputs[1]
    dtype = _get_kwinputs(context, node, "dtype", default=[inputs[2] if len(inputs) > 2 else None])[0]
    target = _dtype_string(dtype, x)
    if isinstance(size, list):  # a size built from runtime values
        size = mb.concat(values=size, axis=0) if size else mb.const(val=np.zeros(0, np.int32))
    if size.val is not None:  # a static size, as in every static-shape trace: one constant
        np_dtype = types.nptype_from_builtin(types.string_to_builtin(target))
        ones = np.ones(tuple(int(d) for d in np.atleast_1d(size.val)), np_dtype)
        context.add(mb.const(val=ones if ones.ndim else ones[()], name=node.name))
    elif target == "fp32":
        context.add(mb.fill(shape=size, value=1.0, name=node.name))
    else:
        context.add(mb.cast(x=mb.fill(shape=size, value=1.0), dtype=target, name=node.name))


@register_torch_op
def diff(context, node):
    """torch.diff(x, n=1, dim=-1, prepend=None, append=None): `n` times x[1:] - x[:-1] along
    `dim` (xor for bools) of prepend ++ x ++ append; static shapes."""
    inputs = _get_inputs(context, node, min_expected=1) + [None] * 4
    x = inputs[0]
    n, dim, prepend, append = (_get_kwinputs(context, node, key, default=[inputs[i]])[0]
                               for i, key in enumerate(("n", "dim", "prepend", "append"), 1))
    n = 1 if n is None else int(n.val)
    dim = (-1 if dim is None else int(dim.val)) % x.rank
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = mb.concat(values=parts, axis=dim)
    for step in range(n):
        length = x.shape[dim]
        if not isinstance(length, int):
            raise NotImplementedError("diff needs a static size along its dim")
        begin, end = [0] * x.rank, list(x.shape)
        later = mb.slice_by_index(x=x, begin=begin[:dim] + [1] + begin[dim + 1:], end=end)
        earlier = mb.slice_by_index(x=x, begin=begin, end=end[:dim] + [length - 1] + end[dim + 1:])
        name = node.name if step == n - 1 else None
        op = mb.logical_xor if types.is_bool(x.dtype) else mb.sub
        x = op(x=later, y=earlier, name=name) if name else op(x=later, y=earlier)
    context.add(x, node.name)


def _repeat_heads(x, repeats: int, name: str):
    """torch.repeat_interleave(x, repeats, dim=-3) for a static shape [..., H, S, D]."""
    shape = list(x.shape)
    expanded = mb.expand_dims(x=x, axes=[-3])                       # [..., H, 1, S, D]
    tiled = mb.tile(x=expanded, reps=[1] * (len(shape) - 2) + [repeats, 1, 1])
    return mb.reshape(x=tiled, shape=shape[:-3] + [shape[-3] * repeats] + shape[-2:], name=name)


@register_torch_op(override=True)
def scaled_dot_product_attention(context, node):
    """coremltools' converter, after repeating the key/value heads when `enable_gqa` is set.

    torch semantics (torch.nn.functional.scaled_dot_product_attention, enable_gqa): the
    key and value heads are repeated with repeat_interleave along dim -3 up to the query's.
    """
    inputs = _get_inputs(context, node, min_expected=3)
    gqa = inputs[7] if len(inputs) > 7 else None
    gqa = _get_kwinputs(context, node, "enable_gqa", default=[gqa])[0]
    q, k, v = inputs[:3]
    if gqa is None or not gqa.val or q.shape[-3:-2] == k.shape[-3:-2]:
        return _COREMLTOOLS_SDPA(context, node)
    if any(not isinstance(d, int) for x in (q, k, v) for d in x.shape):
        raise NotImplementedError("scaled_dot_product_attention with enable_gqa=True needs static "
                                  "shapes")
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if heads % kv_heads or v.shape[-3] != kv_heads:
        raise ValueError(f"scaled_dot_product_attention with enable_gqa=True: {heads} query heads "
                         f"are not a multiple of {kv_heads} key/value heads")
    names = list(node.inputs)
    for i, var in ((1, k), (2, v)):
        names[i] = f"{node.name}_{'kv'[i - 1]}_repeated"
        context.add(_repeat_heads(var, heads // kv_heads, names[i]), names[i])
    plain = copy.copy(node)
    plain.inputs = names[:7]
    if plain.kwinputs:
        plain.kwinputs = {k: v for k, v in plain.kwinputs.items() if k != "enable_gqa"}
    return _COREMLTOOLS_SDPA(context, plain)


# coremltools' own converter for `and` (bitwise_and on bools), under the name its torch.export
# frontend looks up; `register_torch_op` refuses names ending in "_" (it reads them as in-place).
_TORCH_OPS_REGISTRY.set_func_by_name(_TORCH_OPS_REGISTRY.get_func("and"), "__and__")
