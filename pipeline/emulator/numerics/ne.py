"""Neural Engine numerics (profiles/ne.yaml): op implementations that compute what the engine
computes, chosen per step at plan build time (apply.py). Inputs hold FP16 values in float32
tensors, as everywhere in the emulator; every rule cites its source in profiles/ne.yaml.

Mechanisms (see the profile for sources and confidence):
- multiply-accumulate ops (matmul, linear, einsum, conv, conv_transpose): products summed in
  4-lane tiles (fp16, subnormal tiles flushed on chips that flush), tiles of 128 terms summed
  wide, the running partial sum rounded to fp16 and checked against 2^15 at each tile
  boundary; the output too. Convolutions take a fast path when a bound on every partial sum
  (max|x| * per-channel sum|w|) stays below 2^15: then only the output is checked.
- activations: 33-knot piecewise-linear tables evaluated in fp16, inputs clamped.
- exp, log, softplus, softmax, reduce_log_sum_exp: as the engine composes them (the fused
  layer_norm runs without internal overflow: profiles/ne.yaml, layer_norm).
- NaN entering the engine becomes +inf; indeterminate forms give +0 (the output store).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable

import torch

from pipeline.emulator import ops
from pipeline.emulator.ops import base
from pipeline.emulator.numerics import Profile

INF = math.inf
TINY = 2.0 ** -14  # smallest normal fp16


def h(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 (kept as float32)."""
    return x.to(torch.float16).to(torch.float32)


def saturate(x: torch.Tensor, limit: float) -> torch.Tensor:
    """Values whose fp16 rounding reaches ``limit`` become inf, sign kept."""
    return torch.where(x.abs() >= limit, x * INF, x)


