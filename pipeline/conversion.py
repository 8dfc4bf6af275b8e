"""Converting a traced program with coremltools, one precision config at a time: the
machinery the convert stage and precision=auto's search both use (so neither imports the
other). Importing it registers the torch op converters coremltools lacks."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import precision
from pipeline.coreml_import import coremltools
from pipeline.converters import torch_ops  # noqa: F401  (registers converters coremltools lacks)
from pipeline.errors import StageError, UserError

NP_DTYPES = {"float32": np.float32, "float16": np.float32, "int32": np.int32, "int64": np.int32}


def load_traced(trace_dir: Path, manifest: dict):
    import torch

    path = trace_dir / manifest["program"]
    try:
        if manifest["method"] == "export":
            return torch.export.load(str(path))
        return torch.jit.load(str(path))
    except Exception as exc:  # torch raises many kinds on a damaged file
        raise UserError(f"'{path}' is not a loadable traced program ({type(exc).__name__})",
                        "re-run `python -m pipeline.trace`") from None


def deployment_target(ct, name: str):
    target = getattr(ct.target, str(name), None)
    if target is None:
        options = ", ".join(t.name for t in ct.target)
        raise UserError(f"unknown convert.minimum_deployment_target '{name}'", f"choose one of: {options}")
    return target


def convert_program(traced, manifest: dict, spec: precision.PrecisionSpec, target_name: str):
    """ct.convert with this precision; returns (mlmodel, selector or None, seconds)."""
    ct = coremltools()
    inputs = [ct.TensorType(name=i["name"], shape=tuple(i["shape"]), dtype=NP_DTYPES[i["dtype"]])
              for i in manifest["inputs"]]
    outputs = [ct.TensorType(name=n, dtype=np.float32) for n in manifest["outputs"]]
    compute, selector = precision.compute_precision(spec)
    started = time.perf_counter()
    try:
        mlmodel = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                             compute_precision=compute,
                             minimum_deployment_target=deployment_target(ct, target_name))
    except UserError:
        raise
    except Exception as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        other = "jit" if manifest["method"] == "export" else "export"
        raise StageError("convert", f"coremltools could not convert model "
                         f"'{manifest['model']}' ({spec.name}): {lines[-1]}",
                         f"try trace.method={other}, rewrite the named op in the model, or "
                         "register a converter for it in pipeline/converters/torch_ops.py") from None
    if selector is not None:
        selector.check()
    return mlmodel, selector, time.perf_counter() - started
