"""EfficientFormer (v1) L1/L3/L7 image classifiers (Li et al. 2022,
snap-research/EfficientFormer models/efficientformer.py), for calibrating the device model
against their published iPhone 12 latencies. Random weights: latency does not depend on them.

Conv stem, four stages of 4D MetaBlocks (pool token mixer + 1x1-conv MLP, layer scale), the
last `vit_num` blocks of stage 4 being 3D MetaBlocks (LayerNorm, 8-head attention with key
dim 32 and a learned bias over the 7x7 tokens, Linear MLP), then LayerNorm, token mean and
the two classifier heads averaged (the distillation head, as in the published model).
"""
from __future__ import annotations

import torch
from torch import nn

# name -> (blocks per stage, channels per stage, 3D blocks at the end of stage 4)
VARIANTS = {
    "l1": ((3, 2, 6, 4), (48, 96, 224, 448), 1),
    "l3": ((4, 4, 12, 6), (64, 128, 320, 512), 4),
    "l7": ((6, 6, 18, 8), (96, 192, 384, 768), 8),
}


def conv_bn(a: int, b: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, k, s, k // 2), nn.BatchNorm2d(b))


class Meta4D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.mlp = nn.Sequential(conv_bn(dim, 4 * dim), nn.GELU(), conv_bn(4 * dim, dim))
        self.ls1 = nn.Parameter(1e-5 * torch.ones(dim, 1, 1))
        self.ls2 = nn.Parameter(1e-5 * torch.ones(dim, 1, 1))

    def forward(self, x):
        x = x + self.ls1 * (self.pool(x) - x)
        return x + self.ls2 * self.mlp(x)


class Attention(nn.Module):
    def __init__(self, dim: int, key_dim: int = 32, heads: int = 8, ratio: int = 4, res: int = 7):
        super().__init__()
        self.heads, self.key_dim, self.d = heads, key_dim, ratio * key_dim
        self.scale = key_dim ** -0.5
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + self.d))
        self.proj = nn.Linear(heads * self.d, dim)
        self.register_buffer("bias", torch.zeros(heads, res * res, res * res))

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        attn = ((q @ k.transpose(-2, -1)) * self.scale + self.bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.d))


class Meta3D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ls1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.ls2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class EfficientFormer(nn.Module):
    def __init__(self, layers, dims, vit_num: int, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, dims[0] // 2, 3, 2), nn.ReLU(),
                                  conv_bn(dims[0] // 2, dims[0], 3, 2), nn.ReLU())
        blocks: list[nn.Module] = []
        for i, (n, dim) in enumerate(zip(layers, dims)):
            if i:
                blocks.append(conv_bn(dims[i - 1], dim, 3, 2))
            blocks.extend(Meta4D(dim) for _ in range(n - (vit_num if i == 3 else 0)))
        self.conv_stages = nn.Sequential(*blocks)
        self.vit = nn.Sequential(*(Meta3D(dims[3]) for _ in range(vit_num)))
        self.norm = nn.LayerNorm(dims[3])
        self.head = nn.Linear(dims[3], num_classes)
        self.dist_head = nn.Linear(dims[3], num_classes)

    def forward(self, x):
        x = self.conv_stages(self.stem(x))
        x = self.norm(self.vit(x.flatten(2).transpose(1, 2))).mean(1)
        return (self.head(x) + self.dist_head(x)) / 2


def build_efficientformer(variant: str = "l1", seed: int = 0) -> nn.Module:
    if variant not in VARIANTS:
        from pipeline.errors import UserError

        raise UserError(f"unknown EfficientFormer variant '{variant}'",
                        f"choose one of {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    return EfficientFormer(*VARIANTS[variant]).eval()