def nan_to_inf(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return torch.where(torch.isnan(x), torch.full_like(x, INF), x)
    if isinstance(x, list):
        return [nan_to_inf(v) for v in x]
    return x


def store(x: torch.Tensor) -> torch.Tensor:
    """The engine's output store: fp16 rounding; it never outputs NaN (indeterminate -> +0)."""
    y = h(x)
    return torch.nan_to_num_(y, nan=0.0, posinf=INF, neginf=-INF)


def saturate_raw(x: torch.Tensor, limit: float) -> torch.Tensor:
    """``saturate`` for values not yet rounded to fp16 (the store rounds them): those that
    round to >= limit become inf. One reduction when nothing is near the limit (the hot path)."""
    if not x.numel():
        return x
    lo, hi = torch.aminmax(x)
    edge = limit * (1 - 2.0 ** -12)  # rounds up to limit (ties to even) from here
    if max(-float(lo), float(hi)) < edge:
        return x
    return torch.where(x.abs() >= edge, x * INF, x)


# ---------------------------------------------------------------- multiply-accumulate

def _running(chunks: torch.Tensor, limit: float) -> torch.Tensor:
    """Sum tile partials (last dim) the engine's way: fp16 rounding and the 2^15 check of the
    running partial at every tile boundary."""
    acc = saturate(h(chunks[..., 0]), limit)
    for j in range(1, chunks.shape[-1]):
        acc = saturate(h(acc + chunks[..., j]), limit)
    return acc


def blocked_matmul(x: torch.Tensor, y: torch.Tensor, prof: Profile) -> torch.Tensor:
    """x [..., M, K] @ y [..., K, N] as the engine accumulates it."""
    limit = float(prof.value("accumulator_limit"))
    tile = int(prof.value("partial_sum_tile"))
    lanes = int(prof.value("lane_tile"))
    flush = bool(prof.value("subnormal_flush_accumulator"))
    K = x.shape[-1]
    M, N = x.shape[-2], y.shape[-1]
    pad = (-K) % tile
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
        y = torch.nn.functional.pad(y, (0, 0, 0, pad))
    n = (K + pad) // tile
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    numel = math.prod(batch) * M * N * (K + pad)
    if numel <= int(prof.value("exact_tile_budget")):
        # products in 4-lane tiles, each tile sum rounded to fp16 (flushed when subnormal)
        p = x.unsqueeze(-2) * y.transpose(-1, -2).unsqueeze(-3)          # [..., M, N, K]
        s = h(p.reshape(*p.shape[:-1], (K + pad) // lanes, lanes).sum(-1))
        if flush:
            s = torch.where(s.abs() < TINY, torch.zeros_like(s), s)
        chunks = s.reshape(*s.shape[:-1], n, tile // lanes).sum(-1)       # [..., M, N, n]
    else:  # approximation: 4-lane flush omitted (bounded by (K/4)*2^-14 per output)
        xc = x.reshape(*x.shape[:-1], n, tile).movedim(-2, -3)            # [..., n, M, T]
        yc = y.reshape(*y.shape[:-2], n, tile, N)                         # [..., n, T, N]
        chunks = torch.matmul(xc, yc).movedim(-3, -1)                     # [..., M, N, n]
    return _running(chunks, limit)


def matmul(prof: Profile) -> Callable:
    def run(x, y, transpose_x=None, transpose_y=None):
        x, y = base.t(x, y if isinstance(y, torch.Tensor) else None), base.t(y, x)
        if base.py(transpose_x) and x.dim() > 1:
            x = x.transpose(-1, -2)
        if base.py(transpose_y) and y.dim() > 1:
            y = y.transpose(-1, -2)
        if x.dim() < 2 or y.dim() < 2:
            return saturate(h(torch.matmul(x, y)), float(prof.value("accumulator_limit")))
        return blocked_matmul(x, y, prof)
    return run


def linear(prof: Profile) -> Callable:
    limit = float(prof.value("accumulator_limit"))

    def run(x, weight, bias=None):
        lead = x.shape[:-1]
        out = blocked_matmul(x.reshape(-1, x.shape[-1]), weight.transpose(0, 1), prof)
        if bias is not None:  # bias is added in the fp16 datapath after the accumulator
            out = saturate(h(out + bias), limit)
        return out.reshape(*lead, weight.shape[0])
    return run


def output_checked(fn: Callable, prof: Profile, min_terms: int = 2) -> Callable:
    """An accumulating op whose partial sums are bounded by its output (einsum, pooled sums):
    round, then the 2^15 check."""
    limit = float(prof.value("accumulator_limit"))

    def run(**kw):
        return saturate_raw(fn(**kw), limit)
    return run


def conv(prof: Profile) -> Callable:
    limit = float(prof.value("accumulator_limit"))
    tile = int(prof.value("partial_sum_tile"))

    w_l1: dict[int, torch.Tensor] = {}  # per weight tensor

    def run(x, weight, bias=None, **kw):
        groups = int(base.py(kw.get("groups")) or 1)
        taps = weight[0].numel()  # K = Cin/groups * kernel size
        if taps < 2:  # a single-tap conv does not go through the accumulator port
            return ops.OPS["conv"](x, weight, bias, **kw)
        if taps <= tile or groups != 1:  # one tile (or grouped): only the output is checked
            return saturate_raw(ops.OPS["conv"](x, weight, bias, **kw), limit)
        key = id(weight)
        if key not in w_l1:  # per (output, input) channel: sum over the kernel of |w|
            w_l1[key] = weight.abs().flatten(2).sum(2)
        # a bound on every partial sum: per input channel max |x| times sum |w| (a small
        # matrix-vector product); below 2^15 nothing inside the op can saturate
        peak = x.abs().amax(dim=[0] + list(range(2, x.dim())))
        bound = float((w_l1[key] @ peak).amax())
        if bias is not None:
            bound += float(bias.abs().amax())
        if bound < limit:  # only the output is checked
            return saturate_raw(ops.OPS["conv"](x, weight, bias, **kw), limit)
        per = max(1, tile // weight[0, 0].numel())  # input channels per tile of 128 terms
        parts = [ops.OPS["conv"](x[:, c:c + per], weight[:, c:c + per], None, **kw)
                 for c in range(0, x.shape[1], per)]
        out = _running(torch.stack(parts, -1), limit)
        if bias is not None:
            out = saturate(h(out + bias.reshape([1, -1] + [1] * (out.dim() - 2))), limit)
        return out
    return run


def conv_transpose(prof: Profile) -> Callable:
    limit = float(prof.value("accumulator_limit"))

    def run(x, weight, bias=None, **kw):
        y = ops.OPS["conv_transpose"](x, weight, bias, **kw)
        return saturate_raw(y, limit) if weight[0].numel() >= 2 else y
    return run


# ---------------------------------------------------------------- activation tables

def _knots(fn, lo: float, hi: float, n: int, placement: str) -> torch.Tensor:
    if placement == "uniform":
        return torch.linspace(lo, hi, n, dtype=torch.float64)
    grid = torch.linspace(lo, hi, 8193, dtype=torch.float64)  # density ~ sqrt|f''|
    f = fn(grid)
    d2 = torch.zeros_like(f)
    step = float(grid[1] - grid[0])
    d2[1:-1] = (f[2:] - 2 * f[1:-1] + f[:-2]).abs() / step ** 2
    dens = d2.sqrt() + 0.05 * float(d2.sqrt().mean())
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((dens[1:] + dens[:-1]) / 2, 0)])
    levels = torch.linspace(0, float(cdf[-1]), n, dtype=torch.float64)
    idx = torch.searchsorted(cdf, levels).clamp(1, len(grid) - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    w = ((levels - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
    k = grid[idx - 1] + w * step
    k[0], k[-1] = lo, hi
    return k


EXACT = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "erf": torch.erf,
    "gelu": lambda v: torch.nn.functional.gelu(v),
    "silu": lambda v: v * torch.sigmoid(v),
}


@lru_cache(maxsize=None)
def _table(name: str, lo: float, hi: float, n: int, placement: str):
    fn = EXACT[name]
    k = _knots(fn, lo, hi, n, placement)
    y = fn(k)
    slope = (y[1:] - y[:-1]) / (k[1:] - k[:-1])
    icpt = y[:-1] - slope * k[:-1]
    return (k.float(), h(slope.float()), h(icpt.float()))


def table(name: str, prof: Profile) -> Callable[[torch.Tensor], torch.Tensor]:
    spec = prof.rules["activation_table"]["tables"][name]
    n = int(prof.value("activation_table")["knots"])
    lo, hi = (float(v) for v in spec["domain"])
    knots, slope, icpt = _table(name, lo, hi, n, spec.get("knots", "uniform"))
    linear_tail = spec.get("tail") == "asymptote"

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        x = nan_to_inf(x)
        xc = x.clamp(lo, hi)
        k = knots.to(x.device)
        i = (torch.bucketize(xc, k) - 1).clamp(0, n - 2)
        y = h(h(slope.to(x.device)[i] * xc) + icpt.to(x.device)[i])
        if linear_tail:  # gelu, silu: past the domain the table follows its asymptote (x, 0)
            y = torch.where(x > hi, x, torch.where(x < lo, torch.zeros_like(x), y))
        return y

    # inputs are fp16: the table over all 65536 fp16 bit patterns, evaluated once, is exact
    # (indexed by the signed 16-bit pattern; torch.take reads negative indices from the end)
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    lut = evaluate(every.to(torch.float32))

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.take(lut.to(x.device), x.to(torch.float16).view(torch.int16).long())
    return run


# ---------------------------------------------------------------- elementwise and fused

def exp(x):
    return h(torch.exp(x))


def log_table(prof: Profile) -> Callable:
    zero = float(prof.value("log")["zero"])
    at_inf = float(prof.value("log")["inf"])

    def run(x, epsilon=None):
        x = x + base.scalar(epsilon, 1e-45) if epsilon is not None else x
        y = torch.log(x)
        y = torch.where(x == 0, torch.full_like(y, zero), y)
        y = torch.where(torch.isposinf(x), torch.full_like(y, at_inf), y)
        return torch.where(x < 0, torch.zeros_like(y), y)
    return run


def softplus(prof: Profile) -> Callable:
    limit = float(prof.value("softplus"))
    log = log_table(prof)

    def run(x):
        e = saturate(h(torch.exp(x)), limit)
        return log(h(1.0 + e))
    return run


def softmax(x, axis=None):
    dim = -1 if axis is None else int(base.py(axis))
    d = torch.nan_to_num(x - x.amax(dim, keepdim=True), nan=0.0, posinf=INF, neginf=-INF)
    e = h(torch.exp(d))
    return e / h(e.sum(dim, keepdim=True))


def reduce_log_sum_exp(prof: Profile) -> Callable:
    log = log_table(prof)

    def run(x, axes=None, keep_dims=None):
        dims = base.axes_of(axes, x.dim()) or list(range(x.dim()))
        return log(h(h(torch.exp(x)).sum(dims, keepdim=bool(base.py(keep_dims)))))
    return run


def flushed(fn: Callable, prof: Profile) -> Callable:
    """sqrt / rsqrt / inverse tables: a subnormal input reads as 0."""
    tiny = float(prof.value("sqrt_rsqrt_input_flush"))

    def run(x, **kw):
        x = torch.where(x.abs() < tiny, torch.zeros_like(x), x)
        return fn(x, **kw)
    return run


def kernels(prof: Profile) -> dict[str, Callable]:
    """MIL op type -> the engine's implementation (ops not listed run as IEEE half)."""
    k: dict[str, Callable] = {
        "matmul": matmul(prof), "linear": linear(prof), "conv": conv(prof),
        "conv_transpose": conv_transpose(prof),
        "einsum": output_checked(ops.OPS["einsum"], prof),
        "exp": exp, "log": log_table(prof), "softplus": softplus(prof), "softmax": softmax,
        "reduce_log_sum_exp": reduce_log_sum_exp(prof),
        "sqrt": flushed(ops.OPS["sqrt"], prof), "rsqrt": flushed(ops.OPS["rsqrt"], prof),
    }
    for name in prof.rules["activation_table"]["tables"]:
        tab = table(name, prof)
        if name == "gelu":
            k["gelu"] = (lambda f: lambda x, mode=None: f(x))(tab)
        else:
            k[name] = (lambda f: lambda x: f(x))(tab)
    return k
