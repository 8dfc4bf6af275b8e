"""Hydra composition for every stage: `python -m pipeline.<stage> key=value ...`.

We compose with Hydra's compose API rather than `@hydra.main`, so a stage writes nothing
but its artifacts (no `outputs/` folders, no log files) and a bad override becomes one line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
BACKENDS = ("auto", "emulator", "coreml")


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def load_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/config.yaml with command-line style overrides; user mistakes -> UserError."""
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except MissingConfigException as exc:
        raise _missing_option(exc, overrides, conf_dir) from None
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"bad override in {overrides}: {first}",
                        "overrides look like key=value, group=option or +new_key=value") from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def _missing_option(exc: Exception, overrides: list[str], conf_dir: Path) -> UserError:
    found = re.search(r"Could not find '([\w-]+)/([^']*)'", str(exc))
    if found:
        group, value = found.groups()
        options = ", ".join(group_options(group, conf_dir))
        return UserError(f"unknown {group} '{value}'",
                         f"choose one of: {options} (or add conf/{group}/{value}.yaml)")
    return UserError(str(exc).strip().splitlines()[0])


def validate(cfg: DictConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise UserError(f"unknown backend '{cfg.backend}'", f"choose one of: {', '.join(BACKENDS)}")
    mode = cfg.evaluate.get("emulator_mode")
    if mode is not None and mode not in ("fp32_compute", "native_fp16"):
        raise UserError(f"unknown evaluate.emulator_mode '{mode}'",
                        "use evaluate.numerics=device|ieee|native_fp16 (emulator_mode is legacy)")
    from pipeline.emulator.numerics import numerics_from
    numerics_from(cfg)  # a bad evaluate.numerics or numerics_profile fails here


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def artifacts_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.artifacts)


def variant_dir(cfg: DictConfig, stage: str, variant: str | None = None) -> Path:
    return artifacts_dir(cfg) / stage / (variant or cfg.precision.name)
