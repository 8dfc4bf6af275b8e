"""Stateful and looping models from PyTorch, converted by coremltools and emulated: a KV cache
kept in Core ML state across calls (iOS18, ct.StateType), and a GRU that coremltools
converts to a while_loop. Both must match PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.coreml_import import coremltools
from pipeline.emulator import Emulator

ct = coremltools()
D, T = 8, 6


class SlidingKVCache(torch.nn.Module):
    """One attention step per call over the last T tokens; keys and values live in buffers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, T, D))
        self.register_buffer("v_cache", torch.zeros(1, T, D))
        self.q, self.k, self.v = (torch.nn.Linear(D, D) for _ in range(3))

    def forward(self, x):  # x: [1, 1, D], the new token
        self.k_cache[:, :-1] = self.k_cache[:, 1:].clone()
        self.k_cache[:, -1:] = self.k(x)
        self.v_cache[:, :-1] = self.v_cache[:, 1:].clone()
        self.v_cache[:, -1:] = self.v(x)
        att = torch.softmax(self.q(x) @ self.k_cache.transpose(1, 2) / D ** 0.5, -1)
        return att @ self.v_cache


@pytest.mark.slow
def test_kv_cache_state_matches_pytorch_over_calls(tmp_path):
    torch.manual_seed(0)
    model = SlidingKVCache().eval()
    traced = torch.jit.trace(model, torch.zeros(1, 1, D))
    model.k_cache.zero_()  # tracing ran one step; start PyTorch from the empty cache too
    model.v_cache.zero_()
    cache = ct.TensorType(shape=(1, T, D), dtype=np.float16)  # Core ML states are FP16
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 1, D), dtype=np.float32)],
                    states=[ct.StateType(wrapped_type=cache, name="k_cache"),
                            ct.StateType(wrapped_type=cache, name="v_cache")],
                    outputs=[ct.TensorType(name="y", dtype=np.float32)],
                    minimum_deployment_target=ct.target.iOS18,
                    compute_precision=ct.precision.FLOAT32)
    ml.save(str(tmp_path / "kv.mlpackage"))
    emulator = Emulator(tmp_path / "kv.mlpackage")
    assert set(emulator.plan.states) == {"k_cache", "v_cache"}
    xs = [torch.randn(1, 1, D) for _ in range(T + 3)]  # past the window: old tokens drop out
    with torch.no_grad():
        ref = [model(x).numpy() for x in xs]
    got = [emulator.run({"x": x.numpy()})["y"] for x in xs]
    for r, g in zip(ref, got):
        # the caches are stored in FP16 (2^-11 relative); PyTorch keeps them in FP32
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-3 * max(1.0, np.abs(r).max()))
    assert np.abs(got[0] - got[1]).max() > 1e-2  # each call sees the cache the last one left
    np.testing.assert_allclose(emulator.state["k_cache"].value.cpu().numpy()[0, -1],
                               model.k_cache[0, -1].detach().numpy(), atol=2e-3)
    emulator.reset_state()
    np.testing.assert_array_equal(emulator.run({"x": xs[0].numpy()})["y"], got[0])


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(3, 4, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


@pytest.mark.slow
def test_gru_converted_to_a_while_loop_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = Recurrent().eval()
    x = torch.randn(2, 5, 3)
    ml = ct.convert(torch.jit.trace(model, x),
                    inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)],
                    outputs=[ct.TensorType(name="y", dtype=np.float32)],
                    minimum_deployment_target=ct.target.iOS17,
                    compute_precision=ct.precision.FLOAT32)
    ml.save(str(tmp_path / "gru.mlpackage"))
    emulator = Emulator(tmp_path / "gru.mlpackage")
    counts = emulator.plan.op_types()
    assert counts["while_loop"] == 1 and counts["linear"] >= 6  # the loop body's ops counted
    x2 = torch.randn(2, 5, 3)
    for inp in (x, x2):
        with torch.no_grad():
            ref = model(inp).numpy()
        np.testing.assert_allclose(emulator.run({"x": inp.numpy()})["y"], ref, rtol=1e-5, atol=1e-6)
