"""Attach numerics to a plan: each FP16 step gets the op implementation and output store of
the profile of the unit it runs on, chosen once at plan build time (the hot loop is unchanged).

Where an op runs comes from ONE function, ``units_for``: the per-chip device model's
placement (pipeline/device, an estimate); the evaluate stage instead passes the backend's
placement table (``Numerics.units``), which on macOS is Core ML's measured compute plan.
"""
from __future__ import annotations

from typing import Callable

from pipeline.emulator.numerics import UNIT_PROFILES, Numerics, Profile
from pipeline.emulator.numerics import gpu, ne
from pipeline.programs import OpRecord

IEEE = "ieee"


def units_for(records: list[OpRecord], compute_units: str = "ALL",
              chip: str = "M2") -> dict[str, str]:
    """op name -> unit ("NE", "GPU", "CPU") for a program's op records, as the device model
    places them on ``chip`` under ``compute_units``."""
    from pipeline.device import estimate

    return {op.name: op.device for op in estimate(records, chip, compute_units).ops}


def units_from_compute_plan(rows: list[dict]) -> dict[str, str]:
    """A placement table's rows (backends/protocol.py schema: measured compute plan or the
    device model's estimate) as op name -> unit."""
    return {r["op"]: r["device"] for r in rows if r.get("device") in UNIT_PROFILES}


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
    if units is None and not numerics.profile:
        units = numerics.units
    if units is None and not numerics.profile:
        raise ValueError("device numerics need the placement: pass units (see units_for)")
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
