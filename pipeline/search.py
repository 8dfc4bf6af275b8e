"""precision=auto: find a small set of ops to keep in FP32 that meets an accuracy target.

1. Convert the model once in FP32. The emulator runs it as coremltools' FP16 pass would make
   it with any chosen set S kept FP32 (``Emulator.with_fp16_except``, bit-exact with a real
   mixed conversion), so a candidate costs one emulated forward pass, not a conversion.
2. All-FP16 first. If it misses the target, the per-op diagnostics give candidates: ops that
   overflow, and ops whose error against the FP32 program jumps.
3. Adaptive group testing over op segments in program order (bisect a failing segment:
   about 2·k·log2(N) evaluations for k needed ops among N), on the candidates first and on
   every float op if they are not enough.
4. Neighbouring FP32 islands are joined (the ops between them kept FP32 too) when the device
   model (pipeline/device) estimates the joined set faster than the split one on device.chip
   under device.compute_units, and the target still holds: among sets that pass, the one
   whose FP32 islands cost least. Estimates run on the virtual program's op records.
5. The result is verified by a real coremltools conversion and its emulated evaluation.

    python -m pipeline.search [model=...] [precision.target.min_snr_db=40]
writes conf/precision/auto_<model>.yaml, usable as `precision=auto_<model>`.
"""
from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pipeline import artifacts, metrics, precision, progress
from pipeline.programs import virtual_records
from pipeline.emulator import Emulator
from pipeline.emulator.numerics import numerics_from
from pipeline.emulator.diagnostics import capture
from pipeline.errors import StageError, UserError

log = logging.getLogger("pipeline.search")


@dataclass(frozen=True)
class Target:
    min_snr_db: float | None = None
    min_cosine: float | None = None
    allow_internal_nonfinite: bool = False  # false: an op that overflows inside rejects a set

    @staticmethod
    def from_config(raw: Mapping[str, Any] | None, tolerance: Mapping[str, Any]) -> "Target":
        raw = {k: v for k, v in dict(raw or {}).items() if v is not None}
        snr = raw.get("min_snr_db", tolerance.get("min_snr_db"))
        cos = raw.get("min_cosine", tolerance.get("min_cosine"))
        if snr is None and cos is None:
            raise UserError("precision=auto needs a target",
                            "set precision.target.min_snr_db or precision.target.min_cosine")
        allow = bool(raw.get("allow_internal_nonfinite",
                             tolerance.get("allow_internal_nonfinite", False)))
        return Target(None if snr is None else float(snr), None if cos is None else float(cos),
                      allow)

    def met(self, m: Mapping[str, float]) -> bool:
        if m["nonfinite_fraction"] > 0:
            return False
        if not self.allow_internal_nonfinite and m.get("internal_nonfinite_ops"):
            return False
        if self.min_snr_db is not None and m["snr_db"] < self.min_snr_db:
            return False
        return self.min_cosine is None or m["cosine_min"] >= self.min_cosine

    def describe(self) -> dict:
        return {"min_snr_db": self.min_snr_db, "min_cosine": self.min_cosine,
                "allow_internal_nonfinite": self.allow_internal_nonfinite}


@dataclass
class Trial:
    index: int
    fp32_ops: int
    passes: bool
    snr_db: float
    cosine_min: float
    phase: str


@dataclass
class SearchResult:
    keep_fp32: list[str]
    trials: list[Trial] = field(default_factory=list)
    float_ops: int = 0
    seconds: float = 0.0
    candidates: list[str] = field(default_factory=list)
    latency_ms: float | None = None   # the device model's estimate of the chosen set

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    def bound(self) -> float:
        """2·k·log2(N), the group-testing budget for k needed ops among N."""
        k = max(1, len(self.keep_fp32))
        return 2 * k * math.log2(max(2, self.float_ops))


class LatencyObjective:
    """Estimated latency of the FP32 program with a set of ops kept FP32, the rest FP16, by
    the device model on one chip and compute-units setting."""

    def __init__(self, fp32: Emulator, records: list, chip: str, compute_units: str):
        self.fp32, self.records = fp32, records
        self.chip, self.compute_units = chip, compute_units
        self.cache: dict[frozenset, float] = {}

    def __call__(self, keep: frozenset) -> float:
        from pipeline.device import estimate

        if keep not in self.cache:
            plan = self.fp32.with_fp16_except(set(keep)).plan
            dtypes = {s.name: s.dtypes[0] for s in plan.steps if s.dtypes}
            est = estimate(virtual_records(self.records, dtypes), chip=self.chip,
                           compute_units=self.compute_units)
            self.cache[keep] = float(est.latency_ms)
        return self.cache[keep]


