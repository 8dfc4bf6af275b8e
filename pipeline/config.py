"""Hydra composition for every stage: `python -m pipeline.<stage> key=value ...`.

We compose with Hydra's compose API rather than `@hydra.main`, so a stage writes nothing
but its artifacts (no `outputs/` folders, no log files) and a bad override becomes one line.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Sequence

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, OmegaConfBaseException,
                              ValidationError)

from pipeline import schema
from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
BACKENDS = ("auto", "emulator", "coreml")


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def load_config(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> DictConfig:
    """Compose conf/config.yaml onto the schema (pipeline/schema.py) with command-line style
    overrides; every user mistake (unknown key, wrong type, bad YAML) -> one-line UserError.
    The config folder is conf/ of the repository, or $PIPELINE_CONF_DIR."""
    overrides = list(overrides)
    conf_dir = Path(conf_dir or os.environ.get("PIPELINE_CONF_DIR") or CONF_DIR)
    cfg, slot = _compose(overrides, conf_dir)
    mapped = (cfg.model.get("variants") or {}).get(slot)
    if mapped is not None and not str(mapped).strip():  # an unset shell variable, say
        raise UserError(f"model.variants.{slot} of model '{cfg.model.name}' is empty",
                        f"name a precision config (one of: {', '.join(group_options('precision', conf_dir))})")
    if mapped and mapped != slot:  # this model's own config for the slot (model.variants)
        keep = [o for o in overrides if o.lstrip("+~").split("=")[0] != "precision"]
        named = any(o.lstrip("+").startswith("precision.name=") for o in overrides)
        extra = [f"precision={mapped}", f"precision.config={mapped}"]
        try:
            cfg, _ = _compose(keep + extra + ([] if named else [f"precision.name={slot}"]),
                              conf_dir)
        except UserError as exc:
            raise UserError(f"{exc.message} (model.variants.{slot} of model "
                            f"'{cfg.model.name}')", exc.fix) from None
    validate(cfg)
    return cfg


def _compose(overrides: list[str], conf_dir: Path) -> tuple[DictConfig, str | None]:
    """The composed config and the precision option it chose (Hydra's runtime choice)."""
    schema.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        slot = cfg.hydra.runtime.choices.get("precision")
        with open_dict(cfg):
            del cfg["hydra"]
        # `+key=value` adds keys even to typed nodes: merging onto the schema refuses them.
        OmegaConf.merge(OmegaConf.structured(schema.Config), OmegaConf.to_container(cfg))
    except MissingConfigException as exc:
        raise _missing_option(exc, overrides, conf_dir) from None
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise composition_error(exc, overrides) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg, slot


def model_section(cfg: DictConfig) -> dict:
    """The model's config as the trace records it: what the traced program depends on
    (model.variants only says which precision configs `dvc repro` pairs with it)."""
    section = to_dict(cfg.model)
    section.pop("variants", None)
    return section


def composition_error(exc: BaseException, overrides: list[str]) -> UserError:
    """Hydra's and OmegaConf's composition errors as one line naming the key and the fix."""
    in_file = re.search(r"^In '([^']+)'", str(exc))
    source = f"conf/{in_file.group(1)}.yaml" if in_file else None
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (OmegaConfBaseException, yaml.YAMLError)):
        cause = cause.__cause__ or cause.__context__
    cause = cause or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.key is not None:
        key = str(cause.full_key or cause.key)
        parent, _, leaf = key.rpartition(".")
        known = _schema_keys(cause.object_type)
        if not known:  # an open dict (model.args): new keys are welcome, with a +
            return UserError(f"'{key}' is not in the config yet", f"add it with +{key}=VALUE")
        near = difflib.get_close_matches(leaf, known, n=1, cutoff=0.5)
        hint = f"did you mean '{(parent + '.' if parent else '') + near[0]}'? " if near else ""
        where = f"'{parent}'" if parent else "the config"
        return UserError(f"unknown key '{key}'" + (f" in {source}" if source else ""),
                         f"{hint}the keys of {where} are: {', '.join(known)} "
                         "(a model builder's own arguments go under model.args)")
    if isinstance(cause, ValidationError):
        key = str(cause.full_key or "")
        text = " ".join(first.split())
        value = re.search(r"Value '([^']*)'", text)
        bad = next((o for o in overrides if key and o.lstrip("+~").split("=")[0].endswith(
            key.split("[")[0])), None) or next(
            (o for o in overrides if value and value.group(1) in o.partition("=")[2]), None)
        where = f"override '{bad}'" if bad and not source else (source or "the config")
        fix = "give a value of the expected type"
        if "is not a ListConfig" in text and bad:
            name, _, value = bad.partition("=")
            fix = f"a list is written in brackets: '{name}=[{value}]'"
        return UserError(f"bad value for '{key}' in {where}: {text}", fix)
    if isinstance(cause, yaml.YAMLError):
        mark = getattr(cause, "problem_mark", None)
        at = f"{mark.name}, line {mark.line + 1}" if mark else "a file in conf/"
        return UserError(f"YAML syntax error in {at}: {first}",
                         "fix the YAML in that file (git diff conf/ shows what changed)")
    return UserError(f"bad override in {overrides}: {first}",
                     "overrides look like key=value, group=option or +new_key=value")


