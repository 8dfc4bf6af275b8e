"""An example user model for `model=custom`: a small token mixer with a hand-written norm."""
import torch
from torch import nn


class RMSNormByHand(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TinyMixer(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = RMSNormByHand(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(self.norm(x)))) + x


def build_model(dim: int = 32, hidden: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyMixer(dim, hidden).eval()
