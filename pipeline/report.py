"""Stage 5, report: compare every evaluated variant of the model, in a table and two plots.

Reads artifacts/evaluate/*/ (the variants evaluated for this model). Writes artifacts/report/:
  report.md      the comparison table, latency per variant x compute units (estimated for
                 device.chip, or measured), the recommendation and its rule, what failed
  tradeoff.png   accuracy (SNR) against latency, one point per variant
  ops.png        per-op max |activation| and error vs FP32 along the program, FP16 limit drawn,
                 overflowing ops marked
  tradeoff.csv, ops.csv   the same data, declared as DVC plots
and logs them into the pipeline run's parent MLflow run (pipeline/tracking).
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from pipeline import artifacts, lineage, tracking
from pipeline import plots as figures
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, model_section, to_dict
from pipeline.errors import UserError

log = logging.getLogger("pipeline.report")
ORDER = {"fp32": 0, "fp16": 1, "mixed": 2, "auto": 3}


def collect(cfg: DictConfig, model: str, trace_fp: str) -> list[dict]:
    from pipeline.emulator.diagnostics import read_table  # loads torch: pipeline/cli.py

    variants = []
    root = artifacts_dir(cfg) / "evaluate"
    for folder in sorted(root.glob("*/")):
        if not (folder / "metrics.json").is_file() or not (folder / "run.json").is_file():
            continue
        if not (folder / "lineage.json").is_file():  # what DVC leaves of a variant no longer run
            log.warning("skipping %s: no lineage.json (a variant this pipeline no longer "
                        "runs, or an unfinished one); `python -m pipeline.evaluate "
                        "precision=%s` makes it whole", folder, folder.name)
            continue
        record = artifacts.open_output(folder, f"python -m pipeline.evaluate model={model} "
                                               f"precision={folder.name}")
        run = artifacts.read_json(folder / "run.json")
        if run.get("model") != model:
            continue
        made_from = (record.get("upstream") or {}).get("trace")
        if made_from != trace_fp:  # evaluated on an earlier trace: not comparable
            log.warning("skipping %s: evaluated on trace %s, the trace is now %s (re-run "
                        "`python -m pipeline.evaluate model=%s precision=%s`)", folder,
                        made_from, trace_fp, model, folder.name)
            continue
        variants.append({"name": run["variant"], "run": run,
                         "metrics": artifacts.read_json(folder / "metrics.json"),
                         "ops": read_table(folder / "ops.csv")})
    variants.sort(key=lambda v: (ORDER.get(v["name"], 9), v["name"]))
    if not variants:
        raise UserError(f"no evaluated variants of model '{model}' under {root}",
                        "run the evaluate stage first (dvc repro)")
    return variants


def latency_ms(m: dict, units: str | None = None) -> float:
    """The variant's latency under ``units`` (default: the headline setting): measured where
    measured, else the device model's estimate."""
    lat = m["latency"]
    units = units or lat["compute_units"]
    measured = (lat.get("measured_ms") or {}).get(units)
    return float(measured if measured is not None else lat["estimated_ms"][units])


TIE = 0.01  # latencies within 1% of the fastest count as a tie (below any estimate's error)
RULE = ("the fastest variant that meets the model's tolerance, by {kind} latency under {units} "
        "on {chip}; among those within 1% of the fastest, the one with the fewest FP32 ops")


def recommend(variants: list[dict]) -> dict | None:
    """The fastest passing variant; among those within 1% of it, the fewest FP32 ops."""
    passing = [v for v in variants if v["metrics"]["accuracy"]["passes"]]
    if not passing:
        return None
    fastest = min(latency_ms(v["metrics"]) for v in passing)
    near = [v for v in passing if latency_ms(v["metrics"]) <= fastest * (1 + TIE)]
    return min(near, key=lambda v: (fp32_ops(v), latency_ms(v["metrics"]), v["name"]))


def fp32_ops(v: dict) -> int:
    return v["metrics"]["program"]["fp32_compute_ops"]


