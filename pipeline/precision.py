"""Which ops stay FP32: a precision config as data, turned into a coremltools op selector.

A precision config (conf/precision/*.yaml) says:
  compute: fp32 | fp16 | mixed
  fp32_ops:      [op types]            every op of these MIL types stays FP32
  fp32_regions:  [{start: T1, end: T2}] from an op of type T1 through the next op of type T2
  fp32_names:    [patterns]            ops whose name matches (fnmatch, or re:REGEX)

The selector is built fresh for every conversion, sees ops in program order (after
coremltools' fusions), and records what it chose so the convert stage can report and check it.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.errors import UserError

COMPUTE = ("fp32", "fp16", "mixed", "auto")
SKIP_TYPES = {"const"}


def sanitize(name: str) -> str:
    """The name coremltools gives an op in the saved program (`input.3` -> `input_3`)."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"op_{out}" if out[:1].isdigit() else out


def canonical(name: str) -> str:
    """An op's name with the FP16 pass's suffix removed, to match ops across variants."""
    return name[: -len("_cast_fp16")] if name.endswith("_cast_fp16") else name


@dataclass(frozen=True)
class Region:
    start: str
    end: str


@dataclass(frozen=True)
class PrecisionSpec:
    name: str
    compute: str
    fp32_ops: tuple[str, ...] = ()
    fp32_regions: tuple[Region, ...] = ()
    fp32_names: tuple[str, ...] = ()

    @property
    def is_mixed(self) -> bool:
        return self.compute == "mixed"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "compute": self.compute, "fp32_ops": list(self.fp32_ops),
                "fp32_regions": [{"start": r.start, "end": r.end} for r in self.fp32_regions],
                "fp32_names": list(self.fp32_names)}


def spec_from_config(cfg: Mapping[str, Any]) -> PrecisionSpec:
    name = str(cfg.get("name") or "")
    compute = cfg.get("compute")
    if compute not in COMPUTE:
        raise UserError(f"precision '{name}': unknown compute '{compute}'",
                        f"set precision.compute to one of {', '.join(COMPUTE)}")
    regions = []
    for r in cfg.get("fp32_regions") or []:
        if not isinstance(r, Mapping) or not r.get("start") or not r.get("end"):
            raise UserError(f"precision '{name}': region {dict(r) if isinstance(r, Mapping) else r} "
                            "needs both a start and an end op type",
                            "write regions as {start: pow, end: sqrt}")
        regions.append(Region(str(r["start"]), str(r["end"])))
    spec = PrecisionSpec(name, compute, tuple(str(o) for o in cfg.get("fp32_ops") or ()),
                         tuple(regions), tuple(str(p) for p in cfg.get("fp32_names") or ()))
    if compute != "mixed" and (spec.fp32_ops or spec.fp32_regions or spec.fp32_names):
        raise UserError(f"precision '{name}' is compute={compute} but lists FP32 ops",
                        "set compute: mixed to keep selected ops in FP32")
    for pattern in spec.fp32_names:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise UserError(f"precision '{name}': bad regex '{pattern}': {exc}") from None
    return spec


def name_matches(pattern: str, name: str) -> bool:
    names = {name, sanitize(name), canonical(name)}
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return any(rx.fullmatch(n) for n in names)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


@dataclass
class Selection:
    """What the selector saw and chose during one conversion."""

    seen_types: set[str] = field(default_factory=set)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (op_type, name) non-const
    fp32: list[tuple[str, str, str]] = field(default_factory=list)  # (op_type, name, reason)
    open_region: tuple[Region, str] | None = None
    matched_patterns: set[str] = field(default_factory=set)


class OpSelector:
    """Callable for ``ct.transform.FP16ComputePrecision(op_selector=...)``.

    Returns True to cast an op to FP16, False to keep it FP32. Stateful (regions follow
    program order), so make a new one per conversion.
    """

    def __init__(self, spec: PrecisionSpec):
        self.spec = spec
        self.state = Selection()

    def __call__(self, op) -> bool:
        op_type, name = op.op_type, op.name
        if op_type in SKIP_TYPES:
            return True
        st = self.state
        st.seen_types.add(op_type)
        st.seen.append((op_type, name))
        reason = None
        if st.open_region is not None:
            region = st.open_region[0]
            reason = f"region {region.start}->{region.end}"
            if op_type == region.end:
                st.open_region = None
        else:
            for region in self.spec.fp32_regions:
                if op_type == region.start:
                    reason = f"region {region.start}->{region.end}"
                    if region.end != region.start:
                        st.open_region = (region, name)
                    break
        if reason is None and op_type in self.spec.fp32_ops:
            reason = f"op type {op_type}"
        if reason is None:
            for pattern in self.spec.fp32_names:
                if name_matches(pattern, name):
                    st.matched_patterns.add(pattern)
                    reason = f"name {pattern}"
                    break
        if reason is None:
            return True
        st.fp32.append((op_type, name, reason))
        return False

    def check(self) -> None:
        """After conversion: every config entry must have matched something in this program."""
        st, spec = self.state, self.spec
        where = f"precision '{spec.name}'"
        seen = ", ".join(sorted(st.seen_types))
        for op_type in spec.fp32_ops:
            if op_type not in st.seen_types:
                raise UserError(f"{where}: fp32_ops names op type '{op_type}', which the program "
                                "does not contain", f"op types present: {seen}")
        for region in spec.fp32_regions:
            if region.start not in st.seen_types:
                raise UserError(f"{where}: region start '{region.start}' is not an op type of "
                                "the program", f"op types present: {seen}")
            if region.end not in st.seen_types:
                raise UserError(f"{where}: region {region.start}->{region.end} has no end: the "
                                f"program has no '{region.end}' op",
                                f"op types present: {seen}")
        if st.open_region is not None:
            region, start_name = st.open_region
            raise UserError(f"{where}: region {region.start}->{region.end} opened at op "
                            f"'{start_name}' never reaches a '{region.end}'",
                            "choose an end op type that follows the start in program order")
        for pattern in spec.fp32_names:
            if pattern not in st.matched_patterns and not any(
                    name_matches(pattern, n) for _, n in st.seen):
                raise UserError(f"{where}: fp32_names pattern '{pattern}' matches no op name",
                                "see the op names in artifacts/convert/<variant>/report.json")


def compute_precision(spec: PrecisionSpec):
    """The ``compute_precision`` argument for ``ct.convert`` and the selector (or None)."""
    from pipeline.coreml_import import coremltools

    ct = coremltools()
    if spec.compute == "fp32":
        return ct.precision.FLOAT32, None
    if spec.compute == "fp16":
        return ct.precision.FLOAT16, None
    selector = OpSelector(spec)
    return ct.transform.FP16ComputePrecision(op_selector=selector), selector
