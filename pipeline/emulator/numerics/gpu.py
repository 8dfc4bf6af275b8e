"""GPU numerics (profiles/gpu.yaml): FP16 storage, FP32 compute, i.e. IEEE half at op
boundaries; with `low_precision_accumulation: true` matmul and linear round their running
sum to FP16 every `accumulation_tile` terms (Core ML's allowLowPrecisionAccumulationOnGPU)."""
from __future__ import annotations

from typing import Callable

from pipeline.emulator.numerics import Profile
from pipeline.emulator.numerics import ne


def kernels(prof: Profile) -> dict[str, Callable]:
    if not prof.value("low_precision_accumulation", False):
        return {}
    narrow = Profile(prof.name, prof.unit, {
        "accumulator_limit": {"value": 65520.0},  # IEEE half: rounds to inf from 65520
        "partial_sum_tile": {"value": int(prof.value("accumulation_tile", 32))},
        "lane_tile": {"value": 1}, "subnormal_flush_accumulator": {"value": False},
        "exact_tile_budget": {"value": 0}}, prof.chip)
    return {"matmul": ne.matmul(narrow), "linear": ne.linear(narrow)}