def why(best: dict, variants: list[dict], kind: str) -> str:
    """The rule applied, in words: every passing variant ranked, and what decided."""
    passing = sorted((v for v in variants if v["metrics"]["accuracy"]["passes"]),
                     key=lambda v: latency_ms(v["metrics"]))
    fastest = latency_ms(passing[0]["metrics"])
    ranked = ", ".join(f"`{v['name']}` {latency_ms(v['metrics']):.2f} ms ({fp32_ops(v)} FP32 ops)"
                       for v in passing)
    failing = [f"`{v['name']}`" for v in variants if not v["metrics"]["accuracy"]["passes"]]
    text = f"Passing, fastest first ({kind}): {ranked}."
    if failing:
        text += f" Failing the tolerance: {', '.join(failing)}."
    tied = [v for v in passing if v is not best
            and latency_ms(v["metrics"]) <= fastest * (1 + TIE)]
    others = ", ".join(f"`{v['name']}` keeps {fp32_ops(v)}" for v in tied)
    if latency_ms(best["metrics"]) > fastest:
        text += (f" `{best['name']}` is within 1% of the fastest and keeps the fewest ops in FP32 "
                 f"({fp32_ops(best)}; {others}).")
    elif tied:
        text += (f" `{best['name']}` is the fastest and keeps {fp32_ops(best)} ops in FP32; within "
                 f"1% of it, {others}.")
    else:
        text += f" `{best['name']}` is the fastest by more than 1%."
    return text


def _fmt(x, digits=4):
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%"


def latency_table(variants: list[dict]) -> list[str]:
    """Variant x compute units, like the source article's table: estimated ms on the chip
    (and measured ms beside it where a Mac measured)."""
    lat = variants[0]["metrics"]["latency"]
    units = list(lat["estimated_ms"])
    measured = "measured_ms" in lat
    cal = lat.get("calibration") or {}
    validated = ("not yet calibrated" if cal.get("median_abs_error") is None else
                 f"calibration median |error| {_pct(cal['median_abs_error'])}"
                 + (f", rank correlation {cal['spearman']:.2f}"
                    if isinstance(cal.get("spearman"), (int, float)) else ""))
    title = (f"Latency, ms: measured with Core ML (device-model estimate for {lat['chip']} in "
             "brackets)" if measured else
             f"Latency, ms: **estimated** for {lat['chip']} by the device model (pipeline/device; "
             f"{validated}) -- not measured")
    lines = [title, "", "| variant | " + " | ".join(units) + " | NE op share "
             f"({lat['compute_units']}) | devices under {lat['compute_units']} |",
             "|---|" + "---|" * (len(units) + 2)]
    for v in variants:
        m = v["metrics"]
        cells = []
        for cu in units:
            est = m["latency"]["estimated_ms"].get(cu)
            got = (m["latency"].get("measured_ms") or {}).get(cu)
            cells.append(f"{got:.2f} [{est:.2f}]" if got is not None else f"{est:.2f}")
        p = m["placement"]
        mix = ", ".join(f"{d} {p[f'{d.lower()}_op_share']:.2f}" for d in ("NE", "GPU", "CPU")
                        if p.get(f"{d.lower()}_op_share", 0) >= 0.005)
        lines.append(f"| {v['name']} | " + " | ".join(cells)
                     + f" | {_fmt(p['ne_op_share'], 2)} | {mix} |")
    return lines


def percent(fraction: float) -> str:
    """A share of output values, 0 shown as 'none' (0.0000 next to an overflow misleads)."""
    return "none" if not fraction else f"{100 * fraction:.3g}%"


def verdict(a: dict, tol: dict) -> str:
    """'yes', or '**no**' with the limits it misses (metrics.accuracy decides)."""
    if a["passes"]:
        return "yes"
    missed = []
    if a["snr_db"] < float(tol.get("min_snr_db", 20.0)):
        missed.append(f"SNR < {float(tol.get('min_snr_db', 20.0)):g} dB")
    if a["cosine_min"] < float(tol.get("min_cosine", 0.99)):
        missed.append(f"cosine < {float(tol.get('min_cosine', 0.99)):g}")
    if a["nonfinite_fraction"]:
        missed.append("inf/NaN in outputs")
    if a.get("internal_nonfinite_ops") and not tol.get("allow_internal_nonfinite"):
        missed.append("inf/NaN inside")
    return "**no**" + (f" ({', '.join(missed)})" if missed else "")