class Search:
    def __init__(self, fp32: Emulator, samples: list[dict], reference: dict[str, np.ndarray],
                 target: Target, max_evaluations: int = 200, selectable: set[str] | None = None,
                 cost: Callable[[frozenset], float] | None = None):
        self.fp32 = fp32
        self.cost = cost
        self.samples = samples
        self.reference = reference
        self.target = target
        self.max_evaluations = max_evaluations
        # only ops a selector can choose: coremltools' later passes create ops it never sees
        self.order = [s.name for s in fp32.plan.steps
                      if "fp32" in s.dtypes and s.op_type != "cast"
                      and (selectable is None or s.name in selectable)]
        self.position = {n: i for i, n in enumerate(self.order)}
        self.cache: dict[frozenset, bool] = {}
        self.trials: list[Trial] = []
        self.phase = "start"
        self.shown = None  # the candidates' progress bar, while run() runs

    # -- one candidate -----------------------------------------------------------------
    def passes(self, keep: frozenset) -> bool:
        if keep in self.cache:
            return self.cache[keep]
        if len(self.trials) >= self.max_evaluations:
            raise UserError(f"precision=auto: no set found within {self.max_evaluations} "
                            "evaluations", "raise search.max_evaluations or lower the target")
        view = self.fp32.with_fp16_except(set(keep))
        m = evaluate_program(view, self.samples, self.reference)
        ok = self.target.met(m)
        worst = {"snr_db": m["snr_db"], "cosine_min": m["cosine_min"]}
        self.cache[keep] = ok
        self.trials.append(Trial(len(self.trials), len(keep), ok, worst["snr_db"],
                                 worst["cosine_min"], self.phase))
        log.debug("candidate %3d: %3d FP32 ops -> %s (SNR %.1f dB, %s ops with inf/NaN)",
                  len(self.trials), len(keep), "meets target" if ok else "misses",
                  worst["snr_db"], m["internal_nonfinite_ops"])
        if self.shown is not None:
            self.shown.set_postfix_str(f"{self.phase}: {len(keep)} FP32 ops "
                                       f"{'meet' if ok else 'miss'} ({worst['snr_db']:.1f} dB)")
            self.shown.update()
        return ok

    # -- diagnostics: which ops to try first -------------------------------------------
    def candidates(self) -> list[str]:
        feeds = self.samples[0]
        _, ref = capture(self.fp32, feeds)
        view = self.fp32.with_fp16_except(set())
        producer = {out: s.name for s in view.plan.steps for out in s.outputs}
        err: dict[str, float] = {}
        found: list[str] = []

        def observe(step, values):
            out = values[0] if values else None
            if out is None or not hasattr(out, "is_floating_point") or not out.is_floating_point():
                return
            r = ref.get(step.name)
            x = out.float()
            if r is None or r.shape != x.shape:
                return
            finite = bool(x.isfinite().all())
            peak = float(r.abs().max()) or 1.0
            e = float((x - r).abs().max()) / peak if finite else math.inf
            err[step.name] = e
            before = max([err.get(producer.get(n, ""), 0.0) for _, kind, p in step.args
                          if kind == 1 for n in [p]] or [0.0])
            if step.name in self.position and (not finite or (e > 1e-2 and e > 20 * max(before, 1e-4))):
                found.append(step.name)

        view.run(feeds, observe=observe)
        return found

    # -- group testing -----------------------------------------------------------------
    def needed(self, segment: list[str], kept: frozenset) -> frozenset:
        """Given that kept ∪ segment passes: a subset of segment that, with kept, passes."""
        if not segment or self.passes(kept):
            return frozenset()
        if len(segment) == 1:
            return frozenset(segment)
        half = len(segment) // 2
        a, b = segment[:half], segment[half:]
        in_a = self.needed(a, kept | frozenset(b))
        in_b = self.needed(b, kept | in_a)
        return in_a | in_b

    def islands(self, keep: frozenset) -> int:
        idx = sorted(self.position[n] for n in keep)
        return sum(1 for i, p in enumerate(idx) if i == 0 or p != idx[i - 1] + 1)

    def join_islands(self, keep: frozenset) -> frozenset:
        """Join neighbouring FP32 islands where the estimate says joined beats split (fewer
        device switches against more FP32 work) and the target still holds."""
        if self.cost is None:
            return keep
        idx = sorted(self.position[n] for n in keep)
        for left, right in zip(idx, idx[1:]):
            if right - left > 1:
                trial = keep | frozenset(self.order[left + 1: right])
                faster = self.cost(trial) < self.cost(keep)
                log.info("islands around %s: joined %.3f ms vs split %.3f ms (estimated)",
                         self.order[left], self.cost(trial), self.cost(keep))
                if faster and self.passes(trial):
                    keep = trial
        return keep

    def run(self, prefer_regions: bool = True) -> SearchResult:
        with progress.bar("precision=auto", unit="candidate") as self.shown:
            try:
                return self._run(prefer_regions)
            finally:
                self.shown = None

    def _run(self, prefer_regions: bool) -> SearchResult:
        started = time.perf_counter()
        everything = frozenset(self.order)
        self.phase = "all-fp16"
        if self.passes(frozenset()):
            keep: frozenset = frozenset()
            cands: list[str] = []
        else:
            self.phase = "all-fp32"
            if not self.passes(everything):
                raise UserError(f"precision=auto: even all ops in FP32 miss the target "
                                f"{self.target.describe()}", "lower the target")
            self.phase = "diagnostics"
            cands = self.candidates()
            log.info("diagnostics: %d candidate ops (%s)", len(cands), ", ".join(cands[:8]))
            if cands and self.passes(frozenset(cands)):
                self.phase = "bisect candidates"
                keep = self.needed(cands, frozenset())
            else:
                self.phase = "bisect all ops"
                keep = self.needed(self.order, frozenset())
            if prefer_regions and len(keep) > 1:
                self.phase = "join islands"
                keep = self.join_islands(keep)
        ordered = sorted(keep, key=self.position.__getitem__)
        return SearchResult(ordered, self.trials, len(self.order),
                            time.perf_counter() - started, cands,
                            None if self.cost is None else round(self.cost(keep), 4))


