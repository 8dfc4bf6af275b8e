"""The `coreml` backend: compile, predict, latency and MLComputePlan through coremltools.
These need macOS (14.4+ for MLComputePlan); elsewhere they skip, saying why."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from pipeline import artifacts
from pipeline.backends import is_macos, resolve_backend
from pipeline.errors import UserError

macos = pytest.mark.skipif(not is_macos(), reason=f"Core ML compile/predict/MLComputePlan need "
                                                  f"macOS; this is {platform.system()}")


def test_auto_backend_is_emulator_off_macos_and_coreml_is_refused_clearly():
    if is_macos():
        assert resolve_backend("auto") == "coreml"
    else:
        assert resolve_backend("auto") == "emulator"
        with pytest.raises(UserError, match="backend 'coreml' needs macOS"):
            resolve_backend("coreml")


@macos
def test_coreml_compile_predict_latency_and_plan(tmp_path, monkeypatch):
    from pipeline.backends import compile_package, compute_plan, coreml_predict, measure_latency
    from tests.conftest import run_variants

    monkeypatch.chdir(tmp_path)
    art = run_variants(tmp_path, "tiny", ("fp32", "fp16", "mixed"), "backend=coreml")
    compiled = compile_package(art / "convert" / "fp32" / "model.mlpackage", tmp_path)
    with np.load(art / "trace" / "inputs.npz") as npz:
        inputs = {k: npz[k] for k in npz.files}
    with np.load(art / "trace" / "reference.npz") as npz:
        ref = npz["image_embeddings"]
    out = coreml_predict(compiled, inputs, "CPU_ONLY")
    assert np.abs(out[0]["image_embeddings"] - ref[0]).max() / np.abs(ref[0]).max() < 1e-3
    lat = measure_latency(compiled, inputs, "ALL", warmup=2, runs=5)
    assert 0 < lat.median_ms <= lat.p90_ms
    rows = compute_plan(compiled, "ALL")
    assert rows and {r["device"] for r in rows} <= {"CPU", "GPU", "NE"}
    m16 = artifacts.read_json(art / "evaluate" / "fp16" / "metrics.json")
    assert m16["latency"]["status"] == "measured"
    assert m16["placement"]["source"].startswith("measured")
    assert m16["accuracy"]["source"].startswith("measured")
