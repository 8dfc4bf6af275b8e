"""Execute a saved Core ML program op by op, each op in the dtype the program declares.

Two modes (see README, "The emulator"):
- ``fp32_compute`` (default): an FP16-typed op reads its FP16 inputs, computes in FP32 and
  rounds its output once to IEEE half (overflow -> inf, tiny values -> subnormal or zero).
  This assumes hardware that accumulates and evaluates inside an op at FP32 or better and
  rounds at the op boundary, as the Neural Engine's and GPU's FP16 paths do for
  convolutions, matmuls and reductions.
- ``native_fp16``: FP16-typed ops run torch's half kernels on half tensors, so rounding also
  happens inside an op (e.g. in a reduction's partial sums, where torch's kernel does it).
  Ops without a half kernel on the device fall back to ``fp32_compute`` and are listed.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline.emulator.ops import OPS, VALUE_PRESERVING
from pipeline.errors import UnsupportedOpError, UserError

log = logging.getLogger(__name__)

TORCH_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64, "int32": torch.int32,
    "int64": torch.int64, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "uint16": torch.int32, "bool": torch.bool,
}
FLOAT = {"fp32", "fp16", "fp64"}
MODES = ("fp32_compute", "native_fp16")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools prints progress bars and proxy warnings on import and load; hide them."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def load_program(package: str | Path):
    """The MIL program of a saved .mlpackage, through coremltools' own loader."""
    package = Path(package)
    if not package.exists():
        raise UserError(f"no Core ML package at {package}", "run the convert stage first")
    with quiet():
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load

        try:
            mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
            spec = mlmodel.get_spec()
            return load(spec, specification_version=spec.specificationVersion,
                        file_weights_dir=mlmodel.weights_dir)
        except Exception as exc:  # coremltools and protobuf raise many kinds on a damaged package
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"Core ML package {package} cannot be loaded ({type(exc).__name__}: "
                            f"{first})", "re-run the convert stage for this variant") from None


def dtype_str(var) -> str:
    from coremltools.converters.mil.mil import types

    try:
        return types.builtin_to_string(var.dtype)
    except Exception:  # tuple / list / state types
        return str(var.dtype)


@dataclass
class Step:
    index: int
    op_type: str
    name: str
    fn: Callable[..., Any]
    args: list[tuple[str, int, Any]]  # (param, kind 0=const 1=var 2=list, payload)
    outputs: list[str]
    dtypes: list[str]
    float_inputs: list[str]
    round_output: bool = True
    round_inputs: frozenset = frozenset()  # var inputs to round to FP16 first (virtual mixed)


@dataclass
class Plan:
    steps: list[Step]
    consts: dict[str, Any]
    const_dtypes: dict[str, str]
    inputs: dict[str, tuple[str, tuple[int, ...]]]
    outputs: list[str]
    free_after: dict[int, list[str]] = field(default_factory=dict)

    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.op_type] = counts.get(s.op_type, 0) + 1
        return counts


def _const_value(val: Any, dtype: str, device: torch.device, mode: str) -> Any:
    if isinstance(val, (str, bytes)):
        return val
    arr = np.asarray(val)
    if arr.dtype.kind in "US":
        return arr.tolist()
    if dtype in FLOAT:
        store = torch.float16 if (mode == "native_fp16" and dtype == "fp16") else torch.float32
        return torch.from_numpy(np.array(arr, dtype=np.float32)).to(device, store)
    if arr.size <= 64:
        return arr.tolist()
    return torch.from_numpy(np.array(arr)).to(device)


def build_plan(prog, device: torch.device, mode: str) -> Plan:
    """Turn a MIL function into a flat list of steps; fail fast on unknown ops."""
    func = prog.functions["main"]
    consts: dict[str, Any] = {}
    const_dtypes: dict[str, str] = {}
    var_dtypes: dict[str, str] = {n: dtype_str(v) for n, v in func.inputs.items()}
    steps: list[Step] = []
    for op in func.operations:
        outs = list(op.outputs)
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            for v in outs:
                val = v.val
                if val is None:
                    with quiet():
                        val = op.value_inference()
                consts[v.name] = _const_value(val, dtype_str(v), device, mode)
                const_dtypes[v.name] = dtype_str(v)
            continue
        if op.blocks or op.op_type not in OPS:
            raise UnsupportedOpError(op.op_type, op.name)
        args: list[tuple[str, int, Any]] = []
        float_inputs: list[str] = []
        for param, value in op.inputs.items():
            if isinstance(value, (list, tuple)):
                args.append((param, 2, [v.name for v in value]))
                names = [v.name for v in value]
            else:
                names = [value.name]
                args.append((param, 0 if value.name in consts else 1, value.name))
            float_inputs += [n for n in names if (var_dtypes.get(n) or const_dtypes.get(n)) in FLOAT]
        dtypes = [dtype_str(v) for v in outs]
        for v, d in zip(outs, dtypes):
            var_dtypes[v.name] = d
        preserving = op.op_type in VALUE_PRESERVING and all(
            (var_dtypes.get(n) or const_dtypes.get(n)) == "fp16" for n in float_inputs)
        steps.append(Step(len(steps), op.op_type, op.name, OPS[op.op_type], args,
                          [v.name for v in outs], dtypes, float_inputs, not preserving))
    inputs = {n: (dtype_str(v), tuple(int(s) for s in v.shape)) for n, v in func.inputs.items()}
    outputs = [v.name for v in func.outputs]
    plan = Plan(steps, consts, const_dtypes, inputs, outputs)
    plan.free_after = _last_uses(plan)
    return plan


