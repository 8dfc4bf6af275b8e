"""MIL op semantics in torch, one function per op type, following coremltools' op definitions
(coremltools/converters/mil/mil/ops/defs/iOS15..iOS18).

Each function takes the op's inputs by their MIL parameter names: tensors as torch tensors,
const parameters (axes, strides, modes) as Python values, and returns a tensor (or a tuple
for ops with several outputs). Optional parameters take the documented defaults. Rounding
to the declared output dtype happens in the runtime, not here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable[..., Any]] = {}

# Ops whose float outputs are exact selections or copies of their float inputs: when every
# float input already holds FP16 values, rounding the output to FP16 changes nothing.
VALUE_PRESERVING = {
    "identity", "reshape", "reshape_like", "transpose", "squeeze", "expand_dims", "flatten2d",
    "slice_by_index", "slice_by_size", "concat", "split", "stack", "tile", "reverse",
    "gather", "gather_along_axis", "gather_nd", "depth_to_space", "space_to_depth",
    "pixel_shuffle", "pixel_unshuffle", "max_pool", "relu", "relu6", "reduce_max",
    "reduce_min", "upsample_nearest_neighbor", "resize_nearest_neighbor", "crop", "topk",
    "select", "maximum", "minimum", "clip", "threshold", "pad", "band_part", "sort",
}


def op(*names: str):
    def register(fn):
        for name in names or (fn.__name__,):
            OPS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------- helpers

def py(value: Any) -> Any:
    """A const parameter as a plain Python value (lists for tensors)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def ints(value: Any) -> list[int]:
    v = py(value)
    return [int(v)] if isinstance(v, (int, float, bool)) else [int(a) for a in v]


def axes_of(axes: Any, rank: int) -> list[int] | None:
    if axes is None:
        return None
    return sorted(a % rank if rank else 0 for a in ints(axes))


def t(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    dtype = like.dtype if like is not None and like.is_floating_point() else None
    device = like.device if like is not None else None
    return torch.as_tensor(value, dtype=dtype, device=device)


def scalar(value: Any, default: float) -> float:
    return default if value is None else float(py(value))


# ---------------------------------------------------------------- elementwise binary

_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "maximum": torch.maximum,
    "minimum": torch.minimum, "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt,
    "less_equal": torch.le, "greater": torch.gt, "greater_equal": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor, "mod": torch.remainder,
}


def _binary(fn):
    def run(x, y):
        return fn(t(x, y if isinstance(y, torch.Tensor) else None), t(y, x if isinstance(x, torch.Tensor) else None))
    return run


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


@op()
def real_div(x, y):
    x, y = t(x), t(y)
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return torch.div(x, y)


@op()
def floor_div(x, y):
    return torch.div(t(x), t(y), rounding_mode="floor")


@op()
def pow(x, y):  # noqa: A001 - MIL's name
    x = t(x)
    return torch.pow(x, t(y, x))


# ---------------------------------------------------------------- elementwise unary

_UNARY = {
    "abs": torch.abs, "acos": torch.acos, "asin": torch.asin, "atan": torch.atan,
    "atanh": torch.atanh, "ceil": torch.ceil, "cos": torch.cos, "cosh": torch.cosh,
    "erf": torch.erf, "exp": torch.exp, "exp2": torch.exp2, "floor": torch.floor,
    "logical_not": torch.logical_not, "round": torch.round, "sign": torch.sign,
    "sin": torch.sin, "sinh": torch.sinh, "sqrt": torch.sqrt, "square": torch.square,
    "tan": torch.tan, "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
    "identity": lambda x: x, "softsign": F.softsign,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda f: lambda x: f(t(x)))(_fn)


@op()
def clip(x, alpha, beta):
    return torch.clamp(x, scalar(alpha, 0.0), scalar(beta, 0.0))


@op()
def threshold(x, alpha):
    return torch.clamp_min(x, scalar(alpha, 0.0))


@op()
def inverse(x, epsilon=None):
    return 1.0 / (x + scalar(epsilon, 1e-4))


@op()
def log(x, epsilon=None):
    return torch.log(x + scalar(epsilon, 1e-45))


@op()
def rsqrt(x, epsilon=None):
    return torch.rsqrt(x + scalar(epsilon, 1e-12))


@op()
def cast(x, dtype):
    return x  # the runtime converts to the declared output dtype


