"""Attach numerics to a plan: each FP16 step gets the op implementation and output store of
the profile of the unit it runs on, chosen once at plan build time (the hot loop is unchanged).

Where an op runs comes from ONE function, ``units_for``: today the rules of
pipeline/placement.py (an estimate); the per-chip device model replaces that call when it
lands; on macOS the compute plan (backends.compute_plan) can feed the same mapping.
"""
from __future__ import annotations

from typing import Callable

from pipeline import placement
from pipeline.emulator.numerics import UNIT_PROFILES, Numerics, Profile
from pipeline.emulator.numerics import gpu, ne
from pipeline.programs import OpRecord

IEEE = "ieee"


def units_for(records: list[OpRecord], compute_units: str = "ALL") -> dict[str, str]:
    """op name -> unit ("NE", "GPU", "CPU") for a program's op records.
    HOOK: swap in pipeline.device.estimate(records, chip, compute_units) (same .name/.device
    rows) or, on macOS, the measured compute plan (backends.compute_plan)."""
    return {row.name: row.device for row in placement.estimate(records, compute_units)}


def units_from_compute_plan(rows: list[dict]) -> dict[str, str]:
    """The measured placement (backends.compute_plan rows, keyed by output name) as units."""
    return {r["op"]: r["device"] for r in rows if r.get("device") in UNIT_PROFILES}


def records_of(plan) -> list[OpRecord]:
    """Op records of a plan (for virtual mixed plans, which have no package of their own)."""
    recs = []
    for s in plan.steps:
        recs.append(OpRecord(s.index, s.op_type, s.name, s.dtypes[0] if s.dtypes else "",
                             s.outputs[0] if s.outputs else "", 1, 0, 4, 1))
    return recs


def _kernels(profile: Profile) -> tuple[dict[str, Callable], Callable | None]:
    if profile.unit == "NE" or profile.name == "ne" or "accumulator_limit" in profile.rules:
        return ne.kernels(profile), ne.store
    if profile.unit == "GPU":
        return gpu.kernels(profile), None
    return {}, None


def apply(plan, numerics: Numerics, units: dict[str, str] | None = None) -> None:
    """Set each step's profile name, implementation and FP16 store, in place."""
    if numerics.mode != "device":
        for s in plan.steps:
            s.numerics = numerics.mode
        return
    if numerics.units is not None and not numerics.profile:
        units = numerics.units
    if numerics.profile is None and units is None:
        units = units_for(records_of(plan), numerics.compute_units)
    cache: dict[str, tuple[dict, Callable | None]] = {}
    producer_unit: dict[str, str] = {}
    for s in plan.steps:
        if "fp16" not in s.dtypes:
            name = IEEE
        elif numerics.profile:
            name = numerics.profile
        else:
            unit = (units or {}).get(s.name) or (units or {}).get(s.outputs[0], "CPU")
            name = UNIT_PROFILES.get(unit, IEEE)
        s.numerics = name if "fp16" in s.dtypes else IEEE
        if name == IEEE or "fp16" not in s.dtypes:
            for o in s.outputs:
                producer_unit[o] = IEEE
            continue
        if name not in cache:
            cache[name] = _kernels(numerics.get(name))
        table, store = cache[name]
        base = s.base_fn or s.fn
        s.base_fn = base
        fn = table.get(s.op_type, base)
        if store is not None:  # NE: NaN from outside the engine becomes +inf at its input
            outside = [p for p, kind, payload in s.args if kind == 1
                       and producer_unit.get(payload) != name]
            lists = [p for p, kind, payload in s.args if kind == 2
                     and any(producer_unit.get(n) != name for n in payload)]
            if outside or lists:
                fn = _nan_guard(fn, tuple(outside + lists))
        s.fn, s.store = fn, (store if s.round_output else None)
        for o in s.outputs:
            producer_unit[o] = name


def _nan_guard(fn: Callable, params: tuple[str, ...]) -> Callable:
    def run(**kw):
        for p in params:
            kw[p] = ne.nan_to_inf(kw[p])
        return fn(**kw)
    return run