FP16_PASS_SKIPS = {"cast", "while_loop", "cond", "make_list", "list_gather", "list_scatter",
                   "list_read", "list_write", "list_length", "read_state", "coreml_update_state"}


def virtual_mixed(plan: Plan, keep_fp32: set[str], mode: str,
                  half_consts: dict[str, Any] | None = None) -> Plan:
    """A plan of the FP32 program with every float op not in ``keep_fp32`` typed FP16.
    ``half_consts`` keeps the FP16 copies of weights between calls (one per search candidate)."""
    native = mode == "native_fp16"
    half_consts = {} if half_consts is None else half_consts
    consts = dict(plan.consts)
    const_dtypes = dict(plan.const_dtypes)
    effective: dict[str, str] = {n: d for n, (d, _) in plan.inputs.items()}
    steps = []
    for step in plan.steps:
        to_half = (step.op_type not in FP16_PASS_SKIPS and step.name not in keep_fp32
                   and "fp32" in step.dtypes)
        if not to_half:
            for name, d in zip(step.outputs, step.dtypes):
                effective[name] = d
            steps.append(step)
            continue
        args, rounds, float_inputs = [], set(), []
        for param, kind, payload in step.args:
            names = payload if kind == 2 else [payload]
            renamed = []
            for n in names:
                if n in consts and const_dtypes.get(n) == "fp32" and isinstance(consts[n], torch.Tensor):
                    half = n + "@fp16"
                    if half not in half_consts:
                        half_consts[half] = to_dtype(consts[n], "fp16", native)
                    consts[half] = half_consts[half]
                    const_dtypes[half] = "fp16"
                    renamed.append(half)
                    float_inputs.append(half)
                else:
                    if effective.get(n) == "fp32":
                        rounds.add(n)
                    if effective.get(n) in FLOAT or const_dtypes.get(n) in FLOAT:
                        float_inputs.append(n)
                    renamed.append(n)
            args.append((param, kind, renamed if kind == 2 else renamed[0]))
        dtypes = ["fp16" if d == "fp32" else d for d in step.dtypes]
        for name, d in zip(step.outputs, dtypes):
            effective[name] = d
        preserving = step.op_type in VALUE_PRESERVING
        steps.append(Step(step.index, step.op_type, step.name, step.fn, args, step.outputs,
                          dtypes, float_inputs, not preserving, frozenset(rounds)))
    out = Plan(steps, consts, const_dtypes, plan.inputs, plan.outputs)
    out.free_after = _last_uses(out)
    return out


def _last_uses(plan: Plan) -> dict[int, list[str]]:
    last: dict[str, int] = {}
    for step in plan.steps:
        for _, kind, payload in step.args:
            for name in (payload if kind == 2 else [payload]):
                if name not in plan.consts:
                    last[name] = step.index
    keep = set(plan.outputs)
    free: dict[int, list[str]] = {}
    for name, idx in last.items():
        if name not in keep:
            free.setdefault(idx, []).append(name)
    return free


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for, but torch sees no CUDA device",
                        "use evaluate.device=cpu (or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}'", "use cpu, cuda or auto")
    return torch.device(device)


Observer = Callable[[Step, list[torch.Tensor]], None]