def evaluate_program(emu: Emulator, samples: list[dict], reference: dict[str, np.ndarray]) -> dict:
    """The evaluate stage's accuracy (metrics.program_accuracy, all samples pooled) of one
    program, with the number of ops that produced an inf or NaN on any sample."""
    bad: set[str] = set()

    def observe(step, values):
        for v in values:
            if hasattr(v, "is_floating_point") and v.is_floating_point() and not bool(v.isfinite().all()):
                bad.add(step.name)

    outs = [emu.run(feeds, observe=observe) for feeds in samples]
    return metrics.program_accuracy(reference, outs, {}, internal_nonfinite_ops=len(bad))


def spec_for(name: str, keep: list[str]) -> precision.PrecisionSpec:
    return precision.PrecisionSpec(name, "mixed", fp32_names=tuple("re:" + re.escape(n) for n in keep))


def config_yaml(spec: precision.PrecisionSpec, result: SearchResult, target: Target,
                verified: dict, model: str) -> str:
    import yaml

    header = (f"# Found by precision=auto for model '{model}': target {target.describe()}.\n"
              f"# {len(result.keep_fp32)} of {result.float_ops} float ops kept FP32, "
              f"{result.evaluations} evaluations.\n"
              f"# Verified by a real conversion: SNR {verified['snr_db']:.1f} dB, "
              f"cosine min {verified['cosine_min']:.6f} (emulated).\n")
    body = {"name": spec.name, "compute": "mixed", "fp32_ops": [], "fp32_regions": [],
            "fp32_names": list(spec.fp32_names)}
    return header + yaml.safe_dump(body, sort_keys=False)


def find(cfg, traced, manifest: dict, trace_dir: Path, name: str):
    """Search, then verify with a real conversion. Returns (spec, result, verified metrics,
    mlmodel, selector, conversion seconds)."""
    from pipeline.conversion import convert_program

    auto = cfg.precision
    target = Target.from_config(auto.get("target"), manifest.get("tolerance") or {})
    inputs = artifacts.read_npz(trace_dir / "inputs.npz")
    reference = artifacts.read_npz(trace_dir / "reference.npz")
    n = min(len(next(iter(inputs.values()))), int(cfg.search.samples or 10**6))
    samples = [{k: v[i] for k, v in inputs.items()} for i in range(n)]
    reference = {k: v[:n] for k, v in reference.items()}
    target_name = cfg.convert.minimum_deployment_target
    with tempfile.TemporaryDirectory() as tmp:
        log.info("precision=auto: converting an FP32 reference program")
        # a mixed conversion that keeps every op FP32: the FP32 program, plus the names of
        # the ops a selector sees (the only ones a config can name)
        keep_all = precision.PrecisionSpec("fp32", "mixed", fp32_names=("*",))
        ml32, recorder, _ = convert_program(traced, manifest, keep_all, target_name)
        ml32.save(str(Path(tmp) / "fp32.mlpackage"))
        # device numerics: each candidate's FP16 ops run under the profile of the unit the
        # candidate's own placement puts them on (Emulator.with_fp16_except)
        fp32 = Emulator(Path(tmp) / "fp32.mlpackage", device=cfg.evaluate.device,
                        numerics=numerics_from(cfg))
        selectable = {precision.sanitize(n) for _, n in recorder.state.seen}
        from pipeline import programs

        cost = LatencyObjective(fp32, programs.read_ops(Path(tmp) / "fp32.mlpackage"),
                                str(cfg.device.chip), str(cfg.device.compute_units))
        search = Search(fp32, samples, reference, target, int(cfg.search.max_evaluations),
                        selectable, cost)
        result = search.run(bool(cfg.search.prefer_regions))
    log.info("precision=auto: %d FP32 ops after %d evaluations (2·k·log2 N = %.0f) in %.1f s",
             len(result.keep_fp32), result.evaluations, result.bound(), result.seconds)
    spec = spec_for(name, result.keep_fp32)
    mlmodel, selector, seconds = convert_program(traced, manifest, spec, target_name)
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel.save(str(Path(tmp) / "auto.mlpackage"))
        emu = Emulator(Path(tmp) / "auto.mlpackage", device=cfg.evaluate.device,
                       numerics=numerics_from(cfg))
        verified = evaluate_program(emu, samples, reference)
    chosen = {precision.sanitize(n) for _, n, _ in selector.state.fp32}
    if not target.met(verified) or chosen != set(result.keep_fp32):
        raise StageError("search", f"the real conversion of the found set does not reproduce the "
                         f"search (SNR {verified['snr_db']:.1f} dB, {len(chosen)} FP32 ops vs "
                         f"{len(result.keep_fp32)})", "report it; use a hand-written mixed config")
    return spec, result, verified, mlmodel, selector, seconds


