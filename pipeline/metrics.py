"""Accuracy of a variant's outputs against the FP32 PyTorch reference.

Per output, over all evaluation samples:
  cosine_min / cosine_mean  cosine similarity per sample (non-finite values count as 0)
  snr_db                    10·log10(Σref² / Σ(out-ref)²)
  psnr_db                   20·log10(max|ref| / RMSE)
  max_abs_error             max |out - ref|
  max_rel_error             max |out - ref| / max |ref|
  nonfinite_fraction        share of inf/NaN values in the output
Every figure pools all samples (snr_db: one ratio of sums over every sample), for the
evaluate stage and the precision search alike (``program_accuracy``).
Decibels are capped at 200 dB (an exact match). A variant passes when it has no non-finite
output value, cosine_min >= tolerance.min_cosine, snr_db >= tolerance.min_snr_db, and, unless
tolerance.allow_internal_nonfinite is true (default false), no op inside the program produced
an inf or NaN (internal_nonfinite_ops, from the emulator's per-op diagnostics: an FP16 op that
overflows inside can still give finite outputs, e.g. a variance that becomes inf then 0).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

DB_CAP = 200.0


def _db(ratio: float, factor: float) -> float:
    if ratio <= 0 or not np.isfinite(ratio):
        return DB_CAP if ratio == np.inf or not np.isfinite(ratio) else -DB_CAP
    return float(min(factor * np.log10(ratio), DB_CAP))


def output_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    ref = ref.astype(np.float64).reshape(len(ref), -1)
    raw = out.astype(np.float64).reshape(len(out), -1)
    finite = np.isfinite(raw)
    y = np.where(finite, raw, 0.0)
    err = y - ref
    cos = []
    for r, o in zip(ref, y):
        denom = np.linalg.norm(r) * np.linalg.norm(o)
        cos.append(float(r @ o / denom) if denom > 0 else float(np.allclose(r, o)))
    sig, noise = float((ref ** 2).sum()), float((err ** 2).sum())
    rmse = float(np.sqrt((err ** 2).mean()))
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(np.abs(err).max()) if err.size else 0.0
    if not finite.all():
        max_abs = float("inf")
    return {
        "cosine_min": float(min(cos)),
        "cosine_mean": float(np.mean(cos)),
        "snr_db": _db(sig / noise if noise > 0 else np.inf, 10.0),
        "psnr_db": _db(peak / rmse if rmse > 0 else np.inf, 20.0),
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / peak if peak > 0 else max_abs,
        "nonfinite_fraction": float(1.0 - finite.mean()),
    }


def nearest_neighbour_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Share of samples whose nearest other sample (cosine) is the same as in the reference."""
    def neighbours(x):
        x = np.nan_to_num(x.reshape(len(x), -1).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)
    return float((neighbours(ref) == neighbours(out)).mean())


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    r = ref.reshape(len(ref), -1).argmax(1)
    o = np.nan_to_num(out.reshape(len(out), -1), nan=-np.inf).argmax(1)
    return float((r == o).mean())


TASK_METRICS = {"nearest_neighbour": nearest_neighbour_agreement, "top1": top1_agreement}


def accuracy(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
             tolerance: Mapping[str, float], task_metric: str | None = None,
             internal_nonfinite_ops: int | None = None) -> dict:
    """Metrics per output, the worst across outputs at the top level, and pass/fail.
    ``internal_nonfinite_ops``: ops with an inf/NaN output (None: not known)."""
    per_output = {name: output_metrics(reference[name], outputs[name]) for name in reference}
    worst = {
        "cosine_min": min(m["cosine_min"] for m in per_output.values()),
        "cosine_mean": min(m["cosine_mean"] for m in per_output.values()),
        "snr_db": min(m["snr_db"] for m in per_output.values()),
        "psnr_db": min(m["psnr_db"] for m in per_output.values()),
        "max_abs_error": max(m["max_abs_error"] for m in per_output.values()),
        "max_rel_error": max(m["max_rel_error"] for m in per_output.values()),
        "nonfinite_fraction": max(m["nonfinite_fraction"] for m in per_output.values()),
    }
    if task_metric:
        fn = TASK_METRICS[task_metric]
        worst[task_metric] = min(fn(reference[n], outputs[n]) for n in reference)
    min_cos = float(tolerance.get("min_cosine", 0.99))
    min_snr = float(tolerance.get("min_snr_db", 20.0))
    allow_internal = bool(tolerance.get("allow_internal_nonfinite") or False)
    worst["internal_nonfinite_ops"] = internal_nonfinite_ops
    worst["passes"] = int(worst["nonfinite_fraction"] == 0 and worst["cosine_min"] >= min_cos
                          and worst["snr_db"] >= min_snr
                          and (allow_internal or not internal_nonfinite_ops))
    result = rounded(worst)
    if len(per_output) > 1:
        result["outputs"] = {k: rounded(v) for k, v in per_output.items()}
    return result


def stack_samples(per_sample: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per output, [samples, ...], from outputs given sample by sample."""
    return {k: np.stack([o[k] for o in per_sample]) for k in per_sample[0]}


def program_accuracy(reference: Mapping[str, np.ndarray], per_sample: list[Mapping[str, np.ndarray]],
                     tolerance: Mapping[str, float], task_metric: str | None = None,
                     internal_nonfinite_ops: int | None = None) -> dict:
    """``accuracy`` of one program's outputs given sample by sample (as the emulator runs)."""
    return accuracy(reference, stack_samples(per_sample), tolerance, task_metric, internal_nonfinite_ops)


def _sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}") if np.isfinite(x) else x


# Digits that are stable from run to run and close to stable across machines (README,
# "Reproducibility"): pass/fail is decided on the unrounded values.
ROUNDING = {"snr_db": lambda x: round(x, 2), "psnr_db": lambda x: round(x, 2),
            "cosine_min": lambda x: round(x, 6), "cosine_mean": lambda x: round(x, 6),
            "max_abs_error": lambda x: _sig(x, 4), "max_rel_error": lambda x: _sig(x, 4),
            "nonfinite_fraction": lambda x: round(x, 6)}


def rounded(metrics: Mapping[str, float]) -> dict:
    return {k: ROUNDING[k](float(v)) if k in ROUNDING else v for k, v in metrics.items()}