class Emulator:
    """Runs one saved .mlpackage. ``run(feeds)`` maps input names to arrays."""

    def __init__(self, package: str | Path, mode: str = "fp32_compute", device: str = "cpu"):
        if mode not in MODES:
            raise UserError(f"unknown emulator mode '{mode}'", f"choose one of: {', '.join(MODES)}")
        self.mode = mode
        self.device = resolve_device(device)
        self.package = Path(package)
        self.program = load_program(self.package)
        self.plan = build_plan(self.program, self.device, mode)
        self.fallbacks: set[str] = set()
        self._half_consts: dict[str, Any] = {}  # FP16 weight copies for with_fp16_except
        threads = os.environ.get("PIPELINE_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))

    # -- values ------------------------------------------------------------------------
    def _store(self, value: Any, dtype: str) -> Any:
        return to_dtype(value, dtype, self.mode == "native_fp16", self.device)

    def feed(self, feeds: dict[str, Any]) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for name, (dtype, shape) in self.plan.inputs.items():
            if name not in feeds:
                raise UserError(f"input '{name}' missing from the feeds",
                                f"the program expects inputs {sorted(self.plan.inputs)}")
            arr = feeds[name]
            tensor = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.asarray(arr))
            if shape and tuple(tensor.shape) != shape:
                raise UserError(f"input '{name}' has shape {tuple(tensor.shape)}, the program "
                                f"expects {shape}", "fix the model's input spec")
            env[name] = self._store(tensor.to(self.device), dtype)
        return env

    def with_fp16_except(self, keep_fp32: set[str]) -> "Emulator":
        """This FP32 program as coremltools' FP16 pass would make it with ``keep_fp32`` (op
        names) left in FP32: every other float op gets FP16 inputs, weights and output. For
        searching FP32 sets without a conversion per candidate."""
        import copy

        view = copy.copy(self)
        view.plan = virtual_mixed(self.plan, keep_fp32, self.mode, self._half_consts)
        view.fallbacks = set()
        return view

    # -- execution ---------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, feeds: dict[str, Any], observe: Observer | None = None) -> dict[str, np.ndarray]:
        env = self.feed(feeds)
        consts = self.plan.consts
        native = self.mode == "native_fp16"
        for step in self.plan.steps:
            kwargs = {}
            for param, kind, payload in step.args:
                if kind == 0:
                    kwargs[param] = consts[payload]
                elif kind == 1:
                    kwargs[param] = env[payload]
                    if payload in step.round_inputs:
                        kwargs[param] = to_dtype(kwargs[param], "fp16", native, self.device)
                else:
                    kwargs[param] = [consts[n] if n in consts else
                                     to_dtype(env[n], "fp16", native, self.device)
                                     if n in step.round_inputs else env[n] for n in payload]
            try:
                result = self._call(step, kwargs, native)
            except UserError:
                raise
            except Exception as exc:  # a semantic error on this program: name the op
                raise UserError(f"emulator: op '{step.name}' ({step.op_type}) failed: "
                                f"{str(exc).splitlines()[0]}",
                                "report it with the model; backend=coreml runs it on macOS") from None
            results = list(result) if isinstance(result, (tuple, list)) else [result]
            stored = []
            for name, dtype, value in zip(step.outputs, step.dtypes, results):
                if dtype == "fp16" and not step.round_output and isinstance(value, torch.Tensor) \
                        and value.dtype == (torch.float16 if native else torch.float32):
                    env[name] = value
                else:
                    env[name] = self._store(value, dtype)
                stored.append(env[name])
            if observe is not None:
                observe(step, stored)
            for name in self.plan.free_after.get(step.index, ()):
                env.pop(name, None)
        return {name: env[name].float().cpu().numpy() if env[name].is_floating_point()
                else env[name].cpu().numpy() for name in self.plan.outputs}

    def _call(self, step: Step, kwargs: dict[str, Any], native: bool):
        if not native or "fp16" not in step.dtypes:
            if native:  # an FP32 (or int) op may receive half tensors through no cast: upcast
                kwargs = {k: _upcast(v) for k, v in kwargs.items()}
            return step.fn(**kwargs)
        kwargs = {k: _to_half(v) for k, v in kwargs.items()}
        try:
            return step.fn(**kwargs)
        except RuntimeError as exc:
            if "Half" not in str(exc) and "half" not in str(exc):
                raise
            self.fallbacks.add(step.op_type)
            return step.fn(**{k: _upcast(v) for k, v in kwargs.items()})


def to_dtype(value: Any, dtype: str, native: bool = False, device=None) -> Any:
    """An op result in its declared dtype's storage: fp16 values are rounded to IEEE half
    (kept as float32 tensors unless ``native``); ints truncate toward zero."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, device=device)
    if dtype == "fp16":
        half = value.to(torch.float16)
        return half if native else half.to(torch.float32)
    target = TORCH_DTYPES.get(dtype)
    if target is None or value.dtype == target:
        return value
    if not target.is_floating_point and target != torch.bool and value.is_floating_point():
        value = torch.trunc(value)
    return value.to(target)


def _to_half(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.dim() > 0:
        return v.half()
    if isinstance(v, list):
        return [_to_half(a) for a in v]
    return v


def _upcast(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.dtype == torch.float16:
        return v.float()
    if isinstance(v, list):
        return [_upcast(a) for a in v]
    return v
