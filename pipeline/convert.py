"""Stage 2, convert: one Core ML package per precision config, plus a conversion report.

Reads artifacts/trace/, writes artifacts/convert/<precision.name>/: model.mlpackage and
report.json (op counts by type and dtype, the ops kept in FP32, casts, weight size, time).
Every variant has FP32 inputs and outputs, so all share one interface.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline import artifacts, lineage, precision, programs
from pipeline.backends import coremltools
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, to_dict, variant_dir
from pipeline.converters import torch_ops  # noqa: F401  (registers converters coremltools lacks)
from pipeline.emulator.runtime import load_program
from pipeline.errors import StageError, UserError

log = logging.getLogger("pipeline.convert")
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


def build_report(package: Path, spec: precision.PrecisionSpec, selector, seconds: float) -> dict:
    prog = load_program(package)
    records = programs.op_records(prog)
    summary = programs.summarize(records)
    selected = [] if selector is None else [
        {"op_type": t, "name": n, "saved_name": precision.sanitize(n), "reason": r}
        for t, n, r in selector.state.fp32]
    chosen = {s["saved_name"] for s in selected}
    fp32_names = {r["name"] for r in summary["fp32_compute_ops"]}
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    return {
        "precision": spec.describe(),
        **summary,
        "selected_fp32_ops": selected,
        "fp32_not_selected": sorted(fp32_names - chosen) if spec.compute == "mixed" else [],
        "weight_bytes": programs.weight_bytes(prog),
        "package_bytes": size,
    }


def run(cfg: DictConfig) -> None:
    spec = precision.spec_from_config(to_dict(cfg.precision))
    artifacts.check_replaceable(variant_dir(cfg, "convert", spec.name), is_dir=True)  # before the work
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    lineage.check_section(manifest["lineage"], "model", to_dict(cfg.model), trace_dir,
                          f"python -m pipeline.trace model={cfg.model.name}")
    traced = load_traced(trace_dir, manifest)
    log.info("converting %s to %s (%s)", manifest["model"], spec.name, spec.compute)
    found = None
    if spec.compute == "auto":  # search for the FP32 set, then convert with it (search.py)
        from pipeline import search, tracking

        if cfg.tracking.enabled:
            tracking.check_store(cfg.tracking.uri)  # the search logs a run: check first

        spec, result, verified, mlmodel, selector, seconds = search.find(
            cfg, traced, manifest, trace_dir, spec.name)
        target = search.Target.from_config(cfg.precision.get("target"), manifest.get("tolerance") or {})
        found = (search.config_yaml(spec, result, target, verified, manifest["model"]),
                 search.search_record(result, target, verified))
        search.log_search(cfg, manifest["model"], result, target, verified)
    else:
        mlmodel, selector, seconds = convert_program(traced, manifest, spec,
                                                     cfg.convert.minimum_deployment_target)
    out_dir = variant_dir(cfg, "convert", spec.name)
    artifacts.check_free_space(out_dir.parent, (trace_dir / manifest["program"]).stat().st_size,
                               "the Core ML package")
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        package = tmp / "model.mlpackage"
        mlmodel.save(str(package))
        programs.make_deterministic(package)
        report = build_report(package, spec, selector, seconds)
        report["model"] = manifest["model"]
        if found:
            (tmp / "precision.yaml").write_text(found[0])
            report["search"] = found[1]
        artifacts.write_json(tmp / "report.json", report)
        asked = {"model": {"name": manifest["model"]}, "precision": to_dict(cfg.precision),
                 "convert": to_dict(cfg.convert)}
        if found:
            asked["search"] = to_dict(cfg.search)
        artifacts.write_lineage(tmp, "convert", asked,
                                {"trace": manifest["lineage"]["fingerprint"]})
    log.info("%s: %d compute ops (%s), %d FP32, %d casts, %.1f s -> %s", spec.name,
             report["compute_ops"], report["ops_by_dtype"], len(report["fp32_compute_ops"]),
             report["casts"], seconds, out_dir)


def main() -> None:
    main_for("convert", run)


if __name__ == "__main__":
    main()
