"""Execute a saved Core ML program op by op, each op in the dtype the program declares.

Numerics (see README, "The emulator", and pipeline/emulator/numerics/):
- ``device`` (default in the pipeline): each FP16 op computes what the unit it is placed on
  computes (numerics/profiles/ne.yaml, gpu.yaml, cpu.yaml); set per step at plan build time
  by numerics.apply, which overrides the step's implementation and FP16 output store.
Runtime modes underneath:
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

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.coreml_import import coremltools, quiet
from pipeline.emulator import fp16_pass
from pipeline.emulator.ops import OPS, VALUE_PRESERVING, kernel
from pipeline.emulator.ops.states import State
from pipeline.errors import UnsupportedOpError, UserError

log = logging.getLogger(__name__)

TORCH_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64, "int32": torch.int32,
    "int64": torch.int64, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "uint16": torch.int32, "bool": torch.bool,
}
FLOAT = {"fp32", "fp16", "fp64"}
MODES = ("fp32_compute", "native_fp16")
NUMERICS_MODES = ("device", "ieee")  # also accepted by Emulator(mode=...): see numerics/


_LOADED: dict[tuple, Any] = {}  # package files' (path, mtime, size) -> its program


def load_program(package: str | Path):
    """The MIL program of a saved .mlpackage, through coremltools' own loader. A package
    loaded before in this process, and unchanged since, is not parsed again (evaluate places,
    emulates and diagnoses the same package)."""
    package = Path(package)
    if not package.exists():
        raise UserError(f"no Core ML package at {package}", "run the convert stage first")
    stamp = (str(package.resolve()),) + tuple(
        (str(f), f.stat().st_mtime_ns, f.stat().st_size)
        for f in sorted(package.rglob("*")) if f.is_file())
    if stamp not in _LOADED:
        if len(_LOADED) >= 2:  # a stage reads one variant and its FP32 reference
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[stamp] = _parse_program(package)
    return _LOADED[stamp]


def _parse_program(package: Path):
    log.info("reading %s with coremltools' MIL loader", package.name if package.name !=
             "model.mlpackage" else package.parent.name + "/" + package.name)
    ct = coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    with quiet():
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
        try:
            return str(var.dtype)
        except ValueError:  # a list var has no dtype
            return "list"


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
    blocks: tuple = ()  # sub-plans of the op's nested blocks (cond, while_loop)
    numerics: str = "ieee"  # the profile this op runs under (numerics.apply)
    store: Callable[[Any], Any] | None = None  # FP16 output store of that profile (None: IEEE)
    base_fn: Callable[..., Any] | None = None  # the IEEE implementation, when fn is overridden


@dataclass
class Plan:
    steps: list[Step]
    consts: dict[str, Any]
    const_dtypes: dict[str, str]
    inputs: dict[str, tuple[str, tuple[int, ...]]]
    outputs: list[str]
    free_after: dict[int, list[str]] = field(default_factory=dict)
    states: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    opset: int = 0  # the program's opset (coremltools' AvailableTarget value: iOS17 = 8)

    def op_types(self) -> dict[str, int]:
        """Op counts by type, the ops inside nested blocks included."""
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.op_type] = counts.get(s.op_type, 0) + 1
            for block in s.blocks:
                for op_type, n in block.op_types().items():
                    counts[op_type] = counts.get(op_type, 0) + n
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
    """Turn a MIL function into a list of steps (nested blocks into sub-plans); fail fast on
    unknown ops."""
    from coremltools.converters.mil.mil import types

    func = prog.functions["main"]
    opset = int(getattr(func, "opset_version", None) or 0)
    consts: dict[str, Any] = {}
    const_dtypes: dict[str, str] = {}
    var_dtypes: dict[str, str] = {n: dtype_str(v) for n, v in func.inputs.items()}
    steps = _block_steps(func, consts, const_dtypes, var_dtypes, device, mode, opset)
    consts.pop(_RAW, None)  # the NumPy copies of decompressed weights: folding is done
    shapes = {n: (dtype_str(v), tuple(int(s) for s in v.shape)) for n, v in func.inputs.items()}
    states = {n: shapes[n] for n, v in func.inputs.items() if types.is_state(v.sym_type)}
    inputs = {n: spec for n, spec in shapes.items() if n not in states}
    outputs = [v.name for v in func.outputs]
    plan = Plan(steps, consts, const_dtypes, inputs, outputs, states=states, opset=opset)
    plan.free_after = _last_uses(plan)
    return plan


def _block_steps(block, consts, const_dtypes, var_dtypes, device, mode, opset) -> list[Step]:
    steps: list[Step] = []
    for op in block.operations:
        outs = list(op.outputs)
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            # constexpr_* (compressed weights) fold once, by the emulator's own kernels
            vals = [v.val for v in outs] if op.op_type == "const" else \
                _fold(op, consts.setdefault(_RAW, {}))
            for v, val in zip(outs, vals):
                consts[v.name] = _const_value(val, dtype_str(v), device, mode)
                const_dtypes[v.name] = dtype_str(v)
            continue
        if op.op_type not in OPS:
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
        blocks = tuple(_sub_plan(b, consts, const_dtypes, var_dtypes, device, mode, opset)
                       for b in op.blocks)
        dtypes = [dtype_str(v) for v in outs]
        for v, d in zip(outs, dtypes):
            var_dtypes[v.name] = d
        preserving = op.op_type in VALUE_PRESERVING and all(
            (var_dtypes.get(n) or const_dtypes.get(n)) == "fp16" for n in float_inputs)
        steps.append(Step(len(steps), op.op_type, op.name, kernel(op.op_type, opset), args,
                          [v.name for v in outs], dtypes, float_inputs, not preserving,
                          blocks=blocks))
    return steps


def _shape(var) -> tuple:
    try:
        return tuple(var.shape)
    except ValueError:  # a list var has no shape
        return ()


_RAW = "@constexpr"  # consts key: NumPy values of constexpr outputs, for chained constexpr ops


def _fold(op, raw: dict[str, Any]) -> list[Any]:
    kwargs = {p: raw[v.name] if v.val is None and v.name in raw else v.val
              for p, v in op.inputs.items()}
    vals = OPS[op.op_type](**kwargs)
    vals = list(vals) if isinstance(vals, tuple) else [vals]
    raw.update({v.name: val for v, val in zip(op.outputs, vals)})
    return vals


def _sub_plan(block, consts, const_dtypes, var_dtypes, device, mode, opset) -> Plan:
    """A nested block (a cond branch, a loop's condition or body) as a plan that shares the
    program's consts; its inputs are the block's inputs (the loop variables)."""
    inputs = {v.name: (dtype_str(v), _shape(v)) for v in block.inputs}
    var_dtypes.update({n: d for n, (d, _) in inputs.items()})
    steps = _block_steps(block, consts, const_dtypes, var_dtypes, device, mode, opset)
    sub = Plan(steps, consts, const_dtypes, inputs, [v.name for v in block.outputs], opset=opset)
    sub.free_after = _last_uses(sub, local={n for s in steps for n in s.outputs})
    return sub


def virtual_mixed(plan: Plan, keep_fp32: set[str], mode: str,
                  half_consts: dict[str, Any] | None = None,
                  pass_rules: dict[str, Any] | None = None) -> Plan:
    """A plan of the FP32 program as coremltools' FP16 pass makes it with the ops in
    ``keep_fp32`` left FP32 (the pass's rules: pipeline/emulator/fp16_pass.py, by op name in
    ``pass_rules``). ``half_consts`` keeps the FP16 copies of weights between calls."""
    native = mode == "native_fp16"
    half_consts = {} if half_consts is None else half_consts
    pass_rules = {} if pass_rules is None else pass_rules
    consts = dict(plan.consts)
    const_dtypes = dict(plan.const_dtypes)
    effective: dict[str, str] = {n: d for n, (d, _) in plan.inputs.items()}
    # the pass sees each op's inputs as the FP32 program has them (a transformed producer's
    # output is cast back to FP32 for it): decide and cast by the original dtypes
    original = dict(effective) | {n: d for s in plan.steps for n, d in zip(s.outputs, s.dtypes)}

    def dtype_of(n: str) -> str | None:
        return plan.const_dtypes.get(n) if n in plan.consts else original.get(n)

    steps = []
    for step in plan.steps:
        rule = pass_rules.get(step.name)
        if step.name in keep_fp32 or not fp16_pass.transforms(rule, step.args, dtype_of):
            for name, d in zip(step.outputs, step.dtypes):
                effective[name] = d
            steps.append(step)
            continue
        args, rounds, float_inputs = [], set(), []
        for param, kind, payload in step.args:
            names = payload if kind == 2 else [payload]
            renamed = []
            for n in names:
                cast = param in rule.castable and dtype_of(n) == "fp32"
                if cast and n in consts and isinstance(consts[n], torch.Tensor):
                    half = n + "@fp16"
                    if half not in half_consts:
                        half_consts[half] = fp16_pass.half_const_as(consts[n], native)
                    consts[half] = half_consts[half]
                    const_dtypes[half] = "fp16"
                    renamed.append(half)
                    float_inputs.append(half)
                else:
                    if cast:
                        rounds.add(n)
                    if (const_dtypes.get(n) if n in consts else effective.get(n)) in FLOAT:
                        float_inputs.append(n)
                    renamed.append(n)
            args.append((param, kind, renamed if kind == 2 else renamed[0]))
        dtypes = ["fp16" if d == "fp32" else d for d in step.dtypes]
        for name, d in zip(step.outputs, dtypes):
            effective[name] = d
        preserving = step.op_type in VALUE_PRESERVING
        steps.append(Step(step.index, step.op_type, step.name, step.base_fn or step.fn, args,
                          step.outputs, dtypes, float_inputs, not preserving, frozenset(rounds),
                          step.blocks))
    # nested blocks (loop bodies, branches) stay as converted: cond and while_loop are skipped
    out = Plan(steps, consts, const_dtypes, plan.inputs, plan.outputs, states=plan.states,
               opset=plan.opset)
    out.free_after = _last_uses(out)
    return out


def _uses(step: Step) -> set[str]:
    """The names a step reads, its nested blocks' reads of outer names included."""
    names = {n for _, kind, payload in step.args for n in (payload if kind == 2 else [payload])}
    for block in step.blocks:
        inner = {n for s in block.steps for n in _uses(s)} | set(block.outputs)
        names |= inner - set(block.inputs) - {n for s in block.steps for n in s.outputs}
    return names


def _last_uses(plan: Plan, local: set[str] | None = None) -> dict[int, list[str]]:
    """Names to drop after each step: their last reader ran. In a sub-plan only names the
    block defines itself (``local``); the enclosing plan owns the rest."""
    last: dict[str, int] = {}
    for step in plan.steps:
        for name in _uses(step):
            if name not in plan.consts and (local is None or name in local):
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
    """Runs one saved .mlpackage (or an in-memory MIL program). ``run(feeds)`` maps input
    names to arrays; a stateful program keeps its state between calls (see make_state)."""

    def __init__(self, package: str | Path | None, mode: str = "fp32_compute",
                 device: str = "cpu", program=None, numerics=None):
        """``package``: a saved .mlpackage; or ``program``: an in-memory MIL program (as
        coremltools' Builder makes it), with ``package`` None. ``numerics``: per-op device
        numerics (pipeline/emulator/numerics); None: ``mode`` alone."""
        from pipeline.emulator.numerics import LEGACY, Numerics

        if numerics is None:
            if mode not in MODES + NUMERICS_MODES:
                raise UserError(f"unknown emulator mode '{mode}'",
                                f"choose one of: {', '.join(MODES + NUMERICS_MODES)}")
            numerics = Numerics(LEGACY.get(mode, mode))
        self.numerics = numerics
        mode = numerics.runtime_mode
        self.mode = mode
        self.device = resolve_device(device)
        self.package = Path(package) if package is not None else None
        self.program = program if program is not None else load_program(self.package)
        self.plan = build_plan(self.program, self.device, mode)
        self._records = None  # the program's op records (pipeline/programs), when placed
        self._apply(self.plan)
        self.fallbacks: set[str] = set()
        self._half_consts: dict[str, Any] = {}  # FP16 weight copies for with_fp16_except
        self._pass_rules: dict[str, Any] | None = None  # the FP16 pass's rule for each op
        self.state: dict[str, State] | None = None  # created by the first stateful run
        if self.device.type == "cuda":
            # FP32 means FP32: PyTorch lets cuDNN convolutions (and, if set, matmuls) use TF32
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        threads = os.environ.get("PIPELINE_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))

    def _apply(self, plan: Plan, virtual: bool = False) -> None:
        """Per-op numerics. Each op's unit: ``numerics.units`` when given (the evaluate stage
        passes its backend's placement table), else the device model's placement of this
        program, or of the virtual mixed program (its FP32 ops leave the Neural Engine)."""
        from pipeline.emulator.numerics import apply

        num, units = self.numerics, None
        if num.per_op and not num.profile and (virtual or num.units is None):
            from pipeline.programs import op_records, virtual_records

            if self._records is None:
                self._records = op_records(self.program)
            records = self._records
            if virtual:
                records = virtual_records(records, {s.name: s.dtypes[0] for s in plan.steps
                                                    if s.dtypes})
            units = apply.units_for(records, num.compute_units, num.chip)
        apply.apply(plan, num, units)

    # -- values ------------------------------------------------------------------------
    def _store(self, value: Any, dtype: str) -> Any:
        if isinstance(value, torch.Tensor) and value.device != self.device:
            value = value.to(self.device)  # ops that draw or build on the CPU (random, nms)
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
        if self._pass_rules is None:
            self._pass_rules = fp16_pass.rules(self.program)
        view.plan = virtual_mixed(self.plan, keep_fp32, self.mode, self._half_consts,
                                  self._pass_rules)
        self._apply(view.plan, virtual=True)
        view.fallbacks = set()
        return view

    # -- state (iOS18 stateful programs: ct.StateType, read_state / coreml_update_state) -----
    def make_state(self) -> dict[str, State]:
        """Fresh state buffers, zero-filled as Core ML's MLModel.makeState() allocates them
        (developer.apple.com/documentation/coreml/mlmodel/makestate())."""
        return {name: State(self._store(torch.zeros(shape, device=self.device), dtype))
                for name, (dtype, shape) in self.plan.states.items()}

    def reset_state(self) -> None:
        """Start the emulator-held state (used when ``run`` gets no ``state``) from zeros."""
        self.state = self.make_state()

    # -- execution ---------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, feeds: dict[str, Any], observe: Observer | None = None,
            state: dict[str, State] | None = None) -> dict[str, np.ndarray]:
        """One prediction. A stateful program reads and updates ``state`` in place (from
        ``make_state()``), or the emulator's own state when none is given."""
        env = self.feed(feeds)
        if self.plan.states:
            if state is None:
                if self.state is None:
                    self.reset_state()
                state = self.state
            env.update({name: state[name] for name in self.plan.states})
        self._run_steps(self.plan, env, observe)
        return {name: _output(env[name]) for name in self.plan.outputs}

    def _run_steps(self, plan: Plan, env: dict[str, Any], observe: Observer | None) -> None:
        consts = plan.consts
        native = self.mode == "native_fp16"
        for step in plan.steps:
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
            if step.blocks:
                kwargs["blocks"] = [self._block_runner(b, env) for b in step.blocks]
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
                if step.store is not None and dtype == "fp16" and isinstance(value, torch.Tensor) \
                        and value.is_floating_point():
                    env[name] = step.store(value)
                elif dtype == "fp16" and not step.round_output and isinstance(value, torch.Tensor) \
                        and value.dtype == (torch.float16 if native else torch.float32):
                    env[name] = value
                else:
                    env[name] = self._store(value, dtype)
                stored.append(env[name])
            if observe is not None:
                observe(step, stored)
            for name in plan.free_after.get(step.index, ()):
                env.pop(name, None)

    def _block_runner(self, block: Plan, env: dict[str, Any]) -> Callable[..., list[Any]]:
        """A nested block as a function of its inputs (loop variables) returning its outputs;
        it reads outer values from ``env``. Ops inside blocks are not observed."""
        def run_block(*values: Any) -> list[Any]:
            for (name, (dtype, _)), value in zip(block.inputs.items(), values):
                env[name] = self._store(value, dtype)
            self._run_steps(block, env, None)
            return [block.consts[n] if n in block.consts else env[n] for n in block.outputs]
        return run_block

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
        if dtype not in TORCH_DTYPES and dtype not in FLOAT:  # a MIL list or state: as is
            return value
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


def _output(value: Any) -> Any:
    """A program output as NumPy (floats as float32); a classifier's label or dict as is."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()


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