def _schema_keys(object_type) -> list[str]:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return [f.name for f in dataclasses.fields(object_type)]


def _missing_option(exc: Exception, overrides: list[str], conf_dir: Path) -> UserError:
    found = re.search(r"Could not find '([\w-]+)/([^']*)'", str(exc))
    if found:
        group, value = found.groups()
        options = ", ".join(group_options(group, conf_dir))
        return UserError(f"unknown {group} '{value}'",
                         f"choose one of: {options} (or add conf/{group}/{value}.yaml)")
    return UserError(str(exc).strip().splitlines()[0])


def validate(cfg: DictConfig) -> None:
    """What types cannot say: allowed values and safe names."""
    if cfg.backend not in BACKENDS:
        raise UserError(f"unknown backend '{cfg.backend}'", f"choose one of: {', '.join(BACKENDS)}")
    mode = cfg.evaluate.get("emulator_mode")
    if mode is not None and mode not in ("fp32_compute", "native_fp16"):
        raise UserError(f"unknown evaluate.emulator_mode '{mode}'",
                        "use evaluate.numerics=device|ieee|native_fp16 (emulator_mode is legacy)")
    check_numerics(cfg.evaluate.get("numerics") or "device", cfg.evaluate.get("numerics_profile"))
    for key in ("precision.name", "model.name"):
        check_name(key, OmegaConf.select(cfg, key))


NUMERICS = ("device", "ieee", "native_fp16")  # evaluate.numerics (pipeline/emulator/numerics)
NUMERICS_ALIASES = {"fp32_compute": "ieee"}    # the former evaluate.emulator_mode names
PROFILE_DIR = Path(__file__).resolve().parent / "emulator" / "numerics" / "profiles"


def check_numerics(mode: str, profile: str | None) -> str:
    """evaluate.numerics (aliases resolved) after checking it and evaluate.numerics_profile:
    a published profile's name or a measured profile's file."""
    mode = NUMERICS_ALIASES.get(mode, mode)
    if mode not in NUMERICS:
        raise UserError(f"unknown evaluate.numerics '{mode}'",
                        f"choose one of: {', '.join(NUMERICS)} (or fp32_compute, = ieee)")
    if profile and not (PROFILE_DIR / f"{profile}.yaml").is_file() and not Path(profile).is_file():
        raise UserError(f"unknown numerics profile '{profile}'",
                        "use ne, gpu, cpu, ieee, or a profile file from `python -m pipeline.probe`")
    return mode


def check_name(key: str, value) -> None:
    """Names become folder names: letters, digits, _ . - (no '..', no '/', not empty)."""
    text = "" if value is None else str(value)
    if not re.match(schema.NAME_PATTERN, text) or ".." in text:
        raise UserError(f"{key}={text!r} is not a safe name (it becomes a folder name)",
                        f"use letters, digits, '_', '.', '-' (no '/', no '..'), e.g. {key}=mine")


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def artifacts_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.artifacts)


def variant_dir(cfg: DictConfig, stage: str, variant: str | None = None) -> Path:
    return artifacts_dir(cfg) / stage / (variant or cfg.precision.name)
