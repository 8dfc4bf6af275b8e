"""Per-op diagnostics: run a variant and the FP32 program side by side, op by op.

For each op of the variant: its dtype, max |value|, inf and NaN counts (over all samples),
and its relative error against the same op of the FP32 program (ops matched by name, the
FP16 pass's `_cast_fp16` suffix removed): max |out - out32| / max |out32|. The first op
where non-finite values appear is flagged, and every op where they originate (its inputs
are finite, its output is not: an overflow, or NaN from 0/0) apart from the ops that only
pass them along. Under device numerics: the profile each op ran
under, and its difference from the same program under IEEE numerics (same measure); the
first op where they disagree materially (DIVERGENCE, or non-finite in one only) is named.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from pipeline import progress
from pipeline.emulator.runtime import Emulator, Step
from pipeline.precision import canonical

FIELDS = ["index", "name", "op_type", "dtype", "max_abs", "inf_count", "nan_count",
          "rel_error_vs_fp32", "first_nonfinite", "nonfinite_origin", "numerics",
          "rel_diff_vs_ieee"]
DIVERGENCE = 0.01  # device vs IEEE: max |diff| / max |ieee| above this is material


@dataclass
class OpStats:
    index: int
    name: str
    op_type: str
    dtype: str
    max_abs: float = 0.0
    inf_count: int = 0
    nan_count: int = 0
    rel_error_vs_fp32: float | None = None
    first_nonfinite: bool = False
    nonfinite_origin: bool = False  # finite inputs, inf/NaN output (in some sample)
    numerics: str = "ieee"
    rel_diff_vs_ieee: float | None = None
    _ref_peak: float = 0.0
    _err: float = 0.0
    _ieee_peak: float = 0.0
    _diff: float = 0.0


def _float_out(values: list[Any]) -> torch.Tensor | None:
    for v in values:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    return None


def capture(emulator: Emulator, feeds: dict[str, np.ndarray]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run and keep every op's first float output, keyed by canonical op name."""
    acts: dict[str, torch.Tensor] = {}

    def keep(step: Step, values: list[Any]) -> None:
        out = _float_out(values)
        if out is not None:
            acts[canonical(step.name)] = out.float()

    return emulator.run(feeds, observe=keep), acts


class Collector:
    """Accumulates OpStats over samples; call ``observer(reference_acts)`` per sample."""

    def __init__(self, emulator: Emulator):
        self.stats = {s.index: OpStats(s.index, s.name, s.op_type, s.dtypes[0],
                                       numerics=getattr(s, "numerics", "ieee"))
                      for s in emulator.plan.steps}
        self.nonfinite_consts = {name for name, v in emulator.plan.consts.items()
                                 if isinstance(v, torch.Tensor) and v.is_floating_point()
                                 and not bool(torch.isfinite(v).all())}

    def observer(self, reference: dict[str, torch.Tensor] | None,
                 ieee: dict[str, torch.Tensor] | None = None):
        carrying = set(self.nonfinite_consts)  # values holding inf/NaN in this sample

        def observe(step: Step, values: list[Any]) -> None:
            out = _float_out(values)
            if out is None:
                return
            st = self.stats[step.index]
            x = out.float()
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                if not carrying.intersection(step.float_inputs):
                    st.nonfinite_origin = True
                carrying.update(step.outputs)
                st.inf_count += int(torch.isinf(x).sum())
                st.nan_count += int(torch.isnan(x).sum())
                x_abs = torch.where(finite, x.abs(), torch.zeros((), device=x.device))
            else:
                x_abs = x.abs()
            if x.numel():
                st.max_abs = max(st.max_abs, float(x_abs.max()))
            if ieee is not None:
                _compare_ieee(st, x, finite, ieee.get(canonical(step.name)))
            if reference is None:
                return
            ref = reference.get(canonical(step.name))
            if ref is None or ref.shape != x.shape:
                return
            if x.numel():
                st._ref_peak = max(st._ref_peak, float(ref.abs().max()))
                diff = (x - ref).abs()
                err = float(diff.max()) if bool(finite.all()) else math.inf
                st._err = max(st._err, err)
            st.rel_error_vs_fp32 = st._err / st._ref_peak if st._ref_peak > 0 else st._err
        return observe

    def finish(self) -> list[OpStats]:
        rows = [self.stats[i] for i in sorted(self.stats)]
        for row in rows:
            if row.inf_count or row.nan_count:
                row.first_nonfinite = True
                break
        return rows


