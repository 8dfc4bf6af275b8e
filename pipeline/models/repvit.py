"""RepViT image classifiers (Wang et al. 2024, THU-MIG/RepViT model/repvit.py), as deployed.

Used to calibrate the device model (pipeline/device) against RepViT's published iPhone 12
latencies. Built from the default encoder's blocks (pipeline/models/edgesam.py) in their
deployed (re-parameterized) form: the two depthwise branches and the identity of RepVGGDW
are one 3x3 depthwise conv, as after RepViT's `fuse()`; batch norms stay (coremltools folds
them into the convs). Weights are random: latency does not depend on them.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.edgesam import RepViTBlock, RepVGGDW, make_divisible, synthetic_init

# name -> (channels per stage, blocks per stage incl. the stride-2 first block of stages 2-4),
# read from THU-MIG/RepViT model/repvit.py (repvit_m0_9 .. repvit_m2_3).
VARIANTS = {
    "m0_9": ((48, 96, 192, 384), (3, 4, 16, 3)),
    "m1_0": ((56, 112, 224, 448), (3, 4, 16, 3)),
    "m1_1": ((64, 128, 256, 512), (3, 4, 14, 3)),
    "m1_5": ((64, 128, 256, 512), (5, 6, 26, 5)),
    "m2_3": ((80, 160, 320, 640), (7, 8, 36, 3)),
}


def cfgs(channels, blocks) -> list[list[int]]:
    """RepViT's (kernel, expansion, channels, SE, HS, stride) rows: SE alternates (on first
    in stage 1, on second elsewhere) and is off on each stage's last block; HS in stages 3-4."""
    rows = []
    for stage, (c, n) in enumerate(zip(channels, blocks)):
        for j in range(n):
            se = int(j % 2 == (0 if stage == 0 else 1)) if j < n - 1 else 0
            rows.append([3, 2, c, se, int(stage >= 2), 2 if stage and j == 0 else 1])
    return rows


class DeployedDW(nn.Module):
    """RepVGGDW after re-parameterization: one 3x3 depthwise conv with bias."""

    def __init__(self, ed: int):
        super().__init__()
        self.conv = nn.Conv2d(ed, ed, 3, 1, 1, groups=ed)

    def forward(self, x):
        return self.conv(x)


class RepViT(nn.Module):
    def __init__(self, rows: list[list[int]], num_classes: int = 1000):
        super().__init__()
        c0 = rows[0][2]
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, c0 // 2, 3, 2, 1), nn.BatchNorm2d(c0 // 2), nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, 2, 1), nn.BatchNorm2d(c0))]
        inp = c0
        for k, t, c, se, _hs, s in rows:
            c = make_divisible(c, 8)
            layers.append(RepViTBlock(inp, make_divisible(inp * t, 8), c, k, s, se))
            inp = c
        self.features = nn.Sequential(*layers)
        for block in self.features.modules():
            for name, child in list(block.named_children()):
                if isinstance(child, RepVGGDW):
                    setattr(block, name, DeployedDW(child.conv.c.in_channels))
        self.head = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_repvit(variant: str = "m0_9", seed: int = 0) -> nn.Module:
    if variant not in VARIANTS:
        from pipeline.errors import UserError

        raise UserError(f"unknown RepViT variant '{variant}'", f"choose one of {', '.join(VARIANTS)}")
    model = RepViT(cfgs(*VARIANTS[variant]))
    synthetic_init(model, seed)
    return model.eval()
