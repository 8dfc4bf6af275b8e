"""FP16 semantics of the emulator: the limit, overflow, subnormals, rounding of a cast; native
mode; CUDA only where present; and a clear stop at an op it does not implement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.coreml_import import coremltools
from pipeline.emulator import Emulator
from pipeline.errors import UnsupportedOpError, UserError

ct = coremltools()


def fp16_program(body, n: int, mode: str = "fp32_compute", device: str = "cpu"):
    """An emulator of a MIL program: FP32 input -> cast to FP16 -> ``body`` (FP16 ops)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec((n,), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        return body(mb, mb.cast(x=x, dtype="fp16"))
    return Emulator(None, mode, device, program=prog)


def emulate_half(values, body=lambda mb, h: mb.identity(x=h), mode="fp32_compute"):
    x = np.array(values, np.float32)
    em = fp16_program(body, len(x), mode)
    return em.run({"x": x})[em.plan.outputs[0]]


EDGES = [65504.0, 65519.0, 65520.0, -70000.0, 1e10, 2.0 ** -24, 1.5 * 2.0 ** -24, 2.0 ** -25,
         2.0 ** -26, 6.1e-5, 1 + 2.0 ** -11, 1 + 1.5 * 2.0 ** -10, 2049.0, 2051.0]


@pytest.mark.parametrize("mode", ["fp32_compute", "native_fp16"])
def test_cast_to_fp16_rounds_like_numpy_half(mode):
    """The emulator's cast (its runtime's FP16 storage) against NumPy's IEEE half."""
    out = emulate_half(EDGES, mode=mode)
    np.testing.assert_array_equal(out, np.array(EDGES, np.float32).astype(np.float16).astype(np.float32))
    assert out[0] == 65504.0 and out[1] == 65504.0 and np.isposinf(out[2])  # limit, overflow
    assert out[5] == 2.0 ** -24 and out[6] == 2.0 ** -23 and out[7] == 0.0  # subnormal ties to even
    assert out[10] == 1.0 and out[12] == 2048.0 and out[13] == 2052.0       # ties to even


@pytest.mark.parametrize("mode", ["fp32_compute", "native_fp16"])
def test_fp16_ops_round_their_output_once_like_numpy_half(mode):
    """Each FP16 op rounds its exact result once, as NumPy's float16 arithmetic does:
    (2050 + 1) * 0.75 is 1539 (the sum rounds to 2052 first; 1538 unrounded), and
    (65504 + 32) * 0.75 is inf (the sum overflows; 49152 unrounded)."""
    a = np.array([2050.0, 300.0, 65504.0, 2.0 ** -20, -3.3], np.float32)
    c = np.array([1.0, 1.0, 32.0, 1.0, 1.0], np.float16)

    def body(mb, h):
        return mb.mul(x=mb.add(x=h, y=c), y=np.float16(0.75))
    out = emulate_half(a, body, mode)
    ref = ((a.astype(np.float16) + c) * np.float16(0.75)).astype(np.float32)
    np.testing.assert_array_equal(out, ref)  # NumPy rounds after each op
    assert out[0] == 1539.0 and np.isposinf(out[2])


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
def test_cuda_fp32_convolution_and_matmul_are_not_tf32():
    """PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa, errors near 1e-3) unless
    told not to: an FP32 program on CUDA must match a float64 reference to FP32 precision."""
    from coremltools.converters.mil import Builder as mb

    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    torch.backends.cuda.matmul.allow_tf32 = True
    rng = np.random.default_rng(0)
    x, w, m = (rng.standard_normal(s).astype(np.float32) for s in ((1, 64, 24, 24), (64, 64, 3, 3), (64, 96)))

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS17)
    def prog(x_in):
        y = mb.conv(x=x_in, weight=w, pad_type="same")
        return y, mb.matmul(x=mb.reshape(x=y, shape=[64 * 24, 24]), y=m[:24])

    em = Emulator(None, device="cuda", program=prog)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    conv, mm = (em.run({"x_in": x})[n] for n in em.plan.outputs)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                     padding=1)
    ref_mm = ref.reshape(64 * 24, 24) @ torch.from_numpy(m[:24]).double()
    assert np.abs(conv - ref.numpy()).max() / np.abs(ref.numpy()).max() < 1e-5
    assert np.abs(mm - ref_mm.numpy()).max() / np.abs(ref_mm.numpy()).max() < 1e-5


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
