"""FP16 semantics of the emulator: the limit, overflow, subnormals, rounding of a cast; native
mode; CUDA only where present; and a clear stop at an op it does not implement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.backends import coremltools
from pipeline.emulator import Emulator
from pipeline.emulator.runtime import to_dtype
from pipeline.errors import UnsupportedOpError, UserError

ct = coremltools()


def half(values):
    return to_dtype(torch.tensor(values, dtype=torch.float32), "fp16").numpy()


def test_fp16_limit_overflow_and_rounding():
    out = half([65504.0, 65519.0, 65520.0, -70000.0, 1e10])
    assert out[0] == 65504.0 and out[1] == 65504.0          # rounds down below the midpoint
    assert np.isposinf(out[2]) and np.isneginf(out[3]) and np.isposinf(out[4])


def test_fp16_subnormals_and_underflow():
    tiny = 2.0 ** -24                                         # smallest positive subnormal
    out = half([tiny, 1.5 * tiny, 2.0 ** -25, 2.0 ** -26, 6.1e-5])
    assert out[0] == tiny and out[1] == 2 * tiny              # ties to even
    assert out[2] == 0.0 and out[3] == 0.0                    # 2^-25 is a tie: rounds to 0
    assert out[4] == np.float32(np.float16(6.1e-5))


def test_fp16_round_to_nearest_even():
    one_ulp = 2.0 ** -10
    out = half([1 + one_ulp / 2, 1 + 1.5 * one_ulp, 2049.0, 2051.0])
    assert out[0] == 1.0 and out[1] == 1 + 2 * one_ulp
    assert out[2] == 2048.0 and out[3] == 2052.0


def convert(model, x, precision, path):
    traced = torch.jit.trace(model.eval(), x)
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)],
                    outputs=[ct.TensorType(name="y", dtype=np.float32)], convert_to="mlprogram",
                    compute_precision=precision, minimum_deployment_target=ct.target.iOS16)
    ml.save(str(path))
    return path


class Square(torch.nn.Module):
    def forward(self, x):
        return (x * 0.5).pow(2) * 2.0


def test_fp16_program_overflows_where_fp32_does_not(tmp_path):
    x = torch.tensor([[1.0, 300.0, 400.0, -500.0]])
    p16 = convert(Square(), x, ct.precision.FLOAT16, tmp_path / "sq16.mlpackage")
    p32 = convert(Square(), x, ct.precision.FLOAT32, tmp_path / "sq32.mlpackage")
    y16 = Emulator(p16).run({"x": x.numpy()})["y"]
    y32 = Emulator(p32).run({"x": x.numpy()})["y"]
    np.testing.assert_allclose(y32, (x * 0.5).pow(2).numpy() * 2, rtol=1e-6)
    assert y16[0, 0] == 0.5 and y16[0, 1] == 44992.0       # 45000 in FP16 (spacing 32)
    assert np.isposinf(y16[0, 2]) and np.isposinf(y16[0, 3])  # 200^2 = 40000 *2 > 65504


def test_native_fp16_mode_is_close_to_fp32_compute(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
                                torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 16, 16)
    p = convert(model, x, ct.precision.FLOAT16, tmp_path / "c16.mlpackage")
    a = Emulator(p, "fp32_compute").run({"x": x.numpy()})["y"]
    b = Emulator(p, "native_fp16").run({"x": x.numpy()})["y"]
    ref = model(x).detach().numpy()
    assert np.abs(a - ref).max() < 0.02 and np.abs(b - ref).max() < 0.05


def test_unknown_mode_and_missing_cuda_are_clear_errors(tmp_path):
    p = convert(Square(), torch.ones(1, 4), ct.precision.FLOAT32, tmp_path / "s.mlpackage")
    with pytest.raises(UserError, match="unknown emulator mode 'fp8'"):
        Emulator(p, "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            Emulator(p, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(tmp_path):
    p = convert(Square(), torch.ones(1, 4), ct.precision.FLOAT16, tmp_path / "s.mlpackage")
    x = np.array([[1.0, 2.0, 300.0, 400.0]], np.float32)
    np.testing.assert_array_equal(Emulator(p, device="cuda").run({"x": x})["y"],
                                  Emulator(p).run({"x": x})["y"])


def test_an_unimplemented_op_stops_with_its_type_and_name():
    """Every iOS15-iOS18 op runs (test_emulator_coverage.py); a program that still holds a
    converter's dialect op (here the torch frontend's, normally lowered by a pass) stops."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import dialect_ops  # noqa: F401 - registers it

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.torch_upsample_nearest_neighbor(x=x, output_height=8, output_width=8,
                                                  name="up")

    with pytest.raises(UnsupportedOpError) as info:
        Emulator(None, program=prog)
    assert info.value.op_type == "torch_upsample_nearest_neighbor" and info.value.op_name == "up"
    assert "torch_upsample_nearest_neighbor" in info.value.one_line()
