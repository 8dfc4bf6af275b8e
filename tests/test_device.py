"""The device model (pipeline/device): placement against published Core ML placements,
latency properties, the article's numbers and the leave-one-family-out validation, from real
coremltools conversions (small graphs here; the calibration set from its committed records)."""
from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from pipeline.device import CHIPS, COMPUTE_UNITS, estimate
from pipeline.device import calibrate, features
from pipeline.device.cost import Params
from pipeline.errors import UserError


def convert(module: nn.Module, *shapes, tmp_path) -> list:
    """Real torch.jit.trace + coremltools FP16 conversion, then the saved program's ops."""
    import coremltools as ct
    import numpy as np

    from pipeline.coreml_import import quiet
    from pipeline.programs import read_ops

    examples = [torch.randn(s) for s in shapes]
    traced = torch.jit.trace(module.eval(), tuple(examples))
    with quiet():
        ml = ct.convert(traced, inputs=[ct.TensorType(name=f"x{i}", shape=s, dtype=np.float32)
                                        for i, s in enumerate(shapes)],
                        convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                        minimum_deployment_target=ct.target.iOS16)
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.mlpackage"
    ml.save(str(path))
    return read_ops(path)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.n2(x))


class Matmul(nn.Module):
    def forward(self, x, y):
        return x @ y


def ne_share(est) -> float:
    return sum(o.device == "NE" for o in est.ops) / len(est.ops)


@pytest.fixture(scope="module")
def transformers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tf")
    torch.manual_seed(0)
    small = convert(nn.Sequential(*(Block(128, 4) for _ in range(2))), (1, 64, 128), tmp_path=tmp)
    large = convert(nn.Sequential(*(Block(384, 6) for _ in range(6))), (1, 64, 384), tmp_path=tmp)
    return small, large


@pytest.mark.parametrize("chip", ["M1", "M2", "M4"])
def test_small_transformer_on_cpu_large_on_ne(transformers, chip):
    # ask-meridian.uk, "eligibility is not placement" (coremltools 9.0, CPU_AND_NE): 2 layers x
    # 128 wide ran 0 of 77 ops on the NE; 6 layers x 384 wide ran 217 of 217 on it.
    small, large = transformers
    s, big = estimate(small, chip, "CPU_AND_NE"), estimate(large, chip, "CPU_AND_NE")
    assert ne_share(s) <= 0.2, s.summary()
    assert ne_share(big) >= 0.9, big.summary()


@pytest.mark.parametrize("n,unit", [(4, "CPU"), (384, "CPU"), (512, "NE")])
def test_fp16_matmul_placement(tmp_path, n, unit):
    # Vx issues 435/436 (M4): FP16 matmul on the NE at 512x512, on the CPU at <= 384 and at 4x4.
    ops = convert(Matmul(), (n, n), (n, n), tmp_path=tmp_path)
    est = estimate(ops, "M4", "CPU_AND_NE")
    mm = [o for o in est.ops if o.op_type == "matmul"]
    assert len(mm) == 1 and mm[0].device == unit, est.rows()


@pytest.fixture(scope="module")
def calibration_set():
    return features.read_ops_file()


def test_fp32_never_on_ne_and_unit_sets_respected(calibration_set):
    fp32 = calibration_set["edgesam_encoder/fp32"]
    mixed = calibration_set["edgesam_encoder/mixed"]
    for units in COMPUTE_UNITS:
        for ops in (fp32, mixed):
            est = estimate(ops, "M2", units)
            assert not [o for o in est.ops if o.dtype == "fp32" and o.op_type != "cast"
                        and o.device == "NE"]
    assert {o.device for o in estimate(mixed, "M2", "CPU_ONLY").ops} == {"CPU"}
    assert "NE" not in {o.device for o in estimate(mixed, "M2", "CPU_AND_GPU").ops}
    assert "GPU" not in {o.device for o in estimate(mixed, "M2", "CPU_AND_NE").ops}


def test_article_numbers_on_m2(calibration_set):
    # Source article (M2, ALL): FP16 12.19 ms, FP32 36.05 ms (all on the GPU), mixed 12.63 ms.
    est = {v: estimate(calibration_set[f"edgesam_encoder/{v}"], "M2", "ALL")
           for v in ("fp16", "fp32", "mixed")}
    for v, ms in (("fp16", 12.19), ("fp32", 36.05), ("mixed", 12.63)):
        assert abs(est[v].latency_ms / ms - 1) <= 0.25, (v, est[v].summary())
    assert 1.0 <= est["mixed"].latency_ms / est["fp16"].latency_ms <= 1.15
    assert est["fp32"].summary()["gpu_op_share"] >= 0.9
    assert est["fp16"].summary()["ne_op_share"] >= 0.9
    assert "estimated" in est["fp16"].source and "M2" in est["fp16"].source
    rows = est["mixed"].rows()
    assert {"op", "op_type", "dtype", "device", "supported", "cost", "ms"} <= set(rows[0])
    names = {r.name for r in calibration_set["edgesam_encoder/mixed"]}
    assert all(r["op"] in names for r in rows)
    assert abs(sum(r["cost"] for r in rows) - 1.0) < 1e-3
    pow_rows = [r for r in rows if r["op_type"] == "pow"]   # the article: pow on the CPU
    assert pow_rows and all(r["device"] == "CPU" and r["dtype"] == "fp32" for r in pow_rows)


def test_latency_grows_with_size_and_every_chip_works(calibration_set):
    sizes = ["repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3"]
    for chip in CHIPS:
        lat = [estimate(calibration_set[f"{m}/fp16"], chip).latency_ms for m in sizes]
        assert lat == sorted(lat), (chip, lat)
    fast = estimate(calibration_set["efficientformer_l7/fp16"], "M4")
    slow = estimate(calibration_set["efficientformer_l7/fp16"], "A14")
    assert fast.latency_ms < slow.latency_ms
    assert "no published M4 measurement" in fast.source and "no published" not in slow.source


def test_leave_one_family_out_beats_baseline():
    # Each left-out family is predicted by a fresh fit on the others (started from the
    # committed fit to save iterations; the objective pulls towards the priors, not to it).
    rows, progs = calibrate.load_set()
    v = calibrate.validate(rows, progs, Params.load())
    assert v["median_abs_error"] <= 0.25, v["median_abs_error"]
    assert v["spearman"] >= 0.9, v["spearman"]
    assert v["model_median_abs_error_on_baseline_rows"] < v["baseline_median_abs_error"]


def test_unknown_chip_and_units_are_user_errors(calibration_set):
    ops = calibration_set["resnet50/fp16"]
    with pytest.raises(UserError, match="unknown chip 'M9'.*A14"):
        estimate(ops, "M9")
    with pytest.raises(UserError, match="unknown compute units 'NE_ONLY'.*CPU_AND_NE"):
        estimate(ops, "M2", "NE_ONLY")


@pytest.mark.slow
def test_fresh_conversion_reproduces_committed_records(calibration_set):
    # The committed records are what coremltools makes of the architecture today.
    fresh = features.convert_ops("mobilenetv2_1_0", "fp16")
    assert features.to_json(fresh) == features.to_json(calibration_set["mobilenetv2_1_0/fp16"])