# ---------------------------------------------------------------- activations

@op()
def gelu(x, mode=None):
    mode = py(mode) or "EXACT"
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(f"gelu mode {mode!r}")


@op()
def silu(x):
    return F.silu(x)


@op()
def relu6(x):
    return torch.clamp(x, 0.0, 6.0)


@op()
def clamped_relu(x, alpha, beta):
    a, b = scalar(alpha, 0.0), scalar(beta, 0.0)
    return torch.clamp_max(torch.clamp_min(x, 0) + torch.clamp_max(x, 0) * a, b)


@op()
def elu(x, alpha=None):
    return F.elu(x, scalar(alpha, 1.0))


@op()
def leaky_relu(x, alpha=None):
    return F.leaky_relu(x, scalar(alpha, 0.01))


@op()
def linear_activation(x, alpha, beta=None):
    return x * scalar(alpha, 1.0) + scalar(beta, 0.0)


def _channel_param(p, x):
    p = t(p, x).reshape(-1)
    return p.reshape([1, -1] + [1] * (x.dim() - 2))


@op()
def prelu(x, alpha):
    a = _channel_param(alpha, x)
    return torch.where(x >= 0, x, x * a)


@op()
def scaled_tanh(x, alpha=None, beta=None):
    return scalar(alpha, 1.0) * torch.tanh(x * scalar(beta, 1.0))


@op()
def sigmoid_hard(x, alpha=None, beta=None):
    return torch.clamp(x * scalar(alpha, 0.2) + scalar(beta, 0.5), 0.0, 1.0)


@op()
def softplus(x):
    return F.softplus(x)


@op()
def softplus_parametric(x, alpha, beta):
    return _channel_param(alpha, x) * F.softplus(x * _channel_param(beta, x))


@op()
def thresholded_relu(x, alpha=None):
    a = scalar(alpha, 1.0)
    return torch.where(x >= a, x, torch.zeros_like(x))


@op()
def softmax(x, axis=None):
    return torch.softmax(x, dim=-1 if axis is None else int(py(axis)))


# ---------------------------------------------------------------- linear algebra

@op()
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


@op()
def matmul(x, y, transpose_x=None, transpose_y=None):
    x, y = t(x, y if isinstance(y, torch.Tensor) else None), t(y, x)
    if py(transpose_x) and x.dim() > 1:
        x = x.transpose(-1, -2)
    if py(transpose_y) and y.dim() > 1:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@op()
def einsum(values, equation):
    return torch.einsum(py(equation), *values)


# ---------------------------------------------------------------- convolution and pooling

def _spatial_pads(pad_type, pad, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """Per spatial dim (begin, end) padding, as conv/pool define it."""
    n = len(in_sizes)
    pad_type = (py(pad_type) or "valid").lower()
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = ints(pad) if pad is not None else [0] * (2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    out = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if pad_type == "same" else (big, small))
    return out


def _torch_pad(x, pads: list[tuple[int, int]], value: float = 0.0):
    flat = [a for begin_end in reversed(pads) for a in begin_end]
    return F.pad(x, flat, value=value) if any(flat) else x


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op()
def conv(x, weight, bias=None, strides=None, pad_type=None, pad=None, dilations=None,
         groups=None):
    n = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * n
    dilations = ints(dilations) if dilations is not None else [1] * n
    pads = _spatial_pads(pad_type, pad, x.shape[2:], weight.shape[2:], strides, dilations)
    padding: Any = 0
    if all(b == e for b, e in pads):
        padding = [b for b, _ in pads]
    else:
        x = _torch_pad(x, pads)
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
            y = _torch_pad(y, pads)
            e = 0
            size = y.shape[2 + i]
        y = y.narrow(2 + i, b, size - b - e)
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * n)
    return y


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, kind, exclude_padding=False):
    n = len(ints(kernel_sizes))
    kernel = ints(kernel_sizes)
    strides = ints(strides) if strides is not None else [1] * n
    pads = _spatial_pads(pad_type, pad, x.shape[-n:], kernel, strides, [1] * n)
    ceil_mode = bool(py(ceil_mode))
    fn = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d),
          3: (F.max_pool3d, F.avg_pool3d)}[n]
    if kind == "max":
        xp = _torch_pad(x, pads, value=-math.inf)
        return fn[0](xp, kernel, strides, 0, 1, ceil_mode)
    if kind == "l2":
        xp = _torch_pad(x * x, pads)
        return torch.sqrt(fn[1](xp, kernel, strides, 0, ceil_mode) * math.prod(kernel))
    xp = _torch_pad(x, pads)
    sums = fn[1](xp, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
    if exclude_padding and any(b or e for b, e in pads):
        ones = _torch_pad(torch.ones_like(x[..., :1, :, :] if n == 2 else x), pads)
        counts = fn[1](ones, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
        return sums / counts
    if ceil_mode:  # windows that run past the padded input average over what they cover
        ones = torch.ones_like(xp[..., :1, :, :] if n == 2 else xp)
        counts = fn[1](ones, kernel, strides, 0, ceil_mode, count_include_pad=True) * math.prod(kernel)
        return sums / counts
    return sums / math.prod(kernel)


@op()
def max_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "max")


@op()
def avg_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None,
             exclude_padding_from_average=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "avg",
                 bool(py(exclude_padding_from_average)))


