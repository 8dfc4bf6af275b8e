"""Per-chip figures (data/chips.yaml), each with its source: vendor, measured, derived or
assumed. The device model's chip differences come only from here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError

CHIPS_FILE = Path(__file__).parent / "data" / "chips.yaml"
FIGURES = ("ne_tflops", "gpu_tflops", "cpu_tflops", "dram_gbps", "ne_gbps", "ne_dispatch_ms",
           "gpu_dispatch_ms", "cpu_dispatch_ms", "switch_ms")


@dataclass(frozen=True)
class Chip:
    name: str
    device: str
    ne_tflops: float        # Neural Engine FP16 peak
    gpu_tflops: float       # GPU peak (FP16 = FP32 rate)
    cpu_tflops: float       # CPU matrix-unit throughput reached by Core ML's CPU path
    dram_gbps: float        # memory bandwidth (GPU and CPU)
    ne_gbps: float          # bandwidth the NE reaches through Core ML
    ne_dispatch_ms: float   # per NE segment (one evaluation of a compiled NE program)
    gpu_dispatch_ms: float  # per GPU segment
    cpu_dispatch_ms: float  # per CPU segment
    switch_ms: float        # per hand-off between units
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def dispatch_ms(self, unit: str) -> float:
        return {"NE": self.ne_dispatch_ms, "GPU": self.gpu_dispatch_ms,
                "CPU": self.cpu_dispatch_ms}[unit]


def load_chips(path: Path = CHIPS_FILE) -> dict[str, Chip]:
    raw = yaml.safe_load(path.read_text())
    chips = {}
    for name, entry in raw["chips"].items():
        merged = {**raw["defaults"], **{k: v for k, v in entry.items() if k != "device"}}
        chips[name] = Chip(name=name, device=entry.get("device", name),
                           **{k: float(merged[k]["value"]) for k in FIGURES},
                           sources={k: str(merged[k]["source"]) for k in FIGURES})
    return chips


CHIPS: dict[str, Chip] = load_chips()


def get_chip(name: str) -> Chip:
    if name not in CHIPS:
        raise UserError(f"unknown chip '{name}'", f"set device.chip to one of: {', '.join(CHIPS)}")
    return CHIPS[name]
