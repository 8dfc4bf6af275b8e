"""Fit the device model's free parameters on published Core ML latencies, and validate it
leave-one-family-out against the two-parameter baseline `latency = a + b * MACs`.

    python -m pipeline.device.calibrate            # fit on the committed op records
    python -m pipeline.device.calibrate --convert  # first re-convert the architectures (slow)

Writes data/fit.json (parameters + validation), which estimate() loads. The fit minimises
squared log errors plus a weak pull of each parameter towards its prior (cost.Params
defaults), so a family left out cannot drag a parameter it says nothing about.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, replace

import numpy as np

from pipeline.device import features
from pipeline.device.chips import get_chip
from pipeline.device.cost import FIT_FILE, Features, Params, op_times
from pipeline.device.estimate import check_units, placed_ops
from pipeline.device.features import Measurement
from pipeline.device.partition import partition
from pipeline.programs import OpRecord

FREE = ("ne_eff", "ne_dw_eff", "ne_op_ms", "gpu_eff", "gpu_op_ms")
PRIOR_WEIGHT = 0.02   # per parameter, on log(value / prior)^2; a factor e costs 1/50 of a unit
MATRIX_TYPES = {"conv", "conv_transpose", "linear", "matmul", "einsum"}


@dataclass
class Prepared:
    """A program's placed ops with their supported units, computed once per fit."""

    features: Features
    macs: float


def prepare(records: list[OpRecord]) -> Prepared:
    ops = placed_ops(records)
    return Prepared(Features.of(ops), float(sum(r.macs for r in ops if r.op_type in MATRIX_TYPES)))


def latency(prep: Prepared, chip: str, compute_units: str, p: Params) -> float:
    spec, allowed = get_chip(chip), check_units(compute_units)
    return partition(op_times(prep.features, allowed, spec, p), spec)[1]


def load_set() -> tuple[list[Measurement], dict[str, Prepared]]:
    programs = features.read_ops_file()
    rows = features.published()
    return rows, {f"{m.model}/{m.precision}": prepare(programs[f"{m.model}/{m.precision}"])
                  for m in rows}


def predict(rows: list[Measurement], progs: dict[str, Prepared], p: Params) -> list[float]:
    return [latency(progs[f"{m.model}/{m.precision}"], m.chip, m.compute_units, p) for m in rows]


def fit(rows: list[Measurement], progs: dict[str, Prepared], start: Params | None = None) -> Params:
    from scipy.optimize import minimize

    prior = Params()
    base = start or prior
    x0 = np.log([getattr(base, k) for k in FREE])
    target = np.log([m.latency_ms for m in rows])

    def params_of(x) -> Params:
        return replace(base, **{k: float(math.exp(v)) for k, v in zip(FREE, x)})

    def loss(x) -> float:
        est = np.log(predict(rows, progs, params_of(x)))
        pull = sum((v - math.log(getattr(prior, k))) ** 2 for k, v in zip(FREE, x))
        return float(np.sum((est - target) ** 2) + PRIOR_WEIGHT * pull)

    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"xatol": 1e-3, "fatol": 1e-5, "maxiter": 1500})
    return params_of(res.x)


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def abs_errors(pred: list[float], rows: list[Measurement]) -> list[float]:
    return [abs(e / m.latency_ms - 1.0) for e, m in zip(pred, rows)]


def baseline_lofo(rows: list[Measurement], progs: dict[str, Prepared]) -> dict[int, float]:
    """latency = a + b * MACs fitted per chip on the other families' rows; defined only
    where the chip keeps two rows of different MACs after the family is left out."""
    out = {}
    for i, m in enumerate(rows):
        train = [r for r in rows if r.chip == m.chip and r.family != m.family]
        macs = [progs[f"{r.model}/{r.precision}"].macs for r in train]
        if len(set(macs)) < 2:
            continue
        b, a = np.polyfit(macs, [r.latency_ms for r in train], 1)
        out[i] = float(a + b * progs[f"{m.model}/{m.precision}"].macs)
    return out


