"""Variant slots: params.yaml names slots (fp32, fp16, mixed, auto); each model config maps a
slot to its own precision config (model.variants), so switching models never inherits another
model's list, and a model's mixed variant always lands in artifacts/*/mixed."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import CONF_DIR, REPO_ROOT, group_options, load_config, model_section
from pipeline.errors import UserError


def test_a_slot_means_the_models_own_config():
    cfg = load_config(["model=minilm", "precision=mixed"])
    assert cfg.precision.name == "mixed" and cfg.precision.config == "mixed_layernorm"
    assert list(cfg.precision.fp32_ops) == ["layer_norm"] and not cfg.precision.fp32_regions
    article = load_config(["model=tiny", "precision=mixed"])
    assert article.precision.config is None and article.precision.fp32_regions[0].start == "pow"
    # the user's own name wins; the mapping can be turned off for one run
    assert load_config(["model=minilm", "precision=mixed", "precision.name=mine"]).precision.name == "mine"
    off = load_config(["model=minilm", "precision=mixed", "model.variants.mixed=mixed"])
    assert off.precision.fp32_regions[0].start == "pow"


def test_every_model_maps_every_slot_of_params_yaml_to_a_config():
    slots = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["variants"]
    precisions = set(group_options("precision"))
    for model in group_options("model"):
        for slot in slots:
            cfg = load_config([f"model={model}", f"precision={slot}"])
            assert cfg.precision.name == slot
            assert (cfg.precision.config or slot) in precisions


def test_the_mapping_is_not_part_of_the_traced_model():
    a = model_section(load_config(["model=minilm"]))
    b = model_section(load_config(["model=minilm", "model.variants.mixed=mixed"]))
    assert a == b and "variants" not in a


def test_a_mapping_to_a_missing_config_is_one_line():
    with pytest.raises(UserError) as info:
        load_config(["model=minilm", "precision=mixed", "model.variants.mixed=nope"])
    line = info.value.one_line()
    assert "unknown precision 'nope' (model.variants.mixed of model 'minilm')" in line
    assert "mixed_layernorm" in line and "\n" not in line
    assert (CONF_DIR / "precision" / "mixed_rmsnorm.yaml").is_file()


def test_an_empty_mapping_is_one_line_not_a_silent_fallback():
    with pytest.raises(UserError) as info:
        load_config(["model=minilm", "precision=mixed", "model.variants.mixed="])
    assert "model.variants.mixed of model 'minilm' is empty" in info.value.one_line()
