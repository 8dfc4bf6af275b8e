"""MobileNetV2 1.0 (Sandler et al. 2018) and ResNet-50 (He et al. 2016) image classifiers,
written as torchvision defines them (torchvision does not import here), for calibrating the
device model against Apple's published Core ML latencies. Random weights: latency does not
depend on them.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(a: int, b: int, k: int = 1, s: int = 1, groups: int = 1, act=None) -> nn.Sequential:
    layers = [nn.Conv2d(a, b, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(b)]
    return nn.Sequential(*layers, *([act()] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int):
        super().__init__()
        hidden = inp * t
        layers = [conv_bn(inp, hidden, act=nn.ReLU6)] if t != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, hidden, nn.ReLU6), conv_bn(hidden, oup)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == oup

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s), torchvision's table
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, 1280, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int):
        super().__init__()
        out = 4 * width
        self.body = nn.Sequential(conv_bn(inp, width, act=nn.ReLU),
                                  conv_bn(width, width, 3, stride, act=nn.ReLU), conv_bn(width, out))
        self.down = conv_bn(inp, out, 1, stride) if stride != 1 or inp != out else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
        inp = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for j in range(n):
                layers.append(Bottleneck(inp, width, 2 if i and j == 0 else 1))
                inp = 4 * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


def build_mobilenetv2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MobileNetV2().eval()


def build_resnet50(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ResNet50().eval()
