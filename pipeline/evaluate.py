"""Stage 4, evaluate: accuracy, placement and latency of one variant, logged to MLflow.

The backend (pipeline/backends, chosen by `backend`) answers for accuracy, placement and
latency; the emulator gives the per-op diagnostics on every backend. Reads artifacts/trace/,
artifacts/convert/<variant>/ (and the fp32 variant's package, the reference for per-op
errors), artifacts/compile/<variant>/. Writes artifacts/evaluate/<variant>/:
  summary.json    the headline figures under short keys (accuracy.snr_db, placement.ne_share,
                  latency.est_ms_ALL, ...): DVC's metrics, the same names as in MLflow
  metrics.json    accuracy (emulated, or measured per compute-units setting on macOS);
                  placement and latency per compute-units setting for device.chip (estimated
                  by the device model; on macOS measured, with the estimate and its error
                  beside); diagnostics (emulated) -- every section names its source
  ops.csv         per-op diagnostics from the emulator
  placement.csv   per-op device under device.compute_units, and placement/placement_<units>.csv
                  for each setting; one schema for measured and estimated (backends/protocol.py)
  run.json        where the numbers came from (model, variant, emulator, first bad op)
  lineage.json    what produced the folder (pipeline/artifacts.py)
and artifacts/timings/evaluate/<variant>.json: the emulator's wall time and the MLflow run id
(untracked: they differ every run; outside the folder, so the report's dependency on
artifacts/evaluate stays the same from run to run).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from pipeline import artifacts, lineage, metrics, tracking
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, model_section, to_dict, variant_dir
from pipeline.errors import UserError

if TYPE_CHECKING:  # the emulator and backends load torch: imported where used (pipeline/cli.py)
    from pipeline.backends import Backend, Settings
    from pipeline.emulator.numerics import Numerics

log = logging.getLogger("pipeline.evaluate")
REFERENCE_VARIANT = "fp32"


def samples(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i] for k, v in inputs.items()} for i in range(n)]


def emulate(cfg: DictConfig, package: Path, inputs: dict[str, np.ndarray], variant: str,
            numerics: Numerics):
    """The variant in the emulator, with per-op diagnostics against the FP32 program (on
    every backend: Core ML exposes no per-op values); under device numerics also under
    IEEE numerics (outputs in the last item, else None). ``numerics.units`` is the
    backend's placement: each op computes as the unit it runs on."""
    from pipeline.emulator import Emulator
    from pipeline.emulator import diagnostics as diag
    from pipeline.emulator.numerics import Numerics

    device = cfg.evaluate.device
    log.info("loading %s%s into the emulator", variant,
             "" if variant == REFERENCE_VARIANT else " and the FP32 program")
    emulator = Emulator(package, device=device, numerics=numerics)
    reference = None
    if cfg.evaluate.diagnostics and variant != REFERENCE_VARIANT:
        ref_package = variant_dir(cfg, "convert", REFERENCE_VARIANT) / "model.mlpackage"
        if ref_package.exists():
            reference = Emulator(ref_package, device=device, numerics=numerics)
        else:
            log.warning("no fp32 package at %s: per-op errors vs FP32 are left empty", ref_package)
    ieee = None
    if numerics.mode == "device":
        ieee = Emulator(package, device=device, numerics=Numerics("ieee"))
    started = time.perf_counter()
    outs, rows, ieee_outs = diag.run_diagnostics(emulator, reference, samples(inputs), ieee,
                                                 desc=f"evaluate {variant}")
    seconds = time.perf_counter() - started
    if reference is None and variant != REFERENCE_VARIANT:
        for r in rows:
            r.rel_error_vs_fp32 = None
    return (metrics.stack_samples(outs), rows, seconds, sorted(emulator.fallbacks),
            metrics.stack_samples(ieee_outs) if ieee_outs else None)


# ---- numerics (issue 12): which numerics produced the numbers, and IEEE where they differ
def numerics_section(num: Numerics, rows, accuracy: dict, ieee_outputs, reference,
                     tolerance: dict, task) -> dict:
    from pipeline.emulator import diagnostics as diag

    used: dict[str, int] = {}
    for r in rows:
        used[r.numerics] = used.get(r.numerics, 0) + 1
    section: dict = {"mode": num.mode, "profile": num.profile or "per-op placement",
                     "chip": num.chip, "description": num.describe(), "ops_by_profile": used,
                     "first_divergence_vs_ieee": diag.first_divergence(rows)}
    if ieee_outputs is not None:
        acc = metrics.accuracy(reference, ieee_outputs, tolerance, task)
        section["ieee"] = {k: acc[k] for k in ("passes", "cosine_min", "snr_db")}
        if acc["passes"] != accuracy["passes"]:
            first = section["first_divergence_vs_ieee"]
            section["verdict_changed"] = (
                f"{'fails' if not accuracy['passes'] else 'passes'} under device numerics, "
                f"{'passes' if acc['passes'] else 'fails'} under IEEE"
                + (f": device and IEEE first part at {first['op_type']} '{first['name']}' "
                   f"({first['numerics']} profile)" if first else ""))
    return section