def _compare_ieee(st: OpStats, x: torch.Tensor, finite: torch.Tensor, ref) -> None:
    if ref is None or ref.shape != x.shape or not x.numel():
        return
    ref_finite = torch.isfinite(ref)
    if not bool(torch.equal(finite, ref_finite)):
        st._diff = math.inf
    else:
        both = finite & ref_finite
        diff = torch.where(both, (x - ref).abs(), torch.zeros((), device=x.device))
        st._diff = max(st._diff, float(diff.max()))
        st._ieee_peak = max(st._ieee_peak, float(torch.where(both, ref.abs(), torch.zeros(
            (), device=x.device)).max()))
    st.rel_diff_vs_ieee = st._diff / st._ieee_peak if st._ieee_peak > 0 else st._diff


def first_divergence(rows: Iterable) -> dict | None:
    """The first op where device numerics and IEEE disagree materially (rows or CSV dicts)."""
    for r in rows:
        d = r.rel_diff_vs_ieee if isinstance(r, OpStats) else r.get("rel_diff_vs_ieee")
        if d is not None and d > DIVERGENCE:
            get = (lambda k: getattr(r, k)) if isinstance(r, OpStats) else r.get
            return {"name": get("name"), "op_type": get("op_type"), "numerics": get("numerics"),
                    "rel_diff_vs_ieee": d}
    return None


def first_nonfinite(rows: Iterable[OpStats]) -> OpStats | None:
    return next((r for r in rows if r.first_nonfinite), None)


def nonfinite_origins(rows: Iterable) -> list:
    """The ops where inf/NaN originate (rows or CSV dicts); the others only pass them on."""
    return [r for r in rows if (r.nonfinite_origin if isinstance(r, OpStats)
                                else r.get("nonfinite_origin"))]


def run_diagnostics(variant: Emulator, reference: Emulator | None,
                    samples: list[dict[str, np.ndarray]], ieee: Emulator | None = None,
                    desc: str = "emulating"):
    """Outputs per sample and the per-op table. ``reference`` is the FP32 program's emulator
    (None when the variant is the FP32 program itself: its error is 0 by definition).
    ``ieee``: the same program under IEEE numerics; its outputs are returned as a third item.
    A progress bar advances per sample and names the program it is running."""
    collector = Collector(variant)
    outputs, ieee_outputs = [], []
    with progress.bar(desc, total=len(samples), unit="sample") as shown:
        for feeds in samples:
            ref_acts = ieee_acts = None
            if reference is not None:
                shown.set_postfix_str("FP32 reference")
                _, ref_acts = capture(reference, feeds)
            if ieee is not None:
                shown.set_postfix_str("IEEE numerics")
                out, ieee_acts = capture(ieee, feeds)
                ieee_outputs.append(out)
            shown.set_postfix_str("variant")
            outputs.append(variant.run(feeds, observe=collector.observer(ref_acts, ieee_acts)))
            del ieee_acts, ref_acts
            if reference is None:
                for st in collector.stats.values():
                    st.rel_error_vs_fp32 = 0.0
            shown.update()
    return outputs, collector.finish(), ieee_outputs


def write_table(rows: list[OpStats], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            d = {k: v for k, v in asdict(r).items() if not k.startswith("_")}
            w.writerow(d)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["index"] = int(r["index"])
        r["max_abs"] = float(r["max_abs"])
        r["inf_count"] = int(r["inf_count"])
        r["nan_count"] = int(r["nan_count"])
        r["rel_error_vs_fp32"] = float(r["rel_error_vs_fp32"]) if r["rel_error_vs_fp32"] not in ("", "None") else None
        r["first_nonfinite"] = r["first_nonfinite"] == "True"
        r["nonfinite_origin"] = r.get("nonfinite_origin") == "True"
        r.setdefault("numerics", "ieee")
        d = r.get("rel_diff_vs_ieee")
        r["rel_diff_vs_ieee"] = float(d) if d not in (None, "", "None") else None
    return rows
