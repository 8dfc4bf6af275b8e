"""The report's wording and rules: inf/NaN counted where they start, the recommendation's
rule applied and explained, ops aligned by name across variants in ops.png and ops.csv."""
from __future__ import annotations

import csv

from pipeline import artifacts, report
from pipeline.emulator.diagnostics import read_table
from pipeline.plots import aligned_index, aligned_ops
from tests.conftest import make_cfg


def variant(name: str, ms: float, fp32_ops: int, passes: bool = True) -> dict:
    """A variant as report.collect returns it, with the figures the rule reads."""
    return {"name": name, "run": {"tolerance": {"min_snr_db": 20.0, "min_cosine": 0.99}}, "ops": [],
            "metrics": {"accuracy": {"passes": int(passes), "snr_db": 40.0 if passes else 3.0,
                                     "cosine_min": 0.999 if passes else 0.5,
                                     "nonfinite_fraction": 0.0},
                        "latency": {"compute_units": "ALL", "estimated_ms": {"ALL": ms}},
                        "program": {"fp32_compute_ops": fp32_ops}}}


def test_recommendation_is_the_fastest_passing_then_fewest_fp32_ops():
    fp32, fp16 = variant("fp32", 36.0, 280), variant("fp16", 12.2, 0, passes=False)
    mixed, auto = variant("mixed", 13.15, 8), variant("auto", 13.07, 4)
    assert report.recommend([fp32, fp16, mixed, auto])["name"] == "auto"
    # within 1% of the fastest: the fewer FP32 ops win, even if a little slower
    slower_but_leaner = variant("lean", 13.16, 2)
    assert report.recommend([fp32, mixed, slower_but_leaner])["name"] == "lean"
    # more than 1% slower: the fastest wins whatever it keeps in FP32
    assert report.recommend([fp32, variant("heavy", 13.0, 50), variant("lean", 13.5, 2)])["name"] == "heavy"
    assert report.recommend([fp16]) is None


def test_the_recommendation_says_why():
    mixed, auto, fp32 = variant("mixed", 13.15, 8), variant("auto", 13.07, 4), variant("fp32", 36.0, 280)
    fp16 = variant("fp16", 12.2, 0, passes=False)
    text = report.why(auto, [fp32, fp16, mixed, auto], "estimated")
    assert text.index("`auto` 13.07 ms") < text.index("`mixed` 13.15 ms") < text.index("`fp32` 36.00")
    assert "Failing the tolerance: `fp16`" in text and "`mixed` keeps 8" in text
    lean = variant("lean", 13.16, 2)
    text = report.why(lean, [mixed, lean], "estimated")
    assert "within 1% of the fastest and keeps the fewest ops in FP32 (2; `mixed` keeps 8)" in text
    assert report.verdict(fp16["metrics"]["accuracy"], fp16["run"]["tolerance"]) == \
        "**no** (SNR < 20 dB, cosine < 0.99)"


def test_inf_nan_are_counted_where_they_start(tiny_run, monkeypatch):
    ev = tiny_run / "artifacts" / "evaluate" / "fp16"
    rows = read_table(ev / "ops.csv")
    origins = [r for r in rows if r["nonfinite_origin"]]
    carriers = [r for r in rows if (r["inf_count"] or r["nan_count"]) and not r["nonfinite_origin"]]
    # the neck's pow overflows; the ops after it (reduce_mean, add, sqrt, ...) only carry it
    assert [r["op_type"] for r in origins] == ["pow"] and len(carriers) >= 2
    diag = artifacts.read_json(ev / "metrics.json")["diagnostics"]
    assert diag["overflowing_ops"] == 1 and diag["nonfinite_ops"] == 1 + len(carriers)
    monkeypatch.chdir(tiny_run)
    report.run(make_cfg(tiny_run, "model=tiny", "tracking.enabled=false"))
    md = (tiny_run / "artifacts" / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| fp16 |"))
    assert f"from `{origins[0]['name']}` (pow), carried by {len(carriers)} ops" in row
    assert "| none |" in row  # no inf/NaN in the outputs: finite, and wrong
    assert "inf/NaN start in 1 op(s)" in md and "0.0000" not in row


def test_ops_are_aligned_by_name_across_variants(tiny_run):
    ev = tiny_run / "artifacts" / "evaluate"
    variants = [{"name": v, "ops": read_table(ev / v / "ops.csv")} for v in ("fp32", "fp16", "mixed")]
    order = aligned_index(variants)
    fp32 = dict(aligned_ops(variants[0], order))
    for v in variants[1:]:
        placed = aligned_ops(v, order)
        assert len(placed) >= 0.95 * len(fp32)  # all but the inserted casts
        assert all(fp32[x]["op_type"] == o["op_type"] for x, o in placed)
        assert not any(o["op_type"] == "cast" for _, o in placed)
    with open(tiny_run / "artifacts" / "report" / "ops.csv") as f:
        table = list(csv.DictReader(f))
    pow_at = {r["variant"]: r["index"] for r in table if r["op_type"] == "pow"}
    assert len(set(pow_at.values())) == 1 and {"fp32", "fp16", "mixed"} <= set(pow_at)
