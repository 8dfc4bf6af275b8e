"""Build any model from its Hydra config, load a checkpoint, make its evaluation inputs.

A model config (conf/model/*.yaml) holds the builder (`_target_` plus its keyword arguments)
and these keys, which the pipeline reads and does not pass to the builder:
  name, checkpoint, inputs, outputs, data, samples, seed, tolerance, task_metric.
"""
from __future__ import annotations

import importlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.errors import UserError

log = logging.getLogger(__name__)

META_KEYS = {"name", "checkpoint", "inputs", "outputs", "data", "samples", "seed", "tolerance",
             "task_metric"}
DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    low: float | None = None
    high: float | None = None

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> "InputSpec":
        name = raw.get("name")
        if not name or not raw.get("shape"):
            raise UserError(f"input spec {dict(raw)} needs a name and a shape",
                            "write inputs as [{name: x, shape: [1, 3, 224, 224], dtype: float32}]")
        dtype = str(raw.get("dtype", "float32"))
        if dtype not in DTYPES:
            raise UserError(f"input '{name}': unknown dtype '{dtype}'",
                            f"use one of {', '.join(DTYPES)}")
        shape = tuple(int(s) for s in raw["shape"])
        if any(s <= 0 for s in shape):
            raise UserError(f"input '{name}': shape {list(shape)} must be all positive",
                            "Core ML conversion here uses static shapes")
        rng = raw.get("range") or [None, None]
        if len(rng) != 2 or (None not in rng and rng[0] > rng[1]):
            raise UserError(f"input '{name}': range {list(rng)} is not [low, high] with low <= high",
                            "write range: [low, high]")
        if dtype.startswith("int") and None not in rng and any(int(v) != v for v in rng):
            raise UserError(f"input '{name}': integer input with a fractional range {list(rng)}",
                            "give whole numbers, e.g. range: [0, 999] for token ids")
        return InputSpec(str(name), shape, dtype, rng[0], rng[1])


def input_specs(model_cfg: Mapping[str, Any]) -> list[InputSpec]:
    raw = model_cfg.get("inputs")
    if not raw:
        raise UserError(f"model '{model_cfg.get('name')}' declares no inputs",
                        "add model.inputs: [{name, shape, dtype, range}]")
    return [InputSpec.parse(r) for r in raw]


def _import_target(target: str):
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"model._target_ '{target}' does not import ({exc.__class__.__name__}: "
                        f"{exc})", "give a dotted path to a function or class on the Python path, "
                        "e.g. model._target_=my_pkg.models.build_model") from None


def build_model(model_cfg: Mapping[str, Any]) -> torch.nn.Module:
    target = model_cfg.get("_target_")
    if not target or target == "???":
        raise UserError(f"model '{model_cfg.get('name')}' has no _target_",
                        "set model._target_=my_pkg.build_model")
    builder = _import_target(str(target))
    kwargs = {k: v for k, v in model_cfg.items() if k not in META_KEYS and k != "_target_"}
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise UserError(f"building model '{target}' failed: {exc}",
                        "check the model config's keyword arguments") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model._target_ '{target}' returned {type(model).__name__}, not a "
                        "torch.nn.Module", "return the model instance from the builder")
    if model_cfg.get("checkpoint"):
        load_checkpoint(model, Path(str(model_cfg["checkpoint"])))
    return model.eval()


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found", "give an existing file: model.checkpoint=PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"checkpoint '{path}' was refused by torch.load(weights_only=True): {first}",
                        "save only tensors: torch.save(model.state_dict(), PATH)") from None
    except Exception as exc:  # torch raises many kinds on a damaged file
        raise UserError(f"checkpoint '{path}' is not a readable torch checkpoint "
                        f"({str(exc).splitlines()[0]})", "check the file; re-save it with torch.save") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state dict",
                        "save model.state_dict()")
    own = set(model.state_dict())
    for prefix in ("", "module.", "image_encoder.", "model."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own and own <= set(stripped):
            state = {k: v for k, v in stripped.items() if k in own}
            break
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"checkpoint '{path}' does not fit the model: missing "
                        f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}",
                        "use a checkpoint of this architecture (or fix the model config)")
    log.info("loaded checkpoint %s (%d tensors)", path, len(state))


def make_inputs(model_cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Evaluation inputs, each an array [samples, *shape], checked against the input spec."""
    specs = input_specs(model_cfg)
    data = model_cfg.get("data")
    count = int(model_cfg.get("samples") or 4)
    seed = int(model_cfg.get("seed") or 0)
    if data and data.get("_target_"):
        maker = _import_target(str(data["_target_"]))
        kwargs = {k: v for k, v in data.items() if k != "_target_"}
        arrays = maker(inputs=[{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                               for s in specs], **kwargs)
    elif data and data.get("file"):
        path = Path(str(data["file"]))
        if not path.is_file():
            raise UserError(f"input data file '{path}' not found", "give an .npz with one array per input")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        rng = np.random.default_rng(seed)
        arrays = {}
        for s in specs:
            shape = (count,) + s.shape
            if s.dtype.startswith("int"):  # token ids, masks, indices: no default range fits all
                if s.low is None or s.high is None:
                    raise UserError(f"integer input '{s.name}' has no range to draw values from",
                                    "add range: [low, high] (both included) to the input, e.g. "
                                    "[0, vocab_size - 1] for token ids, [1, 1] for an attention "
                                    "mask; or give model.data")
                arrays[s.name] = rng.integers(int(s.low), int(s.high) + 1, shape).astype(DTYPES[s.dtype])
            else:
                lo = -1.0 if s.low is None else s.low
                hi = 1.0 if s.high is None else s.high
                arrays[s.name] = rng.uniform(lo, hi, shape).astype(DTYPES[s.dtype])
    return check_inputs(specs, arrays)


def check_inputs(specs: list[InputSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        if s.name not in arrays:
            raise UserError(f"input data has no array for input '{s.name}' (it has {sorted(arrays)})",
                            "name the arrays after model.inputs")
        arr = np.asarray(arrays[s.name])
        if arr.shape[1:] != s.shape and arr.shape != s.shape:
            raise UserError(f"input '{s.name}' data has shape {list(arr.shape)}, the spec says "
                            f"[samples, {', '.join(map(str, s.shape))}]",
                            "fix model.inputs[].shape or the data")
        if arr.shape == s.shape:
            arr = arr[None]
        out[s.name] = arr.astype(DTYPES[s.dtype])
    return out
