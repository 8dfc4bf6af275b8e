"""Random sampling, as coremltools/converters/mil/mil/ops/defs/iOS15/random.py defines it.

Core ML draws its own bits: the emulator matches the distribution, not the values. A
``seed`` other than -1 (the default) makes the emulator's draws repeat from call to call, as
the definition promises for Core ML; -1 draws fresh values each time."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import ints, op, py, scalar


def _generator(seed) -> torch.Generator | None:
    s = -1 if seed is None else int(py(seed))
    return None if s == -1 else torch.Generator().manual_seed(s)


@op()
def random_uniform(shape, low=None, high=None, seed=None):
    lo, hi = scalar(low, 0.0), scalar(high, 1.0)
    return torch.rand(ints(shape), generator=_generator(seed)) * (hi - lo) + lo


@op()
def random_normal(shape, mean=None, stddev=None, seed=None):
    return torch.randn(ints(shape), generator=_generator(seed)) * scalar(stddev, 1.0) \
        + scalar(mean, 0.0)


@op()
def random_bernoulli(shape, prob=None, seed=None):
    p = torch.full(ints(shape), scalar(prob, 0.5))
    return torch.bernoulli(p, generator=_generator(seed))


@op()
def random_categorical(x, mode=None, size=None, seed=None):
    """``size`` draws (with replacement) of class indices from the last axis of ``x``
    (logits by default, or probabilities), as floats."""
    probs = torch.softmax(x.float(), -1) if (py(mode) or "logits") == "logits" else x.float()
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    draws = torch.multinomial(flat, int(py(size) or 1), replacement=True,
                              generator=_generator(seed))
    return draws.reshape(tuple(x.shape[:-1]) + (draws.shape[-1],)).to(x.device, torch.float32)
