"""Where each op runs: Core ML's compute plan on macOS, or an estimate from stated rules.

The estimate's rules, in one place (public evidence in shared/NOTES.md; Apple documents no
fixed list, and real placement depends on device, OS version and tensor sizes):
  R1  An op typed FP32 never runs on the Neural Engine (NE computes FP16 only).
  R2  Ops with integer or bool outputs, and these types, do not run on the NE:
      NE_UNSUPPORTED below (gather-style indexing, sorting, scatter, control flow, ...).
  R3  Tensors of rank > 5 do not run on the NE.
  R4  With compute units CPU_AND_NE, every non-NE op goes to the CPU; with CPU_AND_GPU, FP16
      and FP32 float ops go to the GPU; with CPU_ONLY, all to the CPU.
  R5  With ALL: a run of consecutive non-NE ops goes to the CPU when it is short
      (<= SMALL_RUN_OPS ops) inside an otherwise NE program, else to the GPU.
Cost is estimated as multiply-accumulates (conv, linear, matmul) or output elements.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.programs import OpRecord

NE_UNSUPPORTED = {
    "gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis",
    "topk", "argsort", "non_zero", "non_maximum_suppression", "cond", "while_loop", "fill",
    "fill_like", "band_part", "slice_update", "cumsum", "range_1d", "one_hot", "shape",
    "reduce_argmax", "reduce_argmin", "lstm", "gru", "rnn", "random_uniform", "random_normal",
    "random_bernoulli", "random_categorical", "custom_op",
}
SMALL_RUN_OPS = 8
DEVICES = ("NE", "GPU", "CPU")


@dataclass
class Placement:
    index: int
    name: str
    op_type: str
    dtype: str
    device: str
    rule: str
    cost: float


def ne_eligible(rec: OpRecord) -> tuple[bool, str]:
    if rec.dtype == "fp32":
        return False, "R1 fp32"
    if rec.dtype not in ("fp16",):
        return False, f"R2 {rec.dtype} output"
    if rec.op_type in NE_UNSUPPORTED:
        return False, f"R2 {rec.op_type}"
    if rec.rank > 5:
        return False, "R3 rank>5"
    return True, "NE eligible"


def estimate(records: list[OpRecord], compute_units: str = "ALL") -> list[Placement]:
    ops = [r for r in records if r.is_compute or r.op_type == "cast"]
    eligible = [ne_eligible(r) for r in ops]
    devices: list[str] = []
    if compute_units == "CPU_ONLY":
        devices = ["CPU"] * len(ops)
    elif compute_units == "CPU_AND_GPU":
        devices = ["GPU" if r.dtype in ("fp16", "fp32") else "CPU" for r in ops]
    else:
        devices = ["NE" if ok else "" for ok, _ in eligible]
        ne_share = devices.count("NE") / max(1, len(devices))
        i = 0
        while i < len(ops):
            if devices[i]:
                i += 1
                continue
            j = i
            while j < len(ops) and not devices[j]:
                j += 1
            short = (j - i) <= SMALL_RUN_OPS and ne_share >= 0.5
            target = "CPU" if compute_units == "CPU_AND_NE" or short else "GPU"
            for k in range(i, j):
                devices[k] = target
            i = j
    return [Placement(r.index, r.name, r.op_type, r.dtype, d,
                      "R4 compute units" if compute_units in ("CPU_ONLY", "CPU_AND_GPU") else
                      (reason if d != "NE" else "NE eligible"), float(r.macs))
            for r, (ok, reason), d in zip(ops, eligible, devices)]


def summarize(rows: list[dict] | list[Placement], source: str) -> dict:
    rows = [asdict(r) if isinstance(r, Placement) else r for r in rows]
    n = max(1, len(rows))
    total_cost = sum(float(r.get("cost") or 0.0) for r in rows) or 1.0
    out: dict = {"source": source, "ops": len(rows)}
    for dev in DEVICES:
        mine = [r for r in rows if r["device"] == dev]
        out[f"{dev.lower()}_op_share"] = round(len(mine) / n, 4)
        out[f"{dev.lower()}_cost_share"] = round(sum(float(r.get("cost") or 0.0) for r in mine)
                                                 / total_cost, 4)
    devices = [r["device"] for r in rows]
    out["device_switches"] = sum(1 for a, b in zip(devices, devices[1:]) if a != b)
    return out


def write_table(rows: list[Placement] | list[dict], path: Path) -> None:
    rows = [asdict(r) if isinstance(r, Placement) else r for r in rows]
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
