"""Models from `transformers` through the pipeline: BERT, ViT, GPT-2 and Llama, each from a
tiny randomly initialised config (conf/model/*_tiny.yaml, no download), trace, convert and
emulate; their FP32 programs match PyTorch to 1e-4 and their FP16 programs run. The torch op
converters the project adds (pipeline/converters/torch_ops.py) are each checked against torch.
End-to-end tests are marked slow (about 1 minute together on 2 cores; they run in `make test`).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import artifacts, models
from pipeline.emulator import Emulator
from pipeline.errors import StageError, UserError
from tests.conftest import make_cfg, run_variants

FAMILIES = ("bert_tiny", "vit_tiny", "gpt2_tiny", "llama_tiny")


def max_rel_errors(art, variant: str, inputs=None, reference=None) -> dict[str, float]:
    """Per output: max |emulated - PyTorch| / max |PyTorch| over all samples."""
    manifest = artifacts.read_json(art / "trace" / "manifest.json")
    if inputs is None:
        with np.load(art / "trace" / "inputs.npz") as inp, \
                np.load(art / "trace" / "reference.npz") as ref:
            inputs, reference = dict(inp), dict(ref)
    emu = Emulator(art / "convert" / variant / "model.mlpackage")
    worst = {name: 0.0 for name in manifest["outputs"]}
    for i in range(len(next(iter(inputs.values())))):
        out = emu.run({k: v[i] for k, v in inputs.items()})
        for name in manifest["outputs"]:
            r = reference[name][i]
            err = np.abs(out[name].astype(np.float64) - r).max() / np.abs(r).max()
            worst[name] = max(worst[name], float(err) if np.isfinite(err) else np.inf)
    return worst


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """model name -> artifacts folder with its trace and its fp32 and fp16 conversions."""
    done = {}

    def get(model: str):
        if model not in done:
            work = tmp_path_factory.mktemp(model)
            done[model] = run_variants(work, model, ("fp32", "fp16"), evaluate=False)
        return done[model]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)
def test_fp32_program_matches_pytorch(converted, model):
    errors = max_rel_errors(converted(model), "fp32")
    print(model, "fp32", errors)
    assert max(errors.values()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)
def test_fp16_program_runs_in_fp16_and_stays_close(converted, model):
    art = converted(model)
    report = artifacts.read_json(art / "convert" / "fp16" / "report.json")
    assert report["ops_by_dtype"].get("fp32", 0) == 0 and report["ops_by_dtype"]["fp16"] > 20
    errors = max_rel_errors(art, "fp16")
    print(model, "fp16", errors)
    # FP16 has an 11-bit significand (unit roundoff 2^-11 = 4.9e-4): errors of a few units
    # after two layers, but well above FP32's
    assert all(1e-5 < e < 2e-2 for e in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert_tiny", "gpt2_tiny", "llama_tiny"])
def test_padding_mask_is_an_input_not_a_trace_time_constant(converted, model):
    """Traced with an all-ones attention mask, the program still follows a padded mask."""
    art = converted(model)
    cfg = make_cfg(art.parent, f"model={model}")
    with np.load(art / "trace" / "inputs.npz") as inp:
        inputs = dict(inp)
    mask = np.ones_like(inputs["attention_mask"])
    mask[0, :, 11:] = 0                  # right padding: 11 tokens, then 5 pad
    mask[1, :, 6:] = 0                   # 6 tokens, then 10 pad
    inputs["attention_mask"] = mask
    torch.manual_seed(int(cfg.model.seed))
    model_ = models.build_model(dict(cfg.model))
    names = artifacts.read_json(art / "trace" / "manifest.json")["outputs"]
    reference = {n: [] for n in names}
    with torch.inference_mode():
        for i in range(len(mask)):
            outs = model_(torch.from_numpy(inputs["input_ids"][i]), torch.from_numpy(mask[i]))
            for n, o in zip(names, outs):
                reference[n].append(o.numpy())
    reference = {n: np.stack(v) for n, v in reference.items()}
    with np.load(art / "trace" / "reference.npz") as ref:  # the padding changes the outputs
        assert np.abs(reference[names[0]] - ref[names[0]]).max() > 1e-2
    assert max(max_rel_errors(art, "fp32", inputs, reference).values()) < 1e-4


@pytest.mark.slow
def test_bert_converts_through_torch_export_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    art = run_variants(tmp_path, "bert_tiny", ("fp32",), "trace.method=export", evaluate=False)
    assert (art / "trace" / "model.pt2").is_file()
    assert max(max_rel_errors(art, "fp32").values()) < 1e-4


@pytest.mark.slow
def test_llama_without_a_mask_uses_grouped_query_attention(tmp_path, monkeypatch):
    """No mask: transformers traces its packed-sequence check (torch.diff) and passes
    enable_gqa=True to scaled_dot_product_attention (4 query heads, 2 key/value heads)."""
    monkeypatch.chdir(tmp_path)
    art = run_variants(tmp_path, "llama_tiny", ("fp32",), "model.args.forward_args=[input_ids]",
                       "model.inputs=[{name: input_ids, shape: [1, 16], dtype: int32, "
                       "range: [0, 999]}]", evaluate=False)
    assert max(max_rel_errors(art, "fp32").values()) < 1e-4


def test_convert_failure_after_export_suggests_jit(tmp_path):
    from pipeline import convert, trace

    overrides = ["model=custom", "model._target_=tests.bad_models.unconvertible", "trace.method=export"]
    trace.run(make_cfg(tmp_path, *overrides))
    with pytest.raises(StageError, match="try trace.method=jit") as info:
        convert.run(make_cfg(tmp_path, *overrides, "precision=fp32"))
    assert "trace.method=export" not in str(info.value)


def test_checkpoint_is_the_transformers_models_own_state_dict(tmp_path):
    cfg = dict(make_cfg(tmp_path, "model=bert_tiny").model)
    trained = models.build_model(cfg).model               # the BertModel inside
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    torch.save(state, tmp_path / "bert.pt")
    loaded = models.build_model({**cfg, "checkpoint": str(tmp_path / "bert.pt")})
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(loaded.model.state_dict()[key], state[key])


# ------------------------------------------------------------------ the converters, one by one

class NewOnes(torch.nn.Module):
    def forward(self, x):
        ones = x.new_ones((2, 3))                             # x's dtype
        flags = x.new_ones((2, 3), dtype=torch.bool) & (x > 0)  # bool
        scalar = x.new_ones((), dtype=torch.bool)             # 0-d, as transformers' masks
        counts = x.new_ones(x.shape, dtype=torch.int32).sum(-1, keepdim=True)
        return x + ones + flags.float() * scalar.float() + counts.float()


class Diff(torch.nn.Module):
    def forward(self, x):
        shifted = torch.diff(x, prepend=x[:, :1] - 1, dim=-1)       # as transformers' masks
        twice = torch.diff(x, n=2, dim=0, append=x[:1])
        flips = torch.diff(x > 0, dim=1)                             # bools: xor
        return shifted + twice.sum() + flips.float().sum(1, keepdim=True)


class GroupedQueryAttention(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                                enable_gqa=True)


def emulated(tmp_path, module, example, target="iOS16"):
    import coremltools as ct

    from pipeline.converters import torch_ops  # noqa: F401  (what the convert stage imports)

    traced = torch.jit.trace(module.eval(), example)
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=f"x{i}", shape=x.shape)
                                         for i, x in enumerate(example)],
                         outputs=[ct.TensorType(name="y")], convert_to="mlprogram",
                         compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=getattr(ct.target, target))
    package = tmp_path / f"{type(module).__name__}_{target}.mlpackage"
    mlmodel.save(str(package))
    out = Emulator(package).run({f"x{i}": x.numpy() for i, x in enumerate(example)})["y"]
    with torch.no_grad():
        return out, module(*example).numpy()


def test_new_ones_follows_torch(tmp_path):
    x = torch.randn(2, 3)
    out, ref = emulated(tmp_path, NewOnes(), (x,))
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-6


def test_diff_follows_torch(tmp_path):
    x = torch.randn(3, 5)
    out, ref = emulated(tmp_path, Diff(), (x,))
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])   # decomposed, and the fused iOS18 op
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_repeats_key_value_heads(tmp_path, target, causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out, ref = emulated(tmp_path, GroupedQueryAttention(causal), (q, k, v), target)
    # against torch's own definition too: key/value heads repeated with repeat_interleave
    with torch.no_grad():
        by_hand = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=causal).numpy()
    assert np.abs(ref - by_hand).max() < 1e-6
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


# ------------------------------------------------------------------ integer input ranges

def bert_inputs_with(tmp_path, range_, samples=2):
    cfg = make_cfg(tmp_path, "model=bert_tiny", f"model.samples={samples}")
    model_cfg = dict(cfg.model)
    model_cfg["inputs"] = [{**dict(model_cfg["inputs"][0]), "range": range_},
                           *model_cfg["inputs"][1:]]
    return models.make_inputs(model_cfg)


def test_integer_input_without_a_range_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="integer input 'input_ids' has no range"):
        bert_inputs_with(tmp_path, None)


def test_integer_range_includes_both_ends_and_nothing_outside(tmp_path):
    ids = bert_inputs_with(tmp_path, [3, 5], samples=64)["input_ids"]
    assert ids.dtype == np.int32 and set(np.unique(ids).tolist()) == {3, 4, 5}
    with pytest.raises(UserError, match="is not \\[low, high\\]"):
        bert_inputs_with(tmp_path, [5, 3])