@op()
def l2_pool(x, kernel_sizes, strides=None, pad_type=None, pad=None, ceil_mode=None):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, "l2")


# ---------------------------------------------------------------- normalization

def _broadcast_channels(p, x):
    return None if p is None else p.reshape([1, -1] + [1] * (x.dim() - 2))


def _channel_affine(y, gamma, beta):
    if gamma is not None:
        y = y * _broadcast_channels(gamma, y)
    if beta is not None:
        y = y + _broadcast_channels(beta, y)
    return y


@op()
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=None):
    eps = scalar(epsilon, 1e-5)
    y = (x - _broadcast_channels(mean, x)) * torch.rsqrt(_broadcast_channels(variance, x) + eps)
    return _channel_affine(y, gamma, beta)


@op()
def instance_norm(x, gamma=None, beta=None, epsilon=None):
    dims = list(range(2, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return _channel_affine((x - mean) / torch.sqrt(var + scalar(epsilon, 1e-5)), gamma, beta)


@op()
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=None):
    rank = x.dim()
    dims = axes_of(axes, rank) if axes is not None else list(range(rank))
    eps = scalar(epsilon, 1e-5)
    if dims == list(range(rank - len(dims), rank)):
        shape = x.shape[rank - len(dims):]
        return F.layer_norm(x, shape, gamma.reshape(shape) if gamma is not None else None,
                            beta.reshape(shape) if beta is not None else None, eps)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    shape = [x.shape[i] if i in dims else 1 for i in range(rank)]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op()
def l2_norm(x, epsilon=None):
    dims = list(range(max(x.dim() - 3, 0), x.dim()))
    return x / torch.sqrt((x * x).sum(dims, keepdim=True) + scalar(epsilon, 1e-6))


@op()
def local_response_norm(x, size, alpha=None, beta=None, k=None):
    return F.local_response_norm(x, int(py(size)), scalar(alpha, 1e-4), scalar(beta, 0.75),
                                 scalar(k, 1.0))


# ---------------------------------------------------------------- reductions

def _reduce(fn):
    def run(x, axes=None, keep_dims=None):
        keep = bool(py(keep_dims))
        dims = axes_of(axes, x.dim())
        if dims is None:
            dims = list(range(x.dim()))
        if not dims:
            return x
        return fn(x, dims, keep)
    return run


OPS["reduce_sum"] = _reduce(lambda x, d, k: torch.sum(x, d, keepdim=k))
OPS["reduce_mean"] = _reduce(lambda x, d, k: torch.mean(x, d, keepdim=k))
OPS["reduce_max"] = _reduce(lambda x, d, k: torch.amax(x, d, keepdim=k))
OPS["reduce_min"] = _reduce(lambda x, d, k: torch.amin(x, d, keepdim=k))
def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


OPS["reduce_prod"] = _reduce(_prod)
OPS["reduce_l1_norm"] = _reduce(lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k))
OPS["reduce_l2_norm"] = _reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)))
OPS["reduce_sum_square"] = _reduce(lambda x, d, k: torch.sum(x * x, d, keepdim=k))
OPS["reduce_log_sum"] = _reduce(lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)))
OPS["reduce_log_sum_exp"] = _reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k))


