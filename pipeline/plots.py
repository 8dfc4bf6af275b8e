"""The report's two figures: accuracy against latency, and the per-op view along the program.

Ops are aligned by name across variants (the FP32 program's order; the casts an FP16
conversion inserts have no FP32 twin and are left out), each variant keeps one colour and
line style in both panels, and red means one thing: FP16's limit and the ops where inf/NaN
originate.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.precision import canonical

STYLE = {"fp32": ("black", "-", 2.2), "fp16": ("tab:orange", "-", 1.2),
         "mixed": ("tab:blue", "--", 1.4), "auto": ("tab:green", ":", 2.0)}
SPARE = [("tab:purple", "-.", 1.4), ("tab:brown", "--", 1.2), ("tab:olive", ":", 1.8),
         ("tab:cyan", "-.", 1.2), ("tab:pink", "--", 1.2), ("tab:gray", ":", 1.6)]
ERROR_FLOOR = 1e-7  # relative errors below this (0 where an op runs as in FP32) are not drawn


def styles(names: list[str]) -> dict[str, tuple[str, str, float]]:
    """A colour, line style and width per variant: fixed for the built-in names, never red."""
    spare = iter(SPARE * (1 + len(names) // len(SPARE)))
    return {n: STYLE.get(n) or next(spare) for n in names}


def aligned_index(variants: list[dict]) -> dict[str, int]:
    """Position of each op (by canonical name) along the reference program: the FP32
    variant's op order, else the first variant's, with casts left out."""
    ref = next((v for v in variants if v["name"] == "fp32"), variants[0])
    order: dict[str, int] = {}
    for o in ref["ops"]:
        if o["op_type"] != "cast":
            order.setdefault(canonical(o["name"]), len(order))
    return order


def aligned_ops(v: dict, order: dict[str, int]) -> list[tuple[int, dict]]:
    return sorted(((order[canonical(o["name"])], o) for o in v["ops"]
                   if o["op_type"] != "cast" and canonical(o["name"]) in order),
                  key=lambda pair: pair[0])


def tradeoff(variants: list[dict], path: Path, latency_of, kind: str) -> None:
    plt = _pyplot()
    lat = variants[0]["metrics"]["latency"]
    look = styles([v["name"] for v in variants])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, v in enumerate(variants):
        a, ms = v["metrics"]["accuracy"], latency_of(v["metrics"])
        colour = look[v["name"]][0]
        ax.scatter(ms, a["snr_db"], s=90, color=colour, edgecolors="black",
                   marker="o" if a["passes"] else "X", zorder=3,
                   label=f"{v['name']} ({'passes' if a['passes'] else 'fails'})")
        ax.annotate(v["name"], (ms, a["snr_db"]), textcoords="offset points",
                    xytext=(7, 6 if i % 2 == 0 else -14))  # staggered: close points stay legible
    tol = variants[0]["run"].get("tolerance", {}).get("min_snr_db")
    if tol is not None:
        ax.axhline(tol, color="grey", linestyle="--", linewidth=1, label=f"tolerance {tol:g} dB")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"latency under {lat['compute_units']}, ms ({kind}, {lat['chip']})")
    ax.set_ylabel(f"SNR vs FP32 PyTorch, dB "
                  f"({variants[0]['metrics']['accuracy']['source'].split()[0]})")
    ax.set_xlim(left=0, right=max(latency_of(v["metrics"]) for v in variants) * 1.18)
    ax.set_title("Accuracy against latency (o passes, X fails)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEPARTS = 2.0  # a variant's activation curve is drawn where it differs from FP32's by 2x


def per_op(variants: list[dict], path: Path, fp16_limit: float) -> None:
    """Three panels on one x axis (ops aligned by name): the FP32 program's max |activation|
    against FP16's limit, with a variant's curve only where it departs from FP32's; which ops
    each variant keeps in FP32; each variant's relative error against the FP32 program."""
    plt = _pyplot()
    order = aligned_index(variants)
    look = styles([v["name"] for v in variants])
    fig, (ax1, rug, ax2) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.1, 3]})
    ax1.axhline(fp16_limit, color="red", linestyle="--", linewidth=1,
                label=f"FP16 max {fp16_limit:g}")
    ref = {x: o["max_abs"] for x, o in aligned_ops(
        next((v for v in variants if v["name"] == "fp32"), variants[0]), order)}
    notes, lanes = [], []
    for v in variants:
        colour, dash, width = look[v["name"]]
        ops = aligned_ops(v, order)
        ys = [max(o["max_abs"], 1e-6) for _, o in ops]
        if v["name"] != "fp32":  # only where it departs from the FP32 program
            ys = [y if _departs(y, ref.get(x)) else float("nan") for (x, _), y in zip(ops, ys)]
        if any(y == y for y in ys):
            ax1.plot([x for x, _ in ops], ys, color=colour, linestyle=dash, linewidth=width,
                     label=v["name"] if v["name"] == "fp32" else f"{v['name']} (where it departs)")
        origins = [(x, o) for x, o in ops if o.get("nonfinite_origin")]
        if origins:
            ax1.scatter([x for x, _ in origins], [fp16_limit] * len(origins), marker="x",
                        s=70, color="red", zorder=5)
            x, o = origins[0]
            notes.append(f"{v['name']}: inf/NaN from op {x} ({o['op_type']}, {o['name']})")
        if v["name"] == "fp32":
            continue  # all its ops are FP32, and its error against itself is 0
        lanes.append(v["name"])
        kept = [x for x, o in ops if o["dtype"] == "fp32"]
        rug.scatter(kept, [len(lanes) - 1] * len(kept), marker="|", s=120, color=colour)
        err = [(x, o["rel_error_vs_fp32"]) for x, o in ops
               if o["rel_error_vs_fp32"] is not None and o["rel_error_vs_fp32"] >= ERROR_FLOOR]
        ax2.plot([x for x, _ in err], [min(e, 1e3) for _, e in err], color=colour,
                 linestyle=dash, linewidth=width, label=v["name"])
    ax1.set_yscale("log")
    ax1.set_ylabel("max |activation|\n(finite values)")
    ax1.legend(loc="upper left", fontsize=8, ncol=2)
    if notes:  # inside the axes, top right: never clipped by the figure's edge
        ax1.text(0.99, 0.97, "\n".join(notes), transform=ax1.transAxes, ha="right", va="top",
                 color="red", fontsize=8, bbox={"facecolor": "white", "alpha": 0.85,
                                                "edgecolor": "red"})
    rug.set_yticks(range(len(lanes)), lanes, fontsize=8)
    rug.set_ylim(-0.7, max(len(lanes), 1) - 0.3)
    rug.set_ylabel("kept in FP32", fontsize=9)
    rug.grid(axis="x", alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error vs FP32\nprogram (inf drawn at 1e3)")
    ax2.set_xlabel("op along the FP32 program (ops aligned by name; inserted casts left out)")
    if ax2.lines:
        ax2.legend(loc="upper left", fontsize=8, ncol=2)
    ax1.set_title("Per-op activations and error (emulated); red x: where inf/NaN originate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _departs(y: float, ref: float | None) -> bool:
    if ref is None:
        return True
    ref = max(ref, 1e-6)
    return y > ref * DEPARTS or y < ref / DEPARTS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
