"""What each compute unit computes: numerics profiles (data, in profiles/*.yaml) and the op
implementations that follow them (ne.py, gpu.py), attached to a plan's steps by apply.py.

evaluate.numerics:
  device       each FP16 op runs under the profile of the unit it is placed on (default)
  ieee         every FP16 op: FP32 compute, one IEEE-half rounding at its output
               (the emulator's former fp32_compute mode; `fp32_compute` is accepted as a name)
  native_fp16  torch's half kernels (rounding inside ops too)
evaluate.numerics_profile: null (the placement decides), or ne | gpu | cpu | ieee | PATH
(a measured profile written by `python -m pipeline.probe`), forced on every FP16 op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import NUMERICS, NUMERICS_ALIASES as LEGACY  # noqa: F401 (re-exported)
from pipeline.errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"
UNIT_PROFILES = {"NE": "ne", "GPU": "gpu", "CPU": "cpu"}
DEFAULT_CHIP = "M2"  # the source article's, as device.chip


@dataclass
class Profile:
    name: str
    unit: str
    rules: dict[str, dict]
    chip: str = DEFAULT_CHIP
    source: str = "published"

    def value(self, rule: str, default: Any = None) -> Any:
        """A rule's value for this profile's chip (a per-chip entry wins over the default)."""
        r = self.rules.get(rule)
        if r is None:
            return default
        chips = r.get("chips") or {}
        return chips.get(self.chip, r.get("value", default))


def load_profile(name: str, chip: str = DEFAULT_CHIP) -> Profile:
    """A published profile by name (ne, gpu, cpu, ieee) or a measured one from a YAML path."""
    path = PROFILE_DIR / f"{name}.yaml"
    source = "published"
    if not path.is_file():
        path = Path(name)
        source = f"measured ({path})"
        if not path.is_file():
            raise UserError(f"unknown numerics profile '{name}'",
                            "use ne, gpu, cpu, ieee, or a profile file from `python -m pipeline.probe`")
    data = yaml.safe_load(path.read_text()) or {}
    if "rules" not in data:
        raise UserError(f"numerics profile {path} has no 'rules'", "regenerate it with the probe")
    base = data.get("base")  # a measured profile overrides rules of a published one
    rules = dict(load_profile(base, chip).rules) if base else {}
    rules.update(data["rules"])
    return Profile(path.stem if source == "published" else str(path), data.get("unit", "NE"),
                   rules, data.get("chip", chip), source)


@dataclass
class Numerics:
    """The numerics a run uses: the mode, the forced profile (if any) and the chip."""
    mode: str = "device"
    profile: str | None = None
    chip: str = DEFAULT_CHIP
    compute_units: str = "ALL"
    profiles: dict[str, Profile] = field(default_factory=dict)
    units: dict[str, str] | None = None  # measured placement (op or output name -> unit), macOS

    @property
    def runtime_mode(self) -> str:
        return "native_fp16" if self.mode == "native_fp16" else "fp32_compute"

    @property
    def per_op(self) -> bool:
        return self.mode == "device"

    def get(self, name: str) -> Profile:
        if name not in self.profiles:
            self.profiles[name] = load_profile(name, self.chip)
        return self.profiles[name]

    def describe(self) -> str:
        if self.mode != "device":
            return self.mode
        forced = f", profile {self.profile} forced" if self.profile else \
            f", per-op unit from the placement ({self.compute_units})"
        return f"device ({self.chip}{forced})"


def numerics_from(cfg) -> Numerics:
    """Numerics from the `evaluate` config section (old emulator_mode values map cleanly);
    the chip and compute units are the device model's (`device` section)."""
    from pipeline.config import check_numerics

    ev = cfg.evaluate
    profile = ev.get("numerics_profile")
    # evaluate.emulator_mode=fp32_compute|native_fp16 (legacy) still works and wins
    mode = check_numerics(ev.get("emulator_mode") or ev.get("numerics") or "device", profile)
    dev = cfg.get("device") or {}
    num = Numerics(mode, profile, str(dev.get("chip") or DEFAULT_CHIP),
                   str(dev.get("compute_units") or "ALL"))
    if profile:
        num.get(profile)  # fail early on a bad name or path
    return num
