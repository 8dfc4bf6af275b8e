"""Models that go wrong on purpose, for the error tests (used as model._target_)."""
import torch
from torch import nn


class Histogram(nn.Module):
    def forward(self, x):
        return torch.histc(x, bins=4) + x.sum()


def unconvertible(**_):
    return Histogram().eval()


class Square(nn.Module):
    def forward(self, x):
        return x * x


def square(**_):
    return Square().eval()


def not_a_module(**_):
    return "a string"