def _arg_reduce(fn):
    def run(x, axis=None, keep_dims=None, output_dtype=None):
        return fn(x, dim=int(py(axis) if axis is not None else -1), keepdim=bool(py(keep_dims)))
    return run


OPS["reduce_argmax"] = _arg_reduce(torch.argmax)
OPS["reduce_argmin"] = _arg_reduce(torch.argmin)


# ---------------------------------------------------------------- shapes and copies

@op()
def reshape(x, shape):
    target = ints(shape)
    if 0 in target and len(target) == x.dim():
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


@op()
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    shape: list[int] = []
    for ref, b, e, m in zip(ref_tensors, ints(begins), ints(ends), py(end_masks)):
        dims = list(ref.shape)
        shape += dims[b:] if m else dims[b:e]
    return x.reshape(shape)


@op()
def transpose(x, perm):
    return x.permute(ints(perm))


@op()
def squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    dims = axes_of(axes, x.dim())
    return x.squeeze(tuple(dims)) if dims else x


@op()
def expand_dims(x, axes):
    out_rank = x.dim() + len(ints(axes))
    for a in sorted(a % out_rank for a in ints(axes)):
        x = x.unsqueeze(a)
    return x


@op()
def flatten2d(x, axis=None):
    a = int(py(axis)) if axis is not None else 1
    a = a % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))


@op()
def shape(x, output_dtype=None):
    return torch.tensor(list(x.shape), dtype=torch.int32)


def _index_along(x, axis: int, idx: list[int]) -> torch.Tensor:
    if idx and all(b - a == 1 for a, b in zip(idx, idx[1:])):
        return x.narrow(axis, idx[0], len(idx))
    return x.index_select(axis, torch.tensor(idx, dtype=torch.long, device=x.device))


@op()
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None,
                   squeeze_mask=None):
    rank = x.dim()
    begin, end = ints(begin), ints(end)
    stride = ints(stride) if stride is not None else [1] * rank
    bm = py(begin_mask) or [False] * rank
    em = py(end_mask) or [False] * rank
    sm = py(squeeze_mask) or [False] * rank
    squeeze = []
    for axis in range(rank):
        size = x.shape[axis]
        if sm[axis]:
            x = x.narrow(axis, begin[axis] % size, 1)
            squeeze.append(axis)
            continue
        s = stride[axis]
        b = None if bm[axis] else begin[axis]
        e = None if em[axis] else end[axis]
        idx = list(range(*slice(b, e, s).indices(size)))
        if idx != list(range(size)):
            x = _index_along(x, axis, idx)
    return x.squeeze(tuple(squeeze)) if squeeze else x


@op()
def slice_by_size(x, begin, size):
    for axis, (b, s) in enumerate(zip(ints(begin), ints(size))):
        b = b % x.shape[axis] if x.shape[axis] else 0
        x = x.narrow(axis, b, x.shape[axis] - b if s == -1 else s)
    return x


@op()
def concat(values, axis, interleave=None):
    values = list(values)
    a = int(py(axis)) % values[0].dim()
    dtype = torch.promote_types(values[0].dtype, values[-1].dtype)
    values = [v.to(dtype) for v in values]
    if py(interleave):
        stacked = torch.stack(values, dim=a + 1)
        shape = list(values[0].shape)
        shape[a] *= len(values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=a)


@op()
def split(x, num_splits=None, split_sizes=None, axis=None):
    a = int(py(axis))
    if split_sizes is not None:
        return tuple(torch.split(x, ints(split_sizes), dim=a))
    return tuple(torch.chunk(x, int(py(num_splits)), dim=a))


@op()
def stack(values, axis):
    return torch.stack(list(values), dim=int(py(axis)))


@op()
def tile(x, reps):
    return x.repeat(ints(reps))


@op()
def reverse(x, axes=None):
    dims = axes_of(axes, x.dim()) if axes is not None else list(range(x.dim()))
    return torch.flip(x, dims)


