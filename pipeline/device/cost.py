"""Per-op time on each unit: a roofline (FLOPs / achieved throughput vs bytes / bandwidth,
the larger) plus a fixed per-op overhead. Which units can run an op is decided here too.

The free parameters (Params) are few, physical and shared by every chip: the fraction of
peak each unit reaches on matrix work, the NE's fraction on depthwise convolutions, and a
per-op overhead per unit. They are fitted on published Core ML latencies
(pipeline/device/calibrate.py -> data/fit.json); chip differences come from data/chips.yaml.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.device.chips import Chip
from pipeline.programs import OpRecord

UNITS = ("NE", "GPU", "CPU")
# Op types that never run on the Neural Engine: gather-style indexing, sorting, scatter,
# control flow, recurrent layers, random draws (hollance/neural-engine docs/unsupported-layers.md:
# RNN/LSTM/GRU, gather, custom layers; roboflow/rf-detr issue 1495: topk and its gathers leave
# the NE; stablehlo-coreml issue 110).
NE_UNSUPPORTED = {
    "gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis",
    "topk", "argsort", "non_zero", "non_maximum_suppression", "cond", "while_loop", "fill",
    "fill_like", "band_part", "slice_update", "cumsum", "range_1d", "one_hot", "shape",
    "reduce_argmax", "reduce_argmin", "lstm", "gru", "rnn", "random_uniform", "random_normal",
    "random_bernoulli", "random_categorical", "custom_op",
}
FIT_FILE = Path(__file__).parent / "data" / "fit.json"
MATRIX = {"conv", "conv_transpose", "linear", "matmul", "einsum"}
# Ops that only relabel a tensor: no data moves, no time (they still get a unit).
LAYOUT = {"reshape", "expand_dims", "squeeze", "identity", "flatten2d", "reshape_like"}
FLOAT = {"fp16", "fp32"}


@dataclass(frozen=True)
class Params:
    """Free parameters of the device model (shared by every chip). Defaults are the priors
    the fit starts from and is pulled towards; fit.json holds the fitted values."""

    ne_eff: float = 0.30      # NE fraction of FP16 peak on dense conv/matmul; ANEForge measured
    #                           GEMM 2.7-4.3 of 11 TFLOP/s on M1 (0.25-0.39), 3.4/15.8 M2 Pro
    ne_dw_eff: float = 0.03   # NE fraction of peak on depthwise conv (one MAC lane per channel);
    #                           ane-guide: one conv reaches 1.8 of 11 TFLOP/s at best (assumed)
    ne_op_ms: float = 0.005   # NE per-op overhead inside one compiled program (assumed)
    gpu_eff: float = 0.5      # GPU fraction of peak on conv/matmul (assumed prior)
    gpu_op_ms: float = 0.02   # GPU per-kernel overhead (assumed prior)
    cpu_op_ms: float = 0.003  # CPU per-op overhead (assumed; not fitted: no CPU latencies)
    ne_cache_mb: float = 2.0  # working set the NE keeps on chip (ane-guide: 2 MB, measured M1);
    #                           tensors past it stream from DRAM at ne_gbps

    @staticmethod
    def load(path: Path = FIT_FILE) -> "Params":
        if not path.is_file():
            return Params()
        data = json.loads(path.read_text())
        names = {f.name for f in fields(Params)}
        return Params(**{k: float(v) for k, v in data["params"].items() if k in names})

    def as_dict(self) -> dict:
        return asdict(self)


def op_class(rec: OpRecord) -> str:
    if rec.op_type in LAYOUT:
        return "layout"
    if rec.op_type in ("conv", "conv_transpose") and rec.groups > 1 and len(rec.shape) > 1 \
            and rec.groups >= rec.shape[1]:
        return "depthwise"
    if rec.op_type in MATRIX:
        return "matrix"
    return "vector"


def supported(rec: OpRecord) -> tuple[tuple[str, ...], str]:
    """Units able to run the op, and why a unit is missing.

    NE: FP16 only: "an op typed FP32 never runs on the Neural Engine" (coremltools typed
    execution docs; Apple, coremltools issue 1761); no int/bool outputs and none of
    NE_UNSUPPORTED above (gather family, topk, control flow...; hollance/
    neural-engine unsupported-layers.md, rf-detr issue 1495); rank <= 5. Casts run anywhere
    (assumed: Core ML converts at the NE boundary). GPU: float outputs. CPU: every op.
    """
    units = ["CPU"]
    reason = ""
    if rec.dtype in FLOAT or rec.op_type == "cast":
        units.insert(0, "GPU")
    ne_ok = rec.op_type == "cast" or rec.dtype == "fp16"
    if not ne_ok:
        reason = f"{rec.dtype} output: not on the NE"
    elif rec.op_type in NE_UNSUPPORTED:
        ne_ok, reason = False, f"{rec.op_type}: not on the NE"
    elif rec.rank > 5:
        ne_ok, reason = False, "rank > 5: not on the NE"
    if ne_ok:
        units.insert(0, "NE")
    return tuple(units), reason


@dataclass
class Features:
    """Per-op numbers of a program's placed ops as arrays, computed once per program."""

    cls: np.ndarray       # op_class per op
    flops: np.ndarray
    moved: np.ndarray     # input + weight + output bytes
    parts: np.ndarray     # [ops, 3]: input, weight, output bytes (for the NE's on-chip cache)
    units: list[tuple[str, ...]]
    reasons: list[str]

    @staticmethod
    def of(records: list[OpRecord]) -> "Features":
        able = [supported(r) for r in records]
        parts = np.array([traffic(r) for r in records], dtype=float).reshape(-1, 3)
        return Features(np.array([op_class(r) for r in records], dtype=object),
                        np.array([op_flops(r) for r in records], dtype=float),
                        parts.sum(axis=1), parts, [a[0] for a in able], [a[1] for a in able])