def nonfinite_split(v: dict) -> tuple[list[dict], int]:
    """The variant's ops where inf/NaN start, and how many more ops only carry them."""
    from pipeline.emulator.diagnostics import nonfinite_origins

    origins = nonfinite_origins(v["ops"])
    return origins, sum(1 for o in v["ops"] if o["inf_count"] or o["nan_count"]) - len(origins)


def inside_cell(v: dict) -> str:
    """Where inf/NaN start inside the program (emulated), or 'none'."""
    origins, carried = nonfinite_split(v)
    if not origins:
        return "none"
    first = origins[0]
    more = f" +{len(origins) - 1} more" if len(origins) > 1 else ""
    return (f"from `{first['name']}` ({first['op_type']}){more}"
            + (f", carried by {carried} ops" if carried else ""))


def markdown(model: str, variants: list[dict], best: dict | None, fp16_limit: float) -> str:
    first = variants[0]["metrics"]
    lat = first["latency"]
    kind = "measured" if lat["status"] == "measured" else "estimated"
    rule = RULE.format(kind=kind, units=lat["compute_units"], chip=lat["chip"])
    lines = [f"# Precision report: {model}", "",
             f"Accuracy is **{first['accuracy']['source']}** against the FP32 PyTorch reference; "
             f"placement is **{first['placement']['source']}**; latency is "
             f"**{lat['source']}**. Per-op figures (where inf/NaN start inside the program) are "
             f"**{first['diagnostics']['source']}**. The emulator's wall time is never a "
             "latency.", "",
             f"| variant | passes | SNR dB | cosine min | FP32 ops | casts | "
             f"{kind} ms ({lat['compute_units']}, {lat['chip']}) | NE op share | device switches "
             "| inf/NaN in outputs | inf/NaN inside |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        a, p, prog = v["metrics"]["accuracy"], v["metrics"]["placement"], v["metrics"]["program"]
        lines.append(
            f"| {v['name']} | {verdict(a, v['run'].get('tolerance') or {})} | {_fmt(a['snr_db'], 1)} | "
            f"{_fmt(a['cosine_min'])} | {prog['fp32_compute_ops']} | {prog['casts']} | "
            f"{latency_ms(v['metrics']):.2f} | {_fmt(p['ne_op_share'], 2)} | "
            f"{p['device_switches']} | {percent(a['nonfinite_fraction'])} | {inside_cell(v)} |")
    lines += ["", "`inf/NaN in outputs`: the share of the model's output values that are inf or "
              "NaN; `inf/NaN inside`: the first op whose inputs are finite and whose output is "
              "not (an FP16 overflow past "
              f"{fp16_limit:g}, or NaN), emulated; the ops after it that only pass inf/NaN on "
              "are counted apart. An output can be finite and still wrong.", ""]
    lines += [*latency_table(variants), ""]
    if best:
        lines.append(f"**Recommendation: `{best['name']}`** ({latency_ms(best['metrics']):.2f} ms "
                     f"{kind}, {fp32_ops(best)} FP32 ops). Rule: {rule}. "
                     + why(best, variants, kind))
    else:
        lines.append(f"**No variant meets the model's tolerance.** (Rule: {rule}.)")
    lines.append("")
    for v in variants:
        origins, carried = nonfinite_split(v)
        if origins:
            names = ", ".join(f"`{o['name']}` ({o['op_type']})" for o in origins[:6])
            lines.append(f"- `{v['name']}`: inf/NaN start in {len(origins)} op(s) (finite inputs, "
                         f"output past the FP16 limit {fp16_limit:g} or NaN; emulated): {names}"
                         + (" ..." if len(origins) > 6 else "")
                         + (f"; {carried} more op(s) only pass them on" if carried else ""))
    lines += numerics_lines(variants)
    lines += ["", f"Plots: `tradeoff.png` (accuracy vs {kind} latency on {lat['chip']}), "
              "`ops.png` (per-op max |activation| and error vs FP32, ops aligned by name "
              "across variants, emulated).", ""]
    return "\n".join(lines)


# ---- numerics (issue 12): the verdict under device numerics, and under IEEE where it differs
def numerics_lines(variants: list[dict]) -> list[str]:
    nums = [(v["name"], v["metrics"].get("numerics")) for v in variants]
    if not any(n for _, n in nums):
        return []
    lines = ["", "## Numerics", "",
             "The table's accuracy comes from the numerics below. `device`: each FP16 op computes "
             "what the unit it is placed on computes (pipeline/emulator/numerics/profiles); "
             "`ieee`: IEEE half at op boundaries.", "",
             "| variant | numerics | passes | SNR dB | under IEEE | SNR dB (IEEE) | first op where device and IEEE part |",
             "|---|---|---|---|---|---|---|"]
    for name, n in nums:
        if not n:
            continue
        acc = next(v for v in variants if v["name"] == name)["metrics"]["accuracy"]
        ieee = n.get("ieee") or {}
        first = n.get("first_divergence_vs_ieee")
        lines.append(
            f"| {name} | {n['description']} | {'yes' if acc['passes'] else '**no**'} | "
            f"{_fmt(acc['snr_db'], 1)} | "
            f"{('yes' if ieee['passes'] else '**no**') if ieee else '-'} | "
            f"{_fmt(ieee['snr_db'], 1) if ieee else '-'} | "
            f"{'`' + first['name'] + '` (' + first['op_type'] + ', ' + first['numerics'] + ')' if first else '-'} |")
    for name, n in nums:
        if n and n.get("verdict_changed"):
            lines.append(f"- **`{name}` {n['verdict_changed']}.**")
    return lines
# ---- end numerics


def plots(variants: list[dict], folder: Path, fp16_limit: float) -> None:
    lat = variants[0]["metrics"]["latency"]
    kind = "measured" if lat["status"] == "measured" else "estimated"
    figures.tradeoff(variants, folder / "tradeoff.png", latency_ms, kind)
    figures.per_op(variants, folder / "ops.png", fp16_limit)


def write_csvs(variants: list[dict], folder: Path) -> None:
    with open(folder / "tradeoff.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "latency_ms", "latency_source", "ne_op_share", "snr_db",
                    "cosine_min", "passes"])
        for v in variants:
            a, p = v["metrics"]["accuracy"], v["metrics"]["placement"]
            w.writerow([v["name"], latency_ms(v["metrics"]), v["metrics"]["latency"]["source"],
                        p["ne_op_share"], a["snr_db"], a["cosine_min"], a["passes"]])
    order = figures.aligned_index(variants)
    with open(folder / "ops.csv", "w", newline="") as f:  # index: aligned by name (as ops.png)
        w = csv.writer(f)
        w.writerow(["variant", "index", "name", "op_type", "dtype", "max_abs", "rel_error_vs_fp32",
                    "nonfinite", "nonfinite_origin"])
        for v in variants:
            for x, o in figures.aligned_ops(v, order):
                w.writerow([v["name"], x, o["name"], o["op_type"], o["dtype"], o["max_abs"],
                            o["rel_error_vs_fp32"], o["inf_count"] + o["nan_count"],
                            int(o.get("nonfinite_origin", False))])