# ---- end numerics


def check_device(cfg: DictConfig) -> None:
    """Unknown chip or compute units: one line before the work, not after it."""
    from pipeline.device import CHIPS, COMPUTE_UNITS

    if cfg.device.chip not in CHIPS:
        raise UserError(f"unknown device.chip '{cfg.device.chip}'",
                        f"choose one of: {', '.join(CHIPS)}")
    for cu in [cfg.device.compute_units, *cfg.evaluate.latency.compute_units]:
        if cu not in COMPUTE_UNITS:
            raise UserError(f"unknown compute units '{cu}' (device.compute_units or "
                            "evaluate.latency.compute_units)",
                            f"choose from: {', '.join(COMPUTE_UNITS)}")


def accuracy_section(backend: Backend, settings: Settings, reference, inputs, tolerance,
                     task, emulated: dict[str, np.ndarray], internal: int = 0) -> dict:
    """Accuracy under the headline compute units; on a backend whose units compute
    differently (Core ML), also under every listed setting. Elsewhere the emulated outputs
    (already computed for the diagnostics) are the backend's predictions."""
    if backend.per_unit_predictions:
        by_units = {cu: metrics.accuracy(reference, backend.predict(inputs, cu), tolerance, task,
                                         internal) for cu in settings.latency_units}
    else:
        by_units = {settings.compute_units: metrics.accuracy(reference, emulated, tolerance,
                                                             task, internal)}
    section = {"source": backend.accuracy_source, "compute_units": settings.compute_units,
               **by_units[settings.compute_units]}
    if len(by_units) > 1:
        section["by_compute_units"] = {
            cu: {k: a[k] for k in ("passes", "cosine_min", "snr_db", "nonfinite_fraction")}
            for cu, a in by_units.items()}
    return section


def latency_section(backend: Backend, settings: Settings, inputs) -> dict:
    """Estimated ms per compute-units setting for the chip; measured beside it on macOS."""
    figures = {cu: backend.latency(inputs, cu) for cu in settings.latency_units}
    head = figures[settings.compute_units]
    section: dict = {"status": head.status, "source": head.source, "chip": settings.chip,
                     "compute_units": settings.compute_units,
                     "estimated_ms": {cu: f.estimated_ms for cu, f in figures.items()}}
    if head.extra.get("calibration"):
        section["calibration"] = head.extra["calibration"]
    if head.measured_ms is not None:
        section["estimate_source"] = head.extra.get("estimate_source")
        section["warmup"], section["runs"] = settings.warmup, settings.runs
        section["measured_ms"] = {cu: f.measured_ms for cu, f in figures.items()}
        section["p90_ms"] = {cu: f.p90_ms for cu, f in figures.items()}
        section["estimate_error"] = {cu: round(f.estimate_error, 4)
                                     for cu, f in figures.items() if f.estimate_error is not None}
    return section


def placement_section(backend: Backend, settings: Settings, out_dir: Path) -> dict:
    """The headline setting's summary at the top, every setting's under by_compute_units;
    one CSV per setting (placement.csv is the headline's)."""
    by_units = {}
    (out_dir / "placement").mkdir(exist_ok=True)
    for cu in settings.latency_units:
        table = backend.placement(cu)
        table.write(out_dir / "placement" / f"placement_{cu}.csv")
        if cu == settings.compute_units:
            table.write(out_dir / "placement.csv")
        by_units[cu] = table.summary()
    head = by_units[settings.compute_units]
    return {**head, "chip": settings.chip,
            "by_compute_units": {cu: {k: v for k, v in s.items() if k != "source"}
                                 for cu, s in by_units.items()}}