def traffic(rec: OpRecord) -> tuple[int, int, int]:
    """Bytes an op reads (activations), reads (weights) and writes to memory.

    An elementwise op fed by the op just before it is fused into that op: the intermediate
    tensor stays on chip, so neither the producer's write nor this op's read of it reaches
    memory (conv + activation + residual add run as one pass on the NE and in one GPU kernel;
    ane-guide's "fused-chain" throughput; assumed alike on the CPU).
    """
    if op_class(rec) == "vector" and rec.chained_bytes:
        return (rec.input_bytes - rec.chained_bytes, rec.weight_bytes,
                max(0, rec.output_bytes - rec.chained_bytes))
    return rec.input_bytes, rec.weight_bytes, rec.output_bytes


def op_flops(rec: OpRecord) -> float:
    if rec.op_type in MATRIX or op_class(rec) == "depthwise":
        return 2.0 * rec.macs
    return float(rec.elements)


def unit_times(f: Features, unit: str, chip: Chip, p: Params) -> np.ndarray:
    """Every op's time on one unit: max(compute, memory) + per-op overhead; layout ops 0."""
    matrix = f.cls == "matrix"
    dw = f.cls == "depthwise"
    if unit == "NE":
        peak = chip.ne_tflops * 1e9 * np.where(dw, p.ne_dw_eff, p.ne_eff)
        compute = np.where(matrix | dw, f.flops / peak, 0.0)
        streamed = np.where(f.parts > p.ne_cache_mb * 1e6, f.parts, 0.0).sum(axis=1)
        t = np.maximum(compute, streamed / (chip.ne_gbps * 1e6)) + p.ne_op_ms
    elif unit == "GPU":
        compute = np.where(matrix | dw, f.flops / (chip.gpu_tflops * 1e9 * p.gpu_eff), 0.0)
        t = np.maximum(compute, f.moved / (chip.dram_gbps * 1e6)) + p.gpu_op_ms
    else:
        compute = np.where(matrix | dw, f.flops / (chip.cpu_tflops * 1e9), 0.0)
        t = np.maximum(compute, f.moved / (chip.dram_gbps * 1e6)) + p.cpu_op_ms
    return np.where(f.cls == "layout", 0.0, t)


def op_times(f: Features, allowed: tuple[str, ...], chip: Chip, p: Params) -> list[dict]:
    """times[i][unit] for the units op i may use under the compute-units setting."""
    per_unit = {u: unit_times(f, u, chip, p).tolist() for u in allowed}
    return [{u: per_unit[u][i] for u in units if u in per_unit} for i, units in enumerate(f.units)]