def run(cfg: DictConfig) -> None:
    if cfg.tracking.enabled:
        tracking.check_store(cfg.tracking.uri)  # fail before the work, not after it
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    lineage.check_section(manifest["lineage"], "model", model_section(cfg), trace_dir,
                          f"python -m pipeline.trace model={cfg.model.name}")
    model = manifest["model"]
    variants = collect(cfg, model, manifest["lineage"]["fingerprint"])
    best = recommend(variants)
    limit = float(cfg.report.fp16_limit)
    out_dir = artifacts_dir(cfg) / "report"
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "report.md").write_text(markdown(model, variants, best, limit))
        write_csvs(variants, tmp)
        plots(variants, tmp, limit)
        artifacts.write_lineage(tmp, "report", {"model": {"name": model}, "report": {"fp16_limit": limit}},
                                {f"evaluate/{v['name']}": artifacts.fingerprint(
                                    artifacts_dir(cfg) / "evaluate" / v["name"]) for v in variants})
        if cfg.tracking.enabled:
            log_to_mlflow(cfg, model, variants, best, tmp)
    log.info("report for %s: %s -> %s", model,
             f"recommended {best['name']}" if best else "no variant passes", out_dir / "report.md")


def comparison(variants: list[dict]) -> tuple[dict[str, list], str]:
    """The parent MLflow run's comparison table (column -> values, for mlflow log_table) and
    its markdown, one row per variant, from the same short figures as the variant runs."""
    units = variants[0]["metrics"]["latency"]["compute_units"]
    chip = variants[0]["metrics"]["latency"]["chip"]
    table: dict[str, list] = {k: [] for k in ("variant", "passes", "snr_db", "cosine_min",
                                              "ne_share", "latency_ms", "latency_kind",
                                              "fp32_ops")}
    for v in variants:
        s = tracking.summary(v["metrics"])
        ms, kind = tracking.headline_ms(s, units)
        for key, value in (("variant", v["name"]), ("passes", bool(s["accuracy"]["passes"])),
                           ("snr_db", s["accuracy"]["snr_db"]),
                           ("cosine_min", s["accuracy"]["cosine_min"]),
                           ("ne_share", s["placement"]["ne_share"]), ("latency_ms", ms),
                           ("latency_kind", "measured" if kind == "measured" else "estimated"),
                           ("fp32_ops", int(s["program"]["fp32_ops"]))):
            table[key].append(value)
    kinds = set(table["latency_kind"])
    head = f"{'/'.join(sorted(kinds))} ms ({units}, {chip})"
    lines = [f"| variant | passes | SNR dB | cosine min | NE share | {head} | FP32 ops |",
             "|---|---|---|---|---|---|---|"]
    for i, name in enumerate(table["variant"]):
        lines.append(f"| {name} | {'yes' if table['passes'][i] else '**no**'} | "
                     f"{table['snr_db'][i]:.1f} | {table['cosine_min'][i]:.4f} | "
                     f"{table['ne_share'][i]:.2f} | {table['latency_ms'][i]:.2f} | "
                     f"{table['fp32_ops'][i]} |")
    return table, "\n".join(lines)


