"""precision=auto predicts what the conversion makes: the emulator's virtual FP16/mixed program
(built from the FP32 program by pipeline/emulator/fp16_pass.py) gives bit for bit the outputs
of the emulated package that coremltools' own FP16 pass makes, for every built-in model and
three deployment targets. The reference is the real conversion; only the pass differs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import artifacts, precision
from pipeline.emulator import Emulator
from pipeline.emulator import fp16_pass
from tests.conftest import make_cfg

# small inputs: the rules do not depend on the size (edgesam at 64x64 instead of 1024x1024)
MODELS = {
    "tiny": ["model.data.count=1"],
    "edgesam": ["model.inputs=[{name: image, shape: [1, 3, 64, 64], dtype: float32}]",
                "model.data.count=1"],
    "minilm": [],
    "custom": [],
    "bert_tiny": ["model.samples=1"],
    "vit_tiny": [],
    "gpt2_tiny": ["model.samples=1"],
    "llama_tiny": ["model.samples=1"],
}
TARGETS = ("iOS16", "iOS17", "iOS18")
# edgesam is tiny at full width: the same op types in the same graph, so the other targets
# would repeat tiny's cases at 4x the cost; it runs at the pipeline's default target only
CASES = [(m, t) for m in MODELS for t in TARGETS if m != "edgesam" or t == "iOS16"]


def test_underflowing_constant_is_stored_as_the_smallest_subnormal():
    """coremltools' _check_underflow_to_zero: 1e-12 -> 2^-24 in small arrays, 0 stays 0, a
    value that FP16 can hold is rounded as usual, large arrays underflow to 0."""
    small = torch.tensor([1e-12, -1e-12, 0.0, 1e-3], dtype=torch.float32)
    got = fp16_pass.half_const(small)
    assert got.tolist() == [2.0 ** -24, -(2.0 ** -24), 0.0, float(np.float16(1e-3))]
    big = torch.full((400,), 1e-12)
    assert float(fp16_pass.half_const(big).abs().max()) == 0.0


@pytest.fixture(scope="module")
def traced_models(tmp_path_factory):
    from pipeline import trace

    cache = {}

    def get(model):
        if model not in cache:
            work = tmp_path_factory.mktemp(model)
            trace.run(make_cfg(work, f"model={model}", *MODELS[model]))
            trace_dir, manifest = artifacts.read_trace(work / "artifacts")
            cache[model] = (trace_dir, manifest)
        return cache[model]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("model,target", CASES)
def test_virtual_program_is_bit_exact_with_the_conversion(traced_models, model, target):
    from pipeline.conversion import convert_program, load_traced

    trace_dir, manifest = traced_models(model)
    traced = load_traced(trace_dir, manifest)
    inputs = artifacts.read_npz(trace_dir / "inputs.npz")
    feeds = {k: v[0] for k, v in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        keep_all = precision.PrecisionSpec("fp32", "mixed", fp32_names=("*",))
        ml32, recorder, _ = convert_program(traced, manifest, keep_all, target)
        ml32.save(str(Path(tmp) / "fp32.mlpackage"))
        fp32 = Emulator(Path(tmp) / "fp32.mlpackage")
        seen = [precision.sanitize(n) for _, n in recorder.state.seen]
        keep = seen[1::3]  # a mixed set: every third op the selector sees
        for label, spec, names in [
                ("fp16", precision.PrecisionSpec("fp16", "fp16"), set()),
                ("mixed", precision.PrecisionSpec("m", "mixed", fp32_names=tuple(
                    "re:" + __import__("re").escape(n) for n in keep)), set(keep))]:
            ml, _, _ = convert_program(traced, manifest, spec, target)
            ml.save(str(Path(tmp) / f"{label}.mlpackage"))
            want = Emulator(Path(tmp) / f"{label}.mlpackage").run(feeds)
            got = fp32.with_fp16_except(names).run(feeds)
            for out in want:
                same = np.array_equal(got[out], want[out], equal_nan=True)
                diff = float(np.nanmax(np.abs(got[out] - want[out]))) if not same else 0.0
                assert same, f"{model} {target} {label} {out}: max |diff| {diff}"


@pytest.mark.parametrize("target", ["iOS16", "iOS17"])
def test_rules_transform_the_ops_coremltools_pass_transforms(target):
    """On a small program, the ops the rules say the pass rewrites are those coremltools'
    FP16ComputePrecision rewrites (it renames them *_cast_fp16): an FP32 const beyond 65504
    keeps `mul` FP32, `greater` (bool output) is chosen by its FP32 inputs, and from iOS17
    elu's alpha is not cast."""
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    def build():
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))],
                    opset_version=getattr(ct.target, target))
        def prog(x):
            big = mb.mul(x=x, y=np.float32(1e5), name="big")
            small = mb.add(x=x, y=np.float32(1.0), name="small")
            act = mb.elu(x=small, alpha=np.float32(0.5), name="act")
            mask = mb.greater(x=act, y=np.float32(0.1), name="mask")
            return big, mb.select(cond=mask, a=act, b=big, name="out")
        return prog

    rules = fp16_pass.rules(build())
    assert rules["big"].valid is False and rules["small"].valid is True
    assert ("alpha" in rules["act"].castable) is (target == "iOS16")
    prog = build()
    FP16ComputePrecision(op_selector=lambda op: True).apply(prog)
    rewritten = {op.name[: -len("_cast_fp16")] for op in prog.functions["main"].operations
                 if op.name.endswith("_cast_fp16")}
    assert rewritten == {"small", "act", "mask", "out"}
    assert {n for n, r in rules.items() if r.valid} == rewritten
    elu = next(op for op in prog.functions["main"].operations if op.op_type == "elu")
    from pipeline.emulator.runtime import dtype_str
    assert dtype_str(elu.alpha) == ("fp32" if target == "iOS17" else "fp16")
