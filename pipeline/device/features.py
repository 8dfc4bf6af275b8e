"""The calibration set: public architectures converted once with coremltools, their ops kept
as records in a committed file (data/calibration_ops.json.gz), so fits and tests need no
conversion. Rebuild it with `python -m pipeline.device.calibrate --convert`.
"""
from __future__ import annotations

import csv
import gzip
import json
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.programs import OpRecord

DATA = Path(__file__).parent / "data"
OPS_FILE = DATA / "calibration_ops.json.gz"
PUBLISHED = DATA / "published_latency.csv"  # copy of shared/calibration/published_latency.csv
MIXED = {"name": "mixed", "compute": "mixed", "fp32_regions": [{"start": "pow", "end": "sqrt"}]}

# model name in published_latency.csv -> (family, builder, keyword arguments, input shape)
ARCHITECTURES = {
    "edgesam_encoder": ("edgesam", "pipeline.models.edgesam.build_encoder",
                        {"massive_activations": {"enabled": True, "channels": [17, 101, 230],
                                                 "value": 3000.0}}, (1, 3, 1024, 1024)),
    **{f"repvit_{v}": ("repvit", "pipeline.models.repvit.build_repvit", {"variant": v},
                       (1, 3, 224, 224)) for v in ("m0_9", "m1_0", "m1_1", "m1_5", "m2_3")},
    **{f"efficientformer_{v}": ("efficientformer",
                                "pipeline.models.efficientformer.build_efficientformer",
                                {"variant": v}, (1, 3, 224, 224)) for v in ("l1", "l3", "l7")},
    "mobilenetv2_1_0": ("mobilenetv2", "pipeline.models.convnets.build_mobilenetv2", {},
                        (1, 3, 224, 224)),
    "resnet50": ("resnet", "pipeline.models.convnets.build_resnet50", {}, (1, 3, 224, 224)),
}


@dataclass(frozen=True)
class Measurement:
    """One row of published_latency.csv."""

    model: str
    family: str
    chip: str
    compute_units: str
    precision: str        # fp16 | fp32 | mixed
    latency_ms: float
    device: str
    source: str


def published(path: Path = PUBLISHED) -> list[Measurement]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            precision = r["precision"].split()[0]
            rows.append(Measurement(r["model"], ARCHITECTURES[r["model"]][0], r["chip"],
                                    r["compute_units"], precision, float(r["latency_ms"]),
                                    r["device"], r["source"]))
    return rows


def convert_ops(model: str, precision: str) -> list[OpRecord]:
    """Trace and convert one calibration architecture (real coremltools), return its ops."""
    import importlib

    import numpy as np
    import torch

    from pipeline import precision as prec
    from pipeline.coreml_import import coremltools, quiet
    from pipeline.programs import read_ops

    _family, target, kwargs, shape = ARCHITECTURES[model]
    module, _, attr = target.rpartition(".")
    net = getattr(importlib.import_module(module), attr)(**kwargs)
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(shape))
    spec = prec.spec_from_config(MIXED if precision == "mixed" else
                                 {"name": precision, "compute": precision})
    compute, _selector = prec.compute_precision(spec)
    ct = coremltools()
    with quiet():
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape, dtype=np.float32)],
                             convert_to="mlprogram", compute_precision=compute,
                             minimum_deployment_target=ct.target.iOS16)
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel.save(f"{tmp}/m.mlpackage")
        return read_ops(f"{tmp}/m.mlpackage")


def to_json(records: list[OpRecord]) -> list[list]:
    return [[getattr(r, f.name) for f in fields(OpRecord)] for r in records]


def from_json(rows: list[list], names: list[str] | None = None) -> list[OpRecord]:
    names = names or [f.name for f in fields(OpRecord)]
    out = []
    for row in rows:
        values = dict(zip(names, row))
        values["shape"] = tuple(values.get("shape", ()))
        out.append(OpRecord(**values))
    return out


def write_ops(programs: dict[str, list[OpRecord]], path: Path = OPS_FILE) -> None:
    """Deterministic gzip JSON: {"fields": [...], "programs": {"model/precision": rows}}."""
    payload = {"fields": [f.name for f in fields(OpRecord)],
               "programs": {k: to_json(v) for k, v in sorted(programs.items())}}
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(text)
    tmp.replace(path)


def read_ops_file(path: Path = OPS_FILE) -> dict[str, list[OpRecord]]:
    """The committed op records (fields missing from an older file take their defaults)."""
    with gzip.open(path, "rt") as f:
        payload = json.load(f)
    unknown = set(payload["fields"]) - {f.name for f in fields(OpRecord)}
    if unknown:
        raise ValueError(f"{path} has fields OpRecord lacks ({sorted(unknown)}); rebuild it "
                         "with python -m pipeline.device.calibrate --convert")
    return {k: from_json(v, payload["fields"]) for k, v in payload["programs"].items()}


def needed_programs() -> list[tuple[str, str]]:
    """(model, precision) pairs the published measurements need."""
    return sorted({(m.model, m.precision) for m in published()})