def log_search(cfg, model: str, result: SearchResult, target: Target, verified: dict) -> None:
    from pipeline import tracking

    if not cfg.tracking.enabled:
        return
    series = {"search/snr_db": [t.snr_db for t in result.trials],
              "search/fp32_ops": [float(t.fp32_ops) for t in result.trials],
              "search/passes": [float(t.passes) for t in result.trials]}
    # nested under the pipeline run's parent (convert@auto runs it), beside the variants
    tracking.log_run(cfg.tracking.uri, cfg.tracking.experiment or model, f"{model}-auto-search",
                     {"target": target.describe(), "fp32_ops": ",".join(result.keep_fp32)},
                     {"search/evaluations": result.evaluations, "search/seconds": result.seconds,
                      "search/fp32_ops_chosen": len(result.keep_fp32),
                      "search/float_ops": result.float_ops, "search/bound_2klog2n": result.bound(),
                      "search/verified_snr_db": verified["snr_db"],
                      **({"search/latency_est_ms": result.latency_ms}
                         if result.latency_ms is not None else {})},
                     {"kind": "search", "model": model, "accuracy.source": "emulated",
                      "device.chip": str(cfg.device.chip),
                      "latency.source": f"estimated (device model, chip {cfg.device.chip}, "
                                        f"{cfg.device.compute_units})"}, [],
                     series=series,
                     description=f"precision=auto's search: {result.evaluations} candidates "
                                 f"evaluated, {len(result.keep_fp32)} ops kept FP32 "
                                 f"(verified {verified['snr_db']:.1f} dB; {target.describe()}).")


def search_record(result: SearchResult, target: Target, verified: dict) -> dict:
    return {"target": target.describe(), "fp32_ops": result.keep_fp32,
            "float_ops": result.float_ops, "evaluations": result.evaluations,
            "bound_2klog2n": round(result.bound(), 1),
            "candidates": result.candidates, "verified": verified,
            "latency_est_ms": result.latency_ms,
            "trials": [t.__dict__ for t in result.trials]}


def run(cfg) -> None:
    from pipeline.config import CONF_DIR, artifacts_dir, to_dict
    from pipeline.conversion import load_traced

    spec = precision.spec_from_config(to_dict(cfg.precision))
    if spec.compute != "auto":
        raise UserError(f"pipeline.search needs precision=auto (got '{spec.name}')",
                        "run `python -m pipeline.search precision=auto`")
    trace_dir, manifest = artifacts.read_trace(artifacts_dir(cfg))
    model = manifest["model"]
    name = f"auto_{model}"
    found, result, verified, *_ = find(cfg, load_traced(trace_dir, manifest), manifest, trace_dir, name)
    target = Target.from_config(cfg.precision.get("target"), manifest.get("tolerance") or {})
    out = CONF_DIR / "precision" / f"{name}.yaml"
    artifacts.write_text(out, config_yaml(found, result, target, verified, model))
    log_search(cfg, model, result, target, verified)
    log.info("wrote %s: use it with `python -m pipeline.convert precision=%s`", out, name)


def main() -> None:
    from pipeline.cli import main_for

    main_for("search", run)


if __name__ == "__main__":
    main()