def log_to_mlflow(cfg: DictConfig, model: str, variants: list[dict], best: dict | None,
                  folder: Path) -> str:
    """Into the pipeline run's parent MLflow run: the comparison table, the plots, the
    recommendation (tag, and in the description the run page renders)."""
    table, md = comparison(variants)
    units = variants[0]["metrics"]["latency"]["compute_units"]
    verdict = (f"**Recommendation: `{best['name']}`** (the fastest variant that meets the "
               f"model's tolerance under {units})" if best else
               "**No variant meets the model's tolerance.**")
    description = "\n\n".join([md, verdict,  # the table first: the run page shows its top
                                "Artifacts: `comparison.json` (this table), `report.md`, "
                                "`tradeoff.png`, `ops.png`. Each variant is a nested run.",
                                f"Model **{model}**, {len(variants)} precision variants."])
    _, kind = tracking.headline_ms(tracking.summary(variants[0]["metrics"]), units)
    files = [folder / n for n in ("report.md", "tradeoff.png", "ops.png", "tradeoff.csv")]
    tags = {"recommended": best["name"] if best else "none", "variants": ",".join(table["variant"]),
            "variants_passing": str(sum(table["passes"])),
            **tracking.device_tags(variants[0]["metrics"])}
    columns = ["accuracy/snr_db", "accuracy/passes", "placement/ne_share",
               f"latency/{'measured' if kind == 'measured' else 'est'}_ms_{units}",
               "program/fp32_ops"]
    return tracking.log_report(cfg.tracking.uri, cfg.tracking.experiment or model, model, table,
                               description, tags, files, columns)


def main() -> None:
    main_for("report", run)


if __name__ == "__main__":
    main()