@op()
def pad(x, pad, mode=None, constant_val=None):
    p = ints(pad)
    n = len(p) // 2
    pairs = [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    flat = [a for pr in reversed(pairs) for a in pr]
    mode = py(mode) or "constant"
    if mode == "constant":
        return F.pad(x, flat, value=scalar(constant_val, 0.0))
    # torch's reflect/replicate pad the last 1-3 dims of a (N, C, ...) tensor
    while len(flat) and flat[-2:] == [0, 0] and len(flat) // 2 > 1:
        flat = flat[:-2]
    lead = x.dim() - len(flat) // 2
    shape = x.shape
    y = x.reshape((-1,) + tuple(shape[lead:])).unsqueeze(0) if lead != 2 else x
    y = F.pad(y, flat, mode=mode)
    return y.reshape(tuple(shape[:lead]) + tuple(y.shape[-(len(flat) // 2):]))


@op()
def fill(shape, value=None):
    return torch.full(ints(shape), scalar(value, 0.0))


@op()
def fill_like(ref_tensor, value=None):
    return torch.full(ref_tensor.shape, scalar(value, 0.0))


@op()
def range_1d(end, start, step):
    vals = [py(v) for v in (start, end, step)]
    return torch.arange(vals[0], vals[1], vals[2])


@op()
def band_part(x, lower=None, upper=None):
    lo = int(py(lower)) if lower is not None else -1
    up = int(py(upper)) if upper is not None else -1
    m, n = x.shape[-2], x.shape[-1]
    i = torch.arange(m, device=x.device).unsqueeze(1)
    j = torch.arange(n, device=x.device).unsqueeze(0)
    keep = torch.ones(m, n, dtype=torch.bool, device=x.device)
    if lo >= 0:
        keep &= (i - j) <= lo
    if up >= 0:
        keep &= (j - i) <= up
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@op()
def cumsum(x, axis=None, exclusive=None, reverse=None):
    a = int(py(axis) or 0)
    if py(reverse):
        x = torch.flip(x, [a])
    y = torch.cumsum(x, dim=a)
    if py(exclusive):
        y = y - x
    return torch.flip(y, [a]) if py(reverse) else y


@op()
def one_hot(indices, one_hot_vector_size, axis=None, on_value=None, off_value=None):
    depth = int(py(one_hot_vector_size))
    indices = t(indices)
    hot = F.one_hot(indices.long().clamp_min(0), depth) * (indices >= 0).unsqueeze(-1)
    on, off = scalar(on_value, 1.0), scalar(off_value, 0.0)
    y = hot.float() * (on - off) + off
    a = int(py(axis)) if axis is not None else -1
    return torch.movedim(y, -1, a)


@op()
def argsort(x, axis=None, ascending=None, output_dtype=None):
    return torch.argsort(x, dim=int(py(axis) if axis is not None else -1),
                         descending=not bool(py(ascending)), stable=True)


@op()
def topk(x, k=None, axis=None, ascending=None, sort=None, return_indices=None,
         output_indices_dtype=None):
    kk = int(py(k)) if k is not None else 1
    values, indices = torch.topk(x, kk, dim=int(py(axis) if axis is not None else -1),
                                 largest=not bool(py(ascending)), sorted=True)
    return (values, indices) if return_indices is None or py(return_indices) else (values,)


@op()
def non_zero(x):
    return torch.nonzero(x)


@op()
def select(cond, a, b):
    a_t = t(a, b if isinstance(b, torch.Tensor) else None)
    b_t = t(b, a_t)
    return torch.where(t(cond).bool(), a_t, b_t)


@op()
def depth_to_space(x, block_size):
    bs = int(py(block_size))
    n, c, h, w = x.shape
    y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op()
def space_to_depth(x, block_size):
    bs = int(py(block_size))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


@op()
def pixel_shuffle(x, upscale_factor):
    return F.pixel_shuffle(x, int(py(upscale_factor)))


@op()
def pixel_unshuffle(x, downscale_factor):
    return F.pixel_unshuffle(x, int(py(downscale_factor)))


# ---------------------------------------------------------------- gather and scatter

def _long(indices, size: int | None = None):
    idx = t(indices).long()
    return torch.where(idx < 0, idx + size, idx) if size is not None else idx


@op()
def gather(x, indices, axis=None, batch_dims=None, validate_indices=None):
    a = int(py(axis) or 0) % x.dim()
    b = int(py(batch_dims) or 0)
    idx = _long(indices, x.shape[a])
    if b == 0:
        flat = x.index_select(a, idx.reshape(-1))
        return flat.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))
    outs = [gather(xi, ii, a - b, 0) for xi, ii in
            zip(x.reshape((-1,) + tuple(x.shape[b:])), idx.reshape((-1,) + tuple(idx.shape[b:])))]
    y = torch.stack(outs)
    return y.reshape(tuple(x.shape[:b]) + tuple(y.shape[1:]))


@op()
def gather_along_axis(x, indices, axis=None, validate_indices=None):
    a = int(py(axis) or 0) % x.dim()
    return torch.gather(x, a, _long(indices, x.shape[a]))


@op()
def gather_nd(x, indices, batch_dims=None, validate_indices=None):
    b = int(py(batch_dims) or 0)
    idx = t(indices).long()
    if b:
        outs = [gather_nd(xi, ii) for xi, ii in
                zip(x.reshape((-1,) + tuple(x.shape[b:])), idx.reshape((-1,) + tuple(idx.shape[b:])))]
        y = torch.stack(outs)
        return y.reshape(tuple(x.shape[:b]) + tuple(y.shape[1:]))
    k = idx.shape[-1]
    parts = tuple(torch.where(idx[..., i] < 0, idx[..., i] + x.shape[i], idx[..., i])
                  for i in range(k))
    return x[parts]


def _scatter_combine(mode: str, old, new):
    return {"update": lambda: new, "add": lambda: old + new, "sub": lambda: old - new,
            "mul": lambda: old * new, "div": lambda: old / new,
            "max": lambda: torch.maximum(old, new), "min": lambda: torch.minimum(old, new)}[mode]()


@op()
def scatter(data, indices, updates, axis=None, mode=None, validate_indices=None):
    a = int(py(axis) or 0) % data.dim()
    idx = _long(indices, data.shape[a]).reshape(-1)
    upd = updates.reshape(tuple(data.shape[:a]) + (idx.numel(),) + tuple(data.shape[a + 1:]))
    out = data.clone()
    m = py(mode) or "add"
    for j, i in enumerate(idx.tolist()):  # sequential: later updates see earlier ones
        cur = out.select(a, i)
        cur.copy_(_scatter_combine(m, cur, upd.select(a, j)))
    return out


@op()
def scatter_along_axis(data, indices, updates, axis=None, mode=None, validate_indices=None):
    a = int(py(axis) or 0) % data.dim()
    idx = _long(indices, data.shape[a])
    m = py(mode) or "add"
    if m == "update":
        return data.scatter(a, idx, updates)
    if m == "add":
        return data.scatter_add(a, idx, updates)
    if m == "sub":
        return data.scatter_add(a, idx, -updates)
    red = {"mul": "prod", "max": "amax", "min": "amin"}.get(m)
    if red:
        return data.scatter_reduce(a, idx, updates, red)
    return data.scatter_reduce(a, idx, 1.0 / updates, "prod")


@op()
def scatter_nd(data, indices, updates, mode=None, validate_indices=None):
    idx = t(indices).long()
    k = idx.shape[-1]
    out = data.clone()
    m = py(mode) or "add"
    flat_idx = idx.reshape(-1, k)
    flat_upd = updates.reshape((flat_idx.shape[0],) + tuple(data.shape[k:]))
    for j in range(flat_idx.shape[0]):
        pos = tuple(int(v) % data.shape[i] for i, v in enumerate(flat_idx[j].tolist()))
        out[pos] = _scatter_combine(m, out[pos], flat_upd[j])
    return out


# ---------------------------------------------------------------- resizing

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


# ---------------------------------------------------------------- attention, quantization

@op()
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    mask = None
    if attn_mask is not None:
        mask = attn_mask.bool() if attn_mask.dtype == torch.bool else attn_mask.to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def _along(p, x, axis):
    p = t(p, x if x.is_floating_point() else None)
    if p.dim() == 0 or axis is None:
        return p
    shape = [1] * x.dim()
    shape[int(py(axis)) % x.dim()] = -1
    return p.reshape(shape)


@op()
def dequantize(input, scale, zero_point=None, axis=None):  # noqa: A002 - MIL's name
    x = input.float()
    if zero_point is not None:
        x = x - _along(zero_point, input, axis).float()
    return x * _along(scale, input, axis).float()


@op()
def quantize(input, scale, output_dtype, zero_point=None, axis=None):  # noqa: A002
    q = torch.round(input / _along(scale, input, axis))
    if zero_point is not None:
        q = q + _along(zero_point, input, axis).float()
    lo, hi = (-128, 127) if py(output_dtype) == "int8" else (0, 255)
    return q.clamp(lo, hi)