def lofo(rows: list[Measurement], progs: dict[str, Prepared],
         start: Params | None = None) -> tuple[list[float], dict]:
    """Leave-one-family-out predictions of the device model, one fit per family (each fit
    starts from `start`, e.g. the full fit, and is pulled towards the priors, not to it)."""
    pred = [0.0] * len(rows)
    fitted = {}
    for fam in sorted({m.family for m in rows}):
        train = [m for m in rows if m.family != fam]
        p = fit(train, progs, start)
        fitted[fam] = p.as_dict()
        for i, m in enumerate(rows):
            if m.family == fam:
                pred[i] = latency(progs[f"{m.model}/{m.precision}"], m.chip, m.compute_units, p)
    return pred, fitted


def validate(rows, progs, start: Params | None = None) -> dict:
    pred, per_family = lofo(rows, progs, start)
    base = baseline_lofo(rows, progs)
    idx = sorted(base)
    err, berr = abs_errors(pred, rows), abs_errors([base[i] for i in idx], [rows[i] for i in idx])
    return {
        "predictions": pred, "baseline": base, "per_family_params": per_family,
        "median_abs_error": statistics.median(err),
        "spearman": spearman(pred, [m.latency_ms for m in rows]),
        "baseline_rows": idx,
        "baseline_median_abs_error": statistics.median(berr) if berr else None,
        "model_median_abs_error_on_baseline_rows": statistics.median([err[i] for i in idx])
        if idx else None,
        "baseline_spearman": spearman([base[i] for i in idx], [rows[i].latency_ms for i in idx])
        if len(idx) > 2 else None,
    }


def run(write: bool = True) -> dict:
    rows, progs = load_set()
    full = fit(rows, progs)
    v = validate(rows, progs, full)
    in_sample = predict(rows, progs, full)
    result = {
        "params": {k: round(val, 6) for k, val in full.as_dict().items()},
        "free": list(FREE),
        "calibration": {
            "fit": "log-least-squares with a weak prior, all published rows "
                   "(pipeline/device/data/published_latency.csv)",
            "n": len(rows),
            "median_abs_error": round(v["median_abs_error"], 4),
            "spearman": round(v["spearman"], 4),
            "validation": "leave-one-family-out (families: "
                          + ", ".join(sorted({m.family for m in rows})) + ")",
            "baseline_median_abs_error": None if v["baseline_median_abs_error"] is None
            else round(v["baseline_median_abs_error"], 4),
            "baseline": "latency = a + b * MACs per chip, same split, rows where defined",
            "in_sample_median_abs_error": round(statistics.median(abs_errors(in_sample, rows)), 4),
            "notes": "GPU parameters rest on one FP32 row (edgesam, M2) and on priors; CPU "
                     "parameters are priors (no published CPU latency); small models on newer "
                     "chips are over-estimated (NE dispatch floor measured on M1 applied to "
                     "all chips, see data/chips.yaml)",
            "chips": chip_notes(rows),
        },
        "rows": [{"model": m.model, "chip": m.chip, "precision": m.precision,
                  "published_ms": m.latency_ms, "fitted_ms": round(f, 4),
                  "lofo_ms": round(lo, 4),
                  "baseline_ms": None if i not in v["baseline"] else round(v["baseline"][i], 4)}
                 for i, (m, f, lo) in enumerate(zip(rows, in_sample, v["predictions"]))],
    }
    if write:
        tmp = FIT_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        tmp.replace(FIT_FILE)
    return result


def chip_notes(rows: list[Measurement]) -> dict[str, str]:
    from pipeline.device.chips import CHIPS

    notes = {}
    for name in CHIPS:
        mine = [m for m in rows if m.chip == name]
        notes[name] = (f"{len(mine)} published rows ({', '.join(sorted({m.family for m in mine}))})"
                       if mine else "no published row: chip table only, error unvalidated")
    return notes


def convert_all() -> None:
    programs = {f"{model}/{precision}": features.convert_ops(model, precision)
                for model, precision in features.needed_programs()}
    features.write_ops(programs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convert", action="store_true",
                        help="re-convert the calibration architectures first (minutes)")
    args = parser.parse_args()
    if args.convert:
        convert_all()
    result = run()
    print(json.dumps(result["calibration"], indent=1))


if __name__ == "__main__":
    main()
