"""Stage 4, evaluate: accuracy, placement and latency of one variant, logged to MLflow.

Reads artifacts/trace/, artifacts/convert/<variant>/ (and the fp32 variant's package, the
reference for per-op errors), artifacts/compile/<variant>/. Writes artifacts/evaluate/<variant>/:
  metrics.json    accuracy (emulated or measured), placement (estimated or Core ML's
                  compute plan), latency (measured on macOS, else "not measured" and why)
  ops.csv         per-op diagnostics from the emulator
  placement.csv   per-op device
  run.json        where the numbers came from (model, variant, emulator, first bad op)
  lineage.json    what produced the folder (pipeline/artifacts.py)
  timings.json    emulator wall time and the MLflow run id: untracked, differ every run
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline import artifacts, lineage, metrics, placement, programs, tracking
from pipeline.backends import (COMPUTE_UNITS, compute_plan, coreml_predict, measure_latency,
                               not_on_macos_reason, resolve_backend)
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, to_dict, variant_dir
from pipeline.emulator import Emulator
from pipeline.emulator import diagnostics as diag
from pipeline.errors import UserError

log = logging.getLogger("pipeline.evaluate")
REFERENCE_VARIANT = "fp32"


def samples(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i] for k, v in inputs.items()} for i in range(n)]


def stack(outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in outputs]) for k in outputs[0]}


def emulate(cfg: DictConfig, package: Path, inputs: dict[str, np.ndarray], variant: str):
    """Run the variant in the emulator, with per-op diagnostics against the FP32 program."""
    mode, device = cfg.evaluate.emulator_mode, cfg.evaluate.device
    emulator = Emulator(package, mode, device)
    reference = None
    if cfg.evaluate.diagnostics and variant != REFERENCE_VARIANT:
        ref_package = variant_dir(cfg, "convert", REFERENCE_VARIANT) / "model.mlpackage"
        if ref_package.exists():
            reference = Emulator(ref_package, mode, device)
        else:
            log.warning("no fp32 package at %s: per-op errors vs FP32 are left empty", ref_package)
    started = time.perf_counter()
    outs, rows = diag.run_diagnostics(emulator, reference, samples(inputs))
    seconds = time.perf_counter() - started
    if reference is None and variant != REFERENCE_VARIANT:
        for r in rows:
            r.rel_error_vs_fp32 = None
    return stack(outs), rows, seconds, sorted(emulator.fallbacks)


def placement_section(cfg: DictConfig, backend: str, package: Path, compiled: Path | None,
                      out_dir: Path) -> dict:
    units = cfg.evaluate.placement_compute_units
    if units not in COMPUTE_UNITS:
        raise UserError(f"unknown evaluate.placement_compute_units '{units}'",
                        f"choose one of: {', '.join(COMPUTE_UNITS)}")
    if backend == "coreml" and compiled is not None:
        section = {"source": "measured (Core ML MLComputePlan)", "compute_units": units}
        for cu in COMPUTE_UNITS:
            rows = compute_plan(compiled, cu)
            placement.write_table(rows, out_dir / f"placement_{cu}.csv")
            if cu == units:
                placement.write_table(rows, out_dir / "placement.csv")
            section[cu] = placement.summarize(rows, "measured")
        section.update({k: v for k, v in section[units].items() if k != "source"})
        return section
    rows = placement.estimate(programs.read_ops(package), units)
    placement.write_table(rows, out_dir / "placement.csv")
    summary = placement.summarize(rows, "estimated")
    summary["source"] = "estimated (rules in pipeline/placement.py)"
    summary["compute_units"] = units
    return summary


def latency_section(cfg: DictConfig, backend: str, compiled: Path | None,
                    inputs: dict[str, np.ndarray]) -> dict:
    if backend != "coreml" or compiled is None:
        return {"status": "not measured", "reason": not_on_macos_reason()}
    lat = cfg.evaluate.latency
    section: dict = {"status": "measured", "source": "measured (Core ML predict, wall clock)",
                     "warmup": int(lat.warmup), "runs": int(lat.runs)}
    for cu in lat.compute_units:
        m = measure_latency(compiled, inputs, cu, int(lat.warmup), int(lat.runs))
        section[cu] = {"median_ms": round(m.median_ms, 3), "p90_ms": round(m.p90_ms, 3)}
    return section


def check_inputs(cfg: DictConfig) -> tuple[Path, dict, dict]:
    """The trace, convert and compile folders this evaluation reads, checked against their
    lineage: same model and precision as asked, and made from each other as they are now.
    Returns (trace folder, trace manifest, upstream fingerprints)."""
    variant, model = cfg.precision.name, cfg.model.name
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    lineage.check_section(manifest["lineage"], "model", to_dict(cfg.model), trace_dir,
                          f"python -m pipeline.trace model={model}")
    trace_fp = manifest["lineage"]["fingerprint"]
    upstream = {"trace": trace_fp}
    convert_cmd = f"python -m pipeline.convert model={model} precision={variant}"
    convert_dir = variant_dir(cfg, "convert")
    converted = artifacts.open_output(convert_dir, convert_cmd)
    lineage.check_section(converted, "precision", to_dict(cfg.precision), convert_dir, convert_cmd)
    lineage.check_upstream(converted, "trace", trace_fp, convert_dir, convert_cmd)
    upstream["convert"] = converted["fingerprint"]
    compile_dir = variant_dir(cfg, "compile")
    compile_cmd = f"python -m pipeline.compile model={model} precision={variant}"
    compiled = artifacts.open_output(compile_dir, compile_cmd)
    lineage.check_upstream(compiled, "convert", converted["fingerprint"], compile_dir, compile_cmd)
    upstream["compile"] = compiled["fingerprint"]
    ref_dir = variant_dir(cfg, "convert", REFERENCE_VARIANT)
    if variant != REFERENCE_VARIANT and cfg.evaluate.diagnostics and ref_dir.is_dir():
        ref_cmd = f"python -m pipeline.convert model={model} precision={REFERENCE_VARIANT}"
        reference = artifacts.open_output(ref_dir, ref_cmd)
        lineage.check_upstream(reference, "trace", trace_fp, ref_dir, ref_cmd)
        upstream["convert_fp32"] = reference["fingerprint"]
    return trace_dir, manifest, upstream


def run(cfg: DictConfig) -> None:
    variant = cfg.precision.name
    trace_dir, manifest, upstream = check_inputs(cfg)
    package = variant_dir(cfg, "convert") / "model.mlpackage"
    compile_record_path = variant_dir(cfg, "compile") / "compile.json"
    task = manifest.get("task_metric")
    if task and task not in metrics.TASK_METRICS:
        raise UserError(f"unknown model.task_metric '{task}'",
                        f"choose one of: {', '.join(metrics.TASK_METRICS)} (or null)")
    backend = resolve_backend(cfg.backend)
    if cfg.tracking.enabled:
        tracking.check_store(cfg.tracking.uri)  # fail before the work, not after it
    compile_record = artifacts.read_json(compile_record_path)
    compiled = None
    if backend == "coreml" and compile_record.get("coreml_compiled"):
        compiled = variant_dir(cfg, "compile") / compile_record["compiled"]
    inputs = artifacts.read_npz(trace_dir / "inputs.npz")
    reference = artifacts.read_npz(trace_dir / "reference.npz")
    conversion = artifacts.read_json(variant_dir(cfg, "convert") / "report.json")

    log.info("evaluating %s/%s on %s over %d samples", manifest["model"], variant, backend,
             manifest["samples"])
    out_dir = variant_dir(cfg, "evaluate")
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        outputs, rows, emu_seconds, fallbacks = emulate(cfg, package, inputs, variant)
        accuracy_source = "emulated"
        if backend == "coreml" and compiled is not None:
            outputs = stack(coreml_predict(compiled, inputs))
            accuracy_source = "measured (Core ML predict)"
        accuracy = metrics.accuracy(reference, outputs, manifest.get("tolerance") or {}, task)
        diag.write_table(rows, tmp / "ops.csv")
        first = diag.first_nonfinite(rows)
        worst = max((r for r in rows if r.rel_error_vs_fp32 is not None),
                    key=lambda r: r.rel_error_vs_fp32 or 0.0, default=None)
        result = {
            "accuracy": {"source": accuracy_source, **accuracy},
            "placement": placement_section(cfg, backend, package, compiled, tmp),
            "latency": latency_section(cfg, backend, compiled, inputs),
            "program": {"compute_ops": conversion["compute_ops"],
                        "fp32_compute_ops": len(conversion["fp32_compute_ops"]),
                        "casts": conversion["casts"],
                        "overflowing_ops": sum(1 for r in rows if r.inf_count)},
        }
        details = {
            "model": manifest["model"], "variant": variant, "backend": backend,
            "emulator": {"mode": cfg.evaluate.emulator_mode, "device": cfg.evaluate.device,
                         "native_fp16_fallbacks": fallbacks},
            "first_nonfinite_op": None if first is None else
            {"name": first.name, "op_type": first.op_type, "dtype": first.dtype},
            "worst_op_vs_fp32": None if worst is None else
            {"name": worst.name, "op_type": worst.op_type,
             "rel_error": worst.rel_error_vs_fp32},
            "tolerance": manifest.get("tolerance") or {},
        }
        artifacts.write_json(tmp / "metrics.json", result)
        artifacts.write_json(tmp / "run.json", details)
        artifacts.write_json(tmp / "conversion_report.json", conversion)
        artifacts.write_lineage(tmp, "evaluate", {"model": {"name": manifest["model"]},
                                                  "precision": {"name": variant},
                                                  "evaluate": to_dict(cfg.evaluate),
                                                  "backend": backend}, upstream)
        # Wall time and the MLflow run id change on every run: untracked (timings.json).
        timings = {"emulator_wall_seconds_not_core_ml_latency": round(emu_seconds, 3)}
        if cfg.tracking.enabled:
            timings["mlflow_run_id"] = log_to_mlflow(cfg, manifest, variant, backend, result,
                                                     details, tmp, upstream, timings)
        artifacts.write_json(tmp / "timings.json", timings)
    verdict = "PASSES" if accuracy["passes"] else "FAILS"
    log.info("%s %s tolerance: cosine_min %.5f, SNR %.1f dB, non-finite %.4f%s; NE op share "
             "%.2f (%s)", variant, verdict, accuracy["cosine_min"], accuracy["snr_db"],
             accuracy["nonfinite_fraction"],
             f"; first non-finite at {first.op_type} '{first.name}'" if first else "",
             result["placement"]["ne_op_share"], result["placement"]["source"].split()[0])


def log_to_mlflow(cfg, manifest, variant, backend, result, details, folder: Path,
                  upstream: dict, timings: dict) -> str:
    flat = tracking.flatten(result)
    numbers, texts = tracking.split_numeric(flat)
    params = tracking.flatten({"model": to_dict(cfg.model), "precision": to_dict(cfg.precision),
                               "convert": to_dict(cfg.convert), "evaluate": to_dict(cfg.evaluate),
                               "trace": to_dict(cfg.trace), "backend": backend})
    params["latency"] = result["latency"]["status"]
    tags = {"model": manifest["model"], "variant": variant, "backend": backend,
            "git_commit": tracking.git_commit(), **texts,
            **{f"version.{k}": v for k, v in tracking.versions().items()},
            **tracking.dvc_stage_hashes(["trace", f"convert@{variant}", f"compile@{variant}"])}
    tags.update({f"lineage.{k}": v for k, v in upstream.items()})
    numbers.update(timings)
    if details.get("first_nonfinite_op"):
        tags["first_nonfinite_op"] = details["first_nonfinite_op"]["name"]
    files = [folder / "metrics.json", folder / "ops.csv", folder / "conversion_report.json",
             *sorted(folder.glob("placement*.csv"))]
    experiment = cfg.tracking.experiment or manifest["model"]
    return tracking.log_run(cfg.tracking.uri, experiment, f"{manifest['model']}-{variant}-{backend}",
                            params, numbers, tags, files)


def main() -> None:
    main_for("evaluate", run)


if __name__ == "__main__":
    main()
