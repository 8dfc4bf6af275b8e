"""MLflow metric, param and tag names from a variant's metrics.json: short, grouped by kind with
"/" (accuracy/, placement/, latency/, program/); the same names with "." are the keys of the
variant's DVC metrics file (summary.json)."""
from __future__ import annotations

from typing import Any, Mapping


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def split_numeric(flat: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    numbers, texts = {}, {}
    for k, v in flat.items():
        if isinstance(v, bool):
            numbers[k] = float(v)
        elif isinstance(v, (int, float)):
            numbers[k] = float(v)
        elif v is not None:
            texts[k] = str(v)
    return numbers, texts


def summary(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The headline figures of one variant's metrics.json, grouped by kind: MLflow logs them
    as ``kind/name`` and DVC shows them as ``kind.name`` (summary.json). A latency's name says
    where it came from: ``est_ms_<units>`` is the device model's estimate, ``measured_ms_<units>``
    a Core ML measurement; the emulator's wall time is never a latency."""
    acc, place, lat, prog = (result[k] for k in ("accuracy", "placement", "latency", "program"))
    ieee = (result.get("numerics") or {}).get("ieee") or {}
    out = {
        "accuracy": {"passes": acc["passes"], "snr_db": acc["snr_db"],
                     "cosine_min": acc["cosine_min"], "psnr_db": acc.get("psnr_db"),
                     "nonfinite_fraction": acc.get("nonfinite_fraction"),
                     "snr_db_ieee": ieee.get("snr_db")},
        "placement": {"ne_share": place["ne_op_share"], "gpu_share": place.get("gpu_op_share"),
                      "cpu_share": place.get("cpu_op_share"),
                      "ne_time_share": place.get("ne_time_share"),
                      "device_switches": place.get("device_switches")},
        "latency": {**{f"est_ms_{cu}": ms for cu, ms in lat["estimated_ms"].items()},
                    **{f"measured_ms_{cu}": ms for cu, ms in (lat.get("measured_ms") or {}).items()},
                    **{f"est_error_{cu}": e for cu, e in (lat.get("estimate_error") or {}).items()}},
        "program": {"fp32_ops": prog["fp32_compute_ops"], "casts": prog.get("casts"),
                    "overflowing_ops": (result.get("diagnostics") or {}).get("overflowing_ops")},
    }
    return {kind: {k: (float(v) if isinstance(v, bool) else v) for k, v in figures.items()
                   if isinstance(v, (int, float))} for kind, figures in out.items()}


def metric_names(grouped: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"accuracy": {"snr_db": x}}`` -> ``{"accuracy/snr_db": x}``, MLflow's names."""
    return {f"{kind}/{name}": float(v) for kind, figures in grouped.items()
            for name, v in figures.items()}


def headline_ms(grouped: Mapping[str, Mapping[str, float]], units: str) -> tuple[float, str]:
    """(ms, "measured" or "est") under ``units``: measured where measured, else estimated."""
    lat = grouped["latency"]
    if f"measured_ms_{units}" in lat:
        return lat[f"measured_ms_{units}"], "measured"
    return lat[f"est_ms_{units}"], "est"


def clean_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params without empty values (None, "", [], {}): they would make the compare
    page's parallel-coordinates axes "unknown" or "[]". A list becomes "a,b"."""
    out = {}
    for key, value in flat.items():
        if value is None or value == "" or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)
    return out


def device_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """Tags naming the chip the figures are for and the device model's calibration error."""
    lat = result.get("latency") or {}
    tags = {"device.chip": str(lat.get("chip", "")),
            "device.compute_units": str(lat.get("compute_units", "")),
            "latency.estimated": "true" if lat.get("status") == "estimated" else "false"}
    for key, value in (lat.get("calibration") or {}).items():
        if not isinstance(value, Mapping):
            tags[f"device.calibration.{key}"] = str(value)
    return tags
