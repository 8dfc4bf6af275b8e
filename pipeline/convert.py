"""Stage 2, convert: one Core ML package per precision config, plus a conversion report.

Reads artifacts/trace/, writes artifacts/convert/<precision.name>/: model.mlpackage and
report.json (op counts by type and dtype, the ops kept in FP32, casts, weight size, time).
Every variant has FP32 inputs and outputs, so all share one interface.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from pipeline import artifacts, lineage, precision
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, model_section, to_dict, variant_dir
from pipeline.errors import UserError

log = logging.getLogger("pipeline.convert")
def build_report(package: Path, spec: precision.PrecisionSpec, selector, seconds: float) -> dict:
    from pipeline import programs
    from pipeline.emulator.runtime import load_program

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
    lineage.check_section(manifest["lineage"], "model", model_section(cfg), trace_dir,
                          f"python -m pipeline.trace model={cfg.model.name}")
    from pipeline import programs  # after the checks, not above: pipeline/cli.py
    from pipeline.conversion import convert_program, load_traced

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
