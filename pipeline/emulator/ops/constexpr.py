"""Compressed weights, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS16/constexpr_ops.py and iOS18/compression.py. Their inputs are constants, so the runtime
folds them once when it builds the plan; these kernels take and return NumPy arrays."""
from __future__ import annotations

import numpy as np

from pipeline.emulator.ops.base import op, py

_NP = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8, "uint8": np.uint8,
       "int32": np.int32}


def _unpack(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Elements of ``nbits`` packed from the least significant bit up (iOS16 layout)."""
    bits = np.unpackbits(np.asarray(packed).astype(np.uint8), bitorder="little")
    bits = np.concatenate([bits, np.zeros((-bits.size) % nbits, np.uint8)]).reshape(-1, nbits)
    return (bits.astype(np.int32) << np.arange(nbits)).sum(1)[:count]


def _blocks(param: np.ndarray, shape) -> np.ndarray:
    """Repeat a per-block parameter along each axis to ``shape`` (blockwise quantization)."""
    for axis, (n, m) in enumerate(zip(shape, param.shape)):
        if m != n:
            param = np.repeat(param, n // m, axis)
    return param


def _to_rank(p: np.ndarray, rank: int, axis: int) -> np.ndarray:
    p = np.asarray(p)
    if p.ndim == 0:
        return p
    shape = [1] * rank
    shape[axis % rank] = -1
    return p.reshape(shape)


@op()
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """(q - zero_point) * scale, both per tensor or along ``axis``."""
    q = np.asarray(quantized_data)
    a = int(py(axis))
    zp = _to_rank(zero_point, q.ndim, a).astype(np.float32)
    s = np.asarray(scale)
    return ((q.astype(np.float32) - zp) * _to_rank(s, q.ndim, a)).astype(s.dtype)


@op()
def constexpr_cast(source_val, output_dtype):
    return np.asarray(source_val).astype(_NP[py(output_dtype)])


@op()
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    """iOS16: bit-packed indices into a flat table, reshaped to ``shape``. iOS18: an index
    tensor of the output's shape, a table per block (lut [*blocks, palettes, vector_size]);
    a vector table writes ``vector_size`` elements along ``vector_axis`` per index."""
    lut = np.asarray(lut)
    if shape is not None:
        shape = [int(s) for s in np.asarray(shape).reshape(-1)]
        nbits = int(np.log2(lut.size))
        return lut.reshape(-1)[_unpack(indices, nbits, int(np.prod(shape)))].reshape(shape)
    idx = np.asarray(indices).astype(np.int64)
    rank = idx.ndim
    vec = lut.shape[-1]
    tables = lut.reshape(lut.shape[:rank] + (lut.shape[-2] * vec,))
    block = [idx.shape[i] // lut.shape[i] for i in range(rank)]
    grid = np.meshgrid(*[np.arange(n) // b for n, b in zip(idx.shape, block)], indexing="ij")
    if vec == 1:
        return tables[tuple(grid) + (idx,)]
    a = int(py(vector_axis)) % rank
    parts = [tables[tuple(grid) + (idx * vec + k,)] for k in range(vec)]
    out = np.stack(parts, axis=a + 1)  # element k of each vector right after its index
    shape_out = list(idx.shape)
    shape_out[a] *= vec
    return out.reshape(shape_out)


@op()
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    """iOS16: a bit-packed mask over ``shape``; iOS18: a 0/1 mask tensor of the output's
    shape. Set positions take ``nonzero_data`` in row-major order, the rest zero."""
    data = np.asarray(nonzero_data)
    if shape is not None:
        shape = [int(s) for s in np.asarray(shape).reshape(-1)]
        bits = _unpack(mask, 1, int(np.prod(shape))).astype(bool).reshape(shape)
    else:
        bits = np.asarray(mask) != 0
    out = np.zeros(bits.shape, data.dtype)
    out[bits] = data
    return out


@op()
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """scale * (data - offset), scale and offset repeated over their blocks."""
    s = np.asarray(scale)
    d = np.asarray(data).astype(s.dtype)
    if offset is not None:
        d = d - _blocks(np.asarray(offset).astype(s.dtype), d.shape)
    return _blocks(s, d.shape) * d


@op()
def constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    """(mask, values): the table lookup of the set indices, kept sparse."""
    indices = constexpr_sparse_to_dense(indices_nonzero_data, indices_mask)
    dense = constexpr_lut_to_dense(indices, lut, vector_axis=vector_axis)
    mask = np.asarray(indices_mask)
    if np.asarray(lut).shape[-1] > 1:
        mask = np.repeat(mask, np.asarray(lut).shape[-1], axis=int(py(vector_axis)))
    return mask, dense[mask != 0].reshape(-1)


@op()
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    """(mask, values): blockwise shift-scale of the set values, kept sparse."""
    dense = constexpr_blockwise_shift_scale(constexpr_sparse_to_dense(nonzero_data, data_mask),
                                            scale, offset)
    mask = np.asarray(data_mask)
    return mask, dense[mask != 0].reshape(-1)