def check_inputs(cfg: DictConfig) -> tuple[Path, dict, dict]:
    """The trace, convert and compile folders this evaluation reads, checked against their
    lineage: same model and precision as asked, and made from each other as they are now.
    Returns (trace folder, trace manifest, upstream fingerprints)."""
    variant, model = cfg.precision.name, cfg.model.name
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    lineage.check_section(manifest["lineage"], "model", model_section(cfg), trace_dir,
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
    check_device(cfg)
    if cfg.tracking.enabled:
        tracking.check_store(cfg.tracking.uri)  # fail before the work, not after it
    from pipeline import backends  # after the checks, not above: pipeline/cli.py
    from pipeline.backends import Settings
    from pipeline.emulator import diagnostics as diag
    from pipeline.emulator.numerics.apply import units_from_compute_plan

    compile_record = artifacts.read_json(compile_record_path)
    compiled = (variant_dir(cfg, "compile") / compile_record["compiled"]
                if compile_record.get("compiled") else None)
    backend = backends.for_config(cfg, package, compiled)
    if compile_record.get("backend") != backend.name:
        raise UserError(f"variant '{variant}' was compiled for backend "
                        f"'{compile_record.get('backend')}', not '{backend.name}'",
                        f"run `python -m pipeline.compile precision={variant} "
                        f"backend={backend.name}` first")
    settings = Settings.from_config(cfg)
    inputs = artifacts.read_npz(trace_dir / "inputs.npz")
    reference = artifacts.read_npz(trace_dir / "reference.npz")
    conversion = artifacts.read_json(variant_dir(cfg, "convert") / "report.json")
    tolerance = manifest.get("tolerance") or {}

    log.info("evaluating %s/%s on %s over %d samples", manifest["model"], variant, backend.name,
             manifest["samples"])
    out_dir = variant_dir(cfg, "evaluate")
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        numerics = settings.numerics
        if numerics.per_op and not numerics.profile:  # each op computes as its unit does
            log.info("placing the ops on %s (%s) for device numerics", settings.chip,
                     settings.compute_units)
            head = backend.placement(settings.compute_units)
            numerics.units = units_from_compute_plan(head.rows)
            numerics.compute_units = f"{settings.compute_units}; {head.source.split(' (')[0]}"
        outputs, rows, emu_seconds, fallbacks, ieee_outputs = emulate(cfg, package, inputs,
                                                                      variant, numerics)
        internal = sum(1 for r in rows if r.inf_count or r.nan_count)  # ops with inf/NaN inside
        diag.write_table(rows, tmp / "ops.csv")
        first = diag.first_nonfinite(rows)
        worst = max((r for r in rows if r.rel_error_vs_fp32 is not None),
                    key=lambda r: r.rel_error_vs_fp32 or 0.0, default=None)
        accuracy = accuracy_section(backend, settings, reference, inputs, tolerance, task,
                                    outputs, internal)
        numerics_result = numerics_section(numerics, rows, accuracy, ieee_outputs, reference,
                                           tolerance, task)
        if backend.per_unit_predictions:
            numerics_result["note"] = ("accuracy measured on the device; these numerics apply "
                                       "to ops.csv only")
        log.info("latency and placement under %s", ", ".join(settings.latency_units))
        latency = latency_section(backend, settings, inputs)  # before placement: its ms use it
        result = {
            "accuracy": accuracy,
            "numerics": numerics_result,
            "placement": placement_section(backend, settings, tmp),
            "latency": latency,
            "program": {"compute_ops": conversion["compute_ops"],
                        "fp32_compute_ops": len(conversion["fp32_compute_ops"]),
                        "casts": conversion["casts"]},
            # per-op figures come from the emulator on every backend, and say so
            "diagnostics": {"source": f"emulated (pipeline/emulator, "
                                      f"{numerics.describe()})",
                            # counted where inf/NaN originate (finite inputs), not
                            # every op that passes them along
                            "overflowing_ops": len(diag.nonfinite_origins(rows)),
                            "nonfinite_ops": internal,
                            "first_nonfinite_op": None if first is None else first.name},
        }
        details = {
            "model": manifest["model"], "variant": variant, "backend": backend.name,
            "emulator": {"numerics": numerics_result["description"],
                         "device": cfg.evaluate.device,
                         "native_fp16_fallbacks": fallbacks},
            "first_nonfinite_op": None if first is None else
            {"name": first.name, "op_type": first.op_type, "dtype": first.dtype,
             "source": "emulated"},
            "worst_op_vs_fp32": None if worst is None else
            {"name": worst.name, "op_type": worst.op_type,
             "rel_error": worst.rel_error_vs_fp32, "source": "emulated"},
            "tolerance": tolerance,
        }
        artifacts.write_json(tmp / "metrics.json", result)
        artifacts.write_json(tmp / "summary.json", tracking.summary(result))  # DVC's metrics
        artifacts.write_json(tmp / "run.json", details)
        artifacts.write_json(tmp / "conversion_report.json", conversion)
        artifacts.write_lineage(tmp, "evaluate", {"model": {"name": manifest["model"]},
                                                  "precision": {"name": variant},
                                                  "evaluate": to_dict(cfg.evaluate),
                                                  "device": to_dict(cfg.device),
                                                  "backend": backend.name}, upstream)
        # Wall time and the MLflow run id change on every run: untracked, and outside the
        # evaluate folder, whose hash the report stage depends on (timings_path).
        timings = {"emulator_wall_seconds_not_core_ml_latency": round(emu_seconds, 3)}
        if cfg.tracking.enabled:
            log.info("logging the run to MLflow (%s)", cfg.tracking.uri)
            timings["mlflow_run_id"] = log_to_mlflow(cfg, manifest, variant, backend.name,
                                                     result, details, tmp, upstream, timings)
    artifacts.write_json(timings_path(cfg, variant), timings)
    verdict = "PASSES" if accuracy["passes"] else "FAILS"
    lat = result["latency"]
    ms = (lat.get("measured_ms") or lat["estimated_ms"])[settings.compute_units]
    log.info("%s %s tolerance: cosine_min %.5f, SNR %.1f dB, non-finite %.4f%s; NE op share "
             "%.2f; %s %.2f ms under %s (%s)", variant, verdict, accuracy["cosine_min"],
             accuracy["snr_db"], accuracy["nonfinite_fraction"],
             f"; first non-finite at {first.op_type} '{first.name}'" if first else "",
             result["placement"]["ne_op_share"], lat["status"], ms, settings.compute_units,
             lat["source"])


def timings_path(cfg: DictConfig, variant: str) -> Path:
    """artifacts/timings/evaluate/<variant>.json: no stage reads it, DVC does not track it."""
    return artifacts_dir(cfg) / "timings" / "evaluate" / f"{variant}.json"


def describe(precision: dict, result: dict, first_bad: dict | None) -> str:
    """What the variant is and how it did, in one line: the MLflow run's description."""
    compute = precision.get("compute")
    kept = [f"{r['start']}..{r['end']}" for r in precision.get("fp32_regions") or []]
    kept += [f"every {t}" for t in precision.get("fp32_ops") or []]
    kept += [f"ops named {n}" for n in precision.get("fp32_names") or []]
    what = {"fp32": "FP32 throughout", "fp16": "FP16 throughout",
            "auto": "FP16 with the ops precision=auto found kept in FP32"}.get(
        compute, f"FP16 with {', '.join(kept) or 'nothing'} kept in FP32")
    acc, lat, prog = result["accuracy"], result["latency"], result["program"]
    units = lat["compute_units"]
    ms, kind = tracking.headline_ms(tracking.summary(result), units)
    verdict = "passes" if acc["passes"] else "**fails**"
    bad = f" (first non-finite op: {first_bad['op_type']} `{first_bad['name']}`)" if first_bad else ""
    return (f"{what}: {prog['fp32_compute_ops']} ops FP32; {verdict} at {acc['snr_db']:.1f} dB "
            f"SNR{bad}; Neural Engine share {result['placement']['ne_op_share']:.2f}; "
            f"{'est.' if kind == 'est' else 'measured'} {ms:.2f} ms on {lat['chip']} ({units}). "
            f"Accuracy {acc['source']}; latency {lat['source']}.")


def log_to_mlflow(cfg, manifest, variant, backend, result, details, folder: Path,
                  upstream: dict, timings: dict) -> str:
    """One variant run: about 20 metrics named by kind (tracking.summary; the full detail
    is the metrics.json artifact), params without empty values, the compute units as params."""
    numbers = tracking.metric_names(tracking.summary(result))
    numbers["emulator/wall_s"] = timings["emulator_wall_seconds_not_core_ml_latency"]
    _, texts = tracking.split_numeric(tracking.flatten(result))
    params = tracking.clean_params(tracking.flatten({
        "model": to_dict(cfg.model), "precision": to_dict(cfg.precision),
        "convert": to_dict(cfg.convert), "evaluate": to_dict(cfg.evaluate),
        "trace": to_dict(cfg.trace), "device": to_dict(cfg.device), "backend": backend}))
    params["latency"] = result["latency"]["status"]
    params["compute_units"] = result["latency"]["compute_units"]
    tags = {"kind": "variant", "model": manifest["model"], "variant": variant, "backend": backend,
            "git_commit": tracking.git_commit(), **texts, **tracking.device_tags(result),
            **{f"version.{k}": v for k, v in tracking.versions().items()},
            **tracking.dvc_stage_hashes(["trace", f"convert@{variant}", f"compile@{variant}"])}
    tags["numerics"] = result["numerics"]["description"]
    tags.update({f"lineage.{k}": v for k, v in upstream.items()})
    if details.get("first_nonfinite_op"):
        tags["first_nonfinite_op"] = details["first_nonfinite_op"]["name"]
    files = [folder / "metrics.json", folder / "summary.json", folder / "ops.csv",
             folder / "conversion_report.json", folder / "placement.csv",
             *sorted((folder / "placement").glob("*.csv"))]
    experiment = cfg.tracking.experiment or manifest["model"]
    return tracking.log_run(cfg.tracking.uri, experiment, f"{variant}-{backend}",
                            params, numbers, tags, files,
                            description=describe(to_dict(cfg.precision), result,
                                                 details.get("first_nonfinite_op")))


def main() -> None:
    main_for("evaluate", run)


if __name__ == "__main__":
    main()
