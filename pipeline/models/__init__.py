"""Build any model from its Hydra config, load a checkpoint, make its evaluation inputs.

A model config (conf/model/*.yaml, schema `ModelConf` in pipeline/schema.py) holds the
builder (`_target_`), its keyword arguments (`args`), and the pipeline's own keys: name,
seed, checkpoint, inputs, outputs, data, samples, tolerance, task_metric. `seed` is passed to
a builder that takes one (the synthetic weights) and seeds generated inputs.
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


class TupleOutputs(torch.nn.Module):
    """Wraps a model so it returns a tuple of tensors in a fixed order."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        out = self.model(*args)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out.values())
        return tuple(out)


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
    kwargs = dict(model_cfg.get("args") or {})
    seed = model_cfg.get("seed")
    takes_seed = _accepts(builder, "seed")
    if seed is not None and takes_seed:
        kwargs.setdefault("seed", int(seed))
    check_seed_used(model_cfg, takes_seed and not model_cfg.get("checkpoint"),
                    not model_cfg.get("checkpoint") and not getattr(builder, "pretrained", False))
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise UserError(f"building model '{target}' failed: {exc}",
                        "check the keys under model.args against the builder's arguments") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model._target_ '{target}' returned {type(model).__name__}, not a "
                        "torch.nn.Module", "return the model instance from the builder")
    if model_cfg.get("checkpoint"):
        load_checkpoint(model, Path(str(model_cfg["checkpoint"])))
    return model.eval()


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def generated_inputs(model_cfg: Mapping[str, Any]) -> bool:
    data = model_cfg.get("data") or {}
    return not data.get("_target_") and not data.get("file")


def check_seed_used(model_cfg: Mapping[str, Any], seeds_builder: bool, seeds_torch_init: bool) -> None:
    """model.seed must seed something: the builder's weights, torch's initialisation, or
    generated inputs. Otherwise a non-default seed is refused rather than ignored."""
    seed = model_cfg.get("seed")
    if seed in (None, 0) or seeds_builder or seeds_torch_init or generated_inputs(model_cfg):
        return
    why = ("the weights come from model.checkpoint" if model_cfg.get("checkpoint")
           else "the model's weights are pretrained")
    raise UserError(f"model.seed={seed} would change nothing for model '{model_cfg.get('name')}': "
                    f"{why} and its inputs come from model.data",
                    "drop model.seed (to vary generated inputs use model.data.seed)")


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
    data = dict(model_cfg.get("data") or {})
    count = model_cfg.get("samples")
    count = 4 if count is None else int(count)
    seed = int(model_cfg.get("seed") or 0)
    for key, value in (("model.samples", count), ("model.data.count", data.get("count"))):
        if value is not None and int(value) < 1:
            raise UserError(f"{key}={value}: the evaluation needs at least one sample",
                            f"set {key} to 1 or more")
    n = int(data.get("count") or 0) or (count if generated_inputs(model_cfg) else 16)
    check_memory(specs, n)
    if data.get("_target_"):
        maker = _import_target(str(data["_target_"]))
        kwargs = {k: v for k, v in data.items()
                  if k not in ("_target_", "file", "args") and v is not None}
        kwargs.update(data.get("args") or {})
        try:
            arrays = maker(inputs=[{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                                   for s in specs], **kwargs)
        except TypeError as exc:
            raise UserError(f"model.data._target_ '{data['_target_']}' failed: {exc}",
                            "check the keys under model.data against the function's arguments") from None
        source = f"model.data._target_ {data['_target_']}"
    elif data.get("file"):
        path = Path(str(data["file"]))
        if not path.is_file():
            raise UserError(f"input data file '{path}' not found", "give an .npz with one array per input")
        from pipeline.artifacts import read_npz

        arrays = read_npz(path, fix="give an .npz written by numpy.savez, one array per input")
        source = f"input data file '{path}'"
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
        source = "generated inputs"
    return check_inputs(specs, arrays, source)


def available_memory() -> int:
    """Bytes this machine can still allocate (MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# Working copies per input value while making and tracing inputs (image, normalized copy,
# batch, torch tensor, reference output and the model's first activations): a lower bound.
MEMORY_FACTOR = 8


def check_memory(specs: list["InputSpec"], samples: int) -> None:
    need = sum(int(np.prod(s.shape, dtype=np.float64)) * np.dtype(DTYPES[s.dtype]).itemsize
               for s in specs) * samples * MEMORY_FACTOR
    have = available_memory()
    if have and need > have:
        shapes = ", ".join(f"{s.name}{list(s.shape)}" for s in specs)
        raise UserError(f"inputs {shapes} x {samples} samples need about {need / 2**30:.1f} GiB, "
                        f"this machine has {have / 2**30:.1f} GiB available",
                        "use a smaller model.inputs shape or fewer samples")


def check_inputs(specs: list[InputSpec], arrays: Mapping[str, np.ndarray],
                 source: str = "input data") -> dict[str, np.ndarray]:
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
        if len(arr) == 0:
            raise UserError(f"{source}: input '{s.name}' has no samples", "give at least one sample")
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
            raise UserError(f"{source}: input '{s.name}' holds NaN or Inf (sample(s) "
                            f"{bad[:5].tolist()})", "give finite input values")
        out[s.name] = arr.astype(DTYPES[s.dtype])
    return out
