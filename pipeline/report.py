"""Stage 5, report: compare every evaluated variant of the model, in a table and two plots.

Reads artifacts/evaluate/*/ (the variants evaluated for this model). Writes artifacts/report/:
  report.md      the comparison table, the recommendation, what failed and where
  tradeoff.png   accuracy (SNR) against Neural Engine share, one point per variant
  ops.png        per-op max |activation| and error vs FP32 along the program, FP16 limit drawn,
                 overflowing ops marked
  tradeoff.csv, ops.csv   the same data, declared as DVC plots
and logs them to MLflow as a report run.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from pipeline import artifacts, lineage, tracking
from pipeline.cli import main_for
from pipeline.config import artifacts_dir, to_dict
from pipeline.emulator.diagnostics import read_table
from pipeline.errors import UserError

log = logging.getLogger("pipeline.report")
ORDER = {"fp32": 0, "fp16": 1, "mixed": 2, "auto": 3}


def collect(cfg: DictConfig, model: str, trace_fp: str) -> list[dict]:
    variants = []
    root = artifacts_dir(cfg) / "evaluate"
    for folder in sorted(root.glob("*/")):
        if not (folder / "metrics.json").is_file() or not (folder / "run.json").is_file():
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


def recommend(variants: list[dict]) -> dict | None:
    """The passing variant with the most Neural Engine work; ties: fewer FP32 ops."""
    passing = [v for v in variants if v["metrics"]["accuracy"]["passes"]]
    if not passing:
        return None
    return max(passing, key=lambda v: (v["metrics"]["placement"]["ne_cost_share"],
                                       v["metrics"]["placement"]["ne_op_share"],
                                       -v["metrics"]["program"]["fp32_compute_ops"]))


def _fmt(x, digits=4):
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.{digits}f}"
    return str(x)


def latency_text(lat: dict) -> str:
    if lat.get("status") != "measured":
        return "not measured"
    return ", ".join(f"{cu} {v['median_ms']:.2f} ms" for cu, v in lat.items()
                     if isinstance(v, dict))


def markdown(model: str, variants: list[dict], best: dict | None, fp16_limit: float) -> str:
    first = variants[0]["metrics"]
    lines = [f"# Precision report: {model}", "",
             f"Accuracy is **{first['accuracy']['source']}** against the FP32 PyTorch reference; "
             f"placement is **{first['placement']['source']}**; latency: "
             f"**{first['latency']['status']}**"
             + (f" ({first['latency'].get('reason')})." if first['latency'].get('reason') else "."),
             "", "| variant | passes | cosine min | SNR dB | non-finite | FP32 ops | casts | "
             "NE op share | NE cost share | device switches | latency | first non-finite op |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        a, p, prog = v["metrics"]["accuracy"], v["metrics"]["placement"], v["metrics"]["program"]
        bad = v["run"].get("first_nonfinite_op")
        lines.append(
            f"| {v['name']} | {'yes' if a['passes'] else '**no**'} | {_fmt(a['cosine_min'])} | "
            f"{_fmt(a['snr_db'], 1)} | {_fmt(a['nonfinite_fraction'])} | "
            f"{prog['fp32_compute_ops']} | {prog['casts']} | {_fmt(p['ne_op_share'], 2)} | "
            f"{_fmt(p['ne_cost_share'], 2)} | {p['device_switches']} | "
            f"{latency_text(v['metrics']['latency'])} | "
            f"{'`' + bad['name'] + '` (' + bad['op_type'] + ')' if bad else '-'} |")
    lines.append("")
    if best:
        lines.append(f"**Recommendation: `{best['name']}`**: it meets the model's tolerance "
                     f"({best['run'].get('tolerance')}) with the largest Neural Engine share "
                     f"({best['metrics']['placement']['ne_cost_share']:.2f} of estimated cost).")
    else:
        lines.append("**No variant meets the model's tolerance.**")
    lines.append("")
    for v in variants:
        over = [o for o in v["ops"] if o["inf_count"]]
        if over:
            names = ", ".join(f"`{o['name']}` ({o['op_type']})" for o in over[:6])
            lines.append(f"- `{v['name']}`: {len(over)} op(s) produce values past the FP16 limit "
                         f"({fp16_limit:g}) or NaN; first: {names}"
                         + (" ..." if len(over) > 6 else ""))
    lines += ["", "Plots: `tradeoff.png` (accuracy vs Neural Engine share), `ops.png` (per-op "
              "max |activation| and error vs FP32 along the program).", ""]
    return "\n".join(lines)


def plots(variants: list[dict], folder: Path, fp16_limit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, v in enumerate(variants):
        a, p = v["metrics"]["accuracy"], v["metrics"]["placement"]
        ax.scatter(p["ne_op_share"], a["snr_db"], s=80, color="tab:green" if a["passes"] else "tab:red")
        ax.annotate(v["name"], (p["ne_op_share"], a["snr_db"]), textcoords="offset points",
                    xytext=(6, 5 if i % 2 == 0 else -14))  # staggered: close points stay legible
    tol = variants[0]["run"].get("tolerance", {}).get("min_snr_db")
    if tol is not None:
        ax.axhline(tol, color="grey", linestyle="--", linewidth=1, label=f"tolerance {tol} dB")
        ax.legend(loc="lower left")
    ax.set_xlabel(f"Neural Engine op share ({variants[0]['metrics']['placement']['source'].split()[0]})")
    ax.set_ylabel(f"SNR vs FP32 PyTorch, dB ({variants[0]['metrics']['accuracy']['source'].split()[0]})")
    ax.set_xlim(-0.05, 1.1)
    ax.set_title("Accuracy against Neural Engine share (green passes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "tradeoff.png", dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for v in variants:
        ops = v["ops"]
        xs = [o["index"] for o in ops]
        ax1.plot(xs, [max(o["max_abs"], 1e-6) for o in ops], label=v["name"], linewidth=1)
        bad = [o for o in ops if o["inf_count"] or o["nan_count"]]
        ax1.scatter([o["index"] for o in bad], [fp16_limit] * len(bad), marker="x", color="red", zorder=5)
        err = [(o["index"], o["rel_error_vs_fp32"]) for o in ops if o["rel_error_vs_fp32"] is not None]
        ax2.plot([e[0] for e in err], [min(max(e[1], 1e-9), 1e3) for e in err], label=v["name"], linewidth=1)
        first = next((o for o in ops if o["first_nonfinite"]), None)
        if first:
            ax1.annotate(f"{v['name']}: {first['op_type']} overflows", (first["index"], fp16_limit),
                         textcoords="offset points", xytext=(5, 8), color="red")
    ax1.axhline(fp16_limit, color="red", linestyle="--", linewidth=1, label="FP16 max 65504")
    ax1.set_yscale("log")
    ax1.set_ylabel("max |activation| (finite)")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error vs FP32 program")
    ax2.set_xlabel("op index along the program (emulated)")
    ax1.set_title("Per-op activations and error; red x: op with inf/NaN")
    fig.tight_layout()
    fig.savefig(folder / "ops.png", dpi=100)
    plt.close(fig)


def write_csvs(variants: list[dict], folder: Path) -> None:
    with open(folder / "tradeoff.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "ne_op_share", "ne_cost_share", "snr_db", "cosine_min", "passes"])
        for v in variants:
            a, p = v["metrics"]["accuracy"], v["metrics"]["placement"]
            w.writerow([v["name"], p["ne_op_share"], p["ne_cost_share"], a["snr_db"],
                        a["cosine_min"], a["passes"]])
    with open(folder / "ops.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "index", "name", "op_type", "dtype", "max_abs", "rel_error_vs_fp32",
                    "nonfinite"])
        for v in variants:
            for o in v["ops"]:
                w.writerow([v["name"], o["index"], o["name"], o["op_type"], o["dtype"], o["max_abs"],
                            o["rel_error_vs_fp32"], o["inf_count"] + o["nan_count"]])


def run(cfg: DictConfig) -> None:
    if cfg.tracking.enabled:
        tracking.check_store(cfg.tracking.uri)  # fail before the work, not after it
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    lineage.check_section(manifest["lineage"], "model", to_dict(cfg.model), trace_dir,
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
            files = [tmp / n for n in ("report.md", "tradeoff.png", "ops.png", "tradeoff.csv")]
            tracking.log_run(cfg.tracking.uri, cfg.tracking.experiment or model, f"{model}-report",
                             {"variants": ",".join(v["name"] for v in variants)},
                             {"variants_passing": sum(v["metrics"]["accuracy"]["passes"] for v in variants)},
                             {"kind": "report", "model": model, "recommended": best["name"] if best else "none",
                              "git_commit": tracking.git_commit()}, files)
    log.info("report for %s: %s -> %s", model,
             f"recommended {best['name']}" if best else "no variant passes", out_dir / "report.md")


def main() -> None:
    main_for("report", run)


if __name__ == "__main__":
    main()
