"""Any model class of Hugging Face `transformers`, randomly initialised from a config.

`build(architecture="BertModel", config={...})` makes `transformers.BertModel(BertConfig(
**config))`: no download, weights from the seed (`model.seed`, which the trace stage sets
before building). Load trained weights with `model.checkpoint` (a state dict of the
transformers model). The model is called with the declared inputs as keyword arguments
(`forward_args`, in the order of `model.inputs`), without a KV cache, and returns its output
tensors in the order transformers lists them (e.g. last_hidden_state, pooler_output).
conf/model/{bert,vit,gpt2,llama}_tiny.yaml use it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pipeline.errors import UserError


class KeywordModel(nn.Module):
    """Calls a transformers model with positional inputs as keywords; returns a tuple of tensors."""

    def __init__(self, model: nn.Module, forward_args: Sequence[str]):
        super().__init__()
        self.model = model
        self.forward_args = tuple(forward_args)

    def forward(self, *args):
        out = self.model(**dict(zip(self.forward_args, args)), return_dict=True)
        return tuple(v for v in out.values() if isinstance(v, torch.Tensor))

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Takes the transformers model's own state dict (keys without the `model.` prefix)."""
        return self.model.load_state_dict(state, strict=strict, assign=assign)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


def build(architecture: str, config: Mapping[str, Any] | None = None,
          forward_args: Sequence[str] = ("input_ids",), seed: int = 0) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise UserError("model uses pipeline.models.hf but transformers is not installed",
                        "pip install 'transformers>=5,<6'") from None
    model_class = getattr(transformers, str(architecture), None)
    config_class = getattr(model_class, "config_class", None)
    if model_class is None or config_class is None:
        raise UserError(f"model.architecture '{architecture}' is not a transformers model class",
                        "name one, e.g. model.args.architecture=BertModel")
    settings = dict(config or {})
    if hasattr(config_class(), "use_cache"):
        settings.setdefault("use_cache", False)  # one forward pass: no KV cache among the outputs
    try:
        hf_config = config_class(**settings)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{config_class.__name__}({settings}) failed: {exc}",
                        "fix model.args.config") from None
    torch.manual_seed(seed)  # random initialisation, seeded by model.seed
    model = model_class(hf_config)
    return KeywordModel(model, forward_args).eval()
