"""An EdgeSAM-style image encoder: a RepViT backbone and a neck with hand-written LayerNorm2d.

Follows EdgeSAM's `rep_vit.py` (RepViT-M1 config and its module names; not checked against a
real EdgeSAM checkpoint, whose `fuse_stage3` is an OpSequential with `op_list.*` keys): stem, four stages of RepViT blocks, a fuse of stages 3 and 4
(1x1 convs, x2 upsampling) into 256 channels, then the neck `conv1x1 -> LayerNorm2d ->
conv3x3 -> LayerNorm2d`, whose LayerNorm2d computes `(x-u).pow(2).mean(1)` and `torch.sqrt`
exactly as segment-anything's does. That pow is where FP16 overflows.

Two deliberate differences, both documented in the README:
- bilinear instead of bicubic upsampling in the fuse (coremltools has no bicubic op);
- `massive_activations`: a few channels of the neck's input get a large constant offset, as
  trained ViTs carry (Sun et al. 2024). Random weights lack them; with them the article's
  overflow shows without a checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

# (kernel, expansion, channels, use_se, use_hs, stride) per block: RepViT-M1 as in EdgeSAM.
M1_CFG = (
    [[3, 2, 48, 1, 0, 1], [3, 2, 48, 0, 0, 1], [3, 2, 48, 0, 0, 1],
     [3, 2, 96, 0, 0, 2], [3, 2, 96, 1, 0, 1], [3, 2, 96, 0, 0, 1], [3, 2, 96, 0, 0, 1]]
    + [[3, 2, 192, 0, 1, 2]] + [[3, 2, 192, i % 2, 1, 1] for i in range(1, 15)]
    + [[3, 2, 384, 0, 1, 2], [3, 2, 384, 1, 1, 1], [3, 2, 384, 0, 1, 1]]
)


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Conv2dBN(nn.Sequential):
    def __init__(self, a, b, ks=1, stride=1, pad=0, groups=1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class Residual(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class RepVGGDW(nn.Module):
    def __init__(self, ed):
        super().__init__()
        self.conv = Conv2dBN(ed, ed, 3, 1, 1, groups=ed)
        self.conv1 = Conv2dBN(ed, ed, 1, 1, 0, groups=ed)

    def forward(self, x):
        return self.conv(x) + self.conv1(x) + x


class SqueezeExcite(nn.Module):
    def __init__(self, ch, ratio=0.25):
        super().__init__()
        rd = make_divisible(ch * ratio, 8)
        self.conv_reduce = nn.Conv2d(ch, rd, 1)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(rd, ch, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))


class RepViTBlock(nn.Module):
    def __init__(self, inp, hidden, oup, k, stride, use_se):
        super().__init__()
        se = SqueezeExcite(inp) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(Conv2dBN(inp, inp, k, stride, (k - 1) // 2, groups=inp),
                                             se, Conv2dBN(inp, oup, 1, 1, 0))
            hidden = 2 * oup
        else:
            self.token_mixer = nn.Sequential(RepVGGDW(inp), se)
        self.channel_mixer = Residual(nn.Sequential(Conv2dBN(oup, hidden, 1, 1, 0), nn.GELU(),
                                                    Conv2dBN(hidden, oup, 1, 1, 0)))

    def forward(self, x):
        return self.channel_mixer(self.token_mixer(x))


class LayerNorm2d(nn.Module):
    """segment-anything's LayerNorm2d, written by hand: the op sequence the article fixes."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ImageEncoder(nn.Module):
    def __init__(self, cfgs=M1_CFG, out_chans: int = 256, width: float = 1.0,
                 massive_channels: Sequence[int] = (), massive_value: float = 0.0):
        super().__init__()
        cfgs = [[k, t, make_divisible(c * width), se, hs, s] for k, t, c, se, hs, s in cfgs]
        c0 = cfgs[0][2]
        layers: list[nn.Module] = [nn.Sequential(Conv2dBN(3, c0 // 2, 3, 2, 1), nn.GELU(),
                                                 Conv2dBN(c0 // 2, c0, 3, 2, 1))]
        self.stage_idx: list[int] = []
        inp, prev = c0, c0
        for idx, (k, t, c, use_se, _hs, s) in enumerate(cfgs):
            if c != prev:
                self.stage_idx.append(idx - 1)
                prev = c
            layers.append(RepViTBlock(inp, make_divisible(inp * t), c, k, s, use_se))
            inp = c
        self.stage_idx.append(len(cfgs) - 1)
        self.features = nn.ModuleList(layers)
        c2, c3 = cfgs[self.stage_idx[2]][2], cfgs[self.stage_idx[3]][2]
        self.fuse_stage2 = nn.Conv2d(c2, out_chans, 1, bias=False)
        self.fuse_stage3 = nn.Sequential(nn.Conv2d(c3, out_chans, 1, bias=False),
                                         nn.Upsample(scale_factor=2, mode="bilinear",
                                                     align_corners=False))
        self.neck = nn.Sequential(nn.Conv2d(out_chans, out_chans, 1, bias=False),
                                  LayerNorm2d(out_chans),
                                  nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
                                  LayerNorm2d(out_chans))
        offset = torch.zeros(1, out_chans, 1, 1)
        for ch in massive_channels:
            offset[0, int(ch) % out_chans] = float(massive_value)
        self.register_buffer("massive_offset", offset, persistent=False)

    def forward(self, x):
        x = self.features[0](x)
        stages = []
        for idx, f in enumerate(self.features[1:]):
            x = f(x)
            if idx in self.stage_idx:
                stages.append(x)
        x = self.fuse_stage2(stages[2]) + self.fuse_stage3(stages[3])
        return self.neck(x + self.massive_offset)


def synthetic_init(model: nn.Module, seed: int) -> None:
    """Deterministic weights that keep activations O(1) through the network, with
    non-trivial batch-norm statistics so every branch contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, LayerNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def build_encoder(seed: int = 0, width: float = 1.0, out_chans: int = 256,
                  massive_activations: dict | None = None) -> nn.Module:
    ma = dict(massive_activations or {})
    channels = ma.get("channels", ()) if ma.get("enabled", False) else ()
    model = ImageEncoder(out_chans=out_chans, width=width, massive_channels=channels,
                         massive_value=float(ma.get("value", 0.0)))
    synthetic_init(model, seed)
    return model.eval()


# ------------------------------------------------------------------- evaluation images

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def _synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth image with shapes and texture, in 0..255 RGB, HxWx3."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([255 * (0.3 + 0.4 * xx), 255 * (0.2 + 0.5 * yy), 255 * (0.6 - 0.3 * xx * yy)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255)


def _load_image(path: Path, size: int) -> np.ndarray:
    """An image file as 0..255 RGB floats, HxWx3. 16-bit images are scaled (not clipped)."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.errors import UserError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):  # 16- or 32-bit grey: PIL's RGB convert would clip
                grey = np.asarray(im, dtype=np.float64)
                full = 65535.0 if im.mode.startswith("I;16") or grey.max() > 255 else 255.0
                grey = Image.fromarray((grey * (255.0 / full)).astype(np.float32), mode="F")
                rgb = np.stack([np.asarray(grey.resize((size, size)), dtype=np.float32)] * 3, -1)
                return np.clip(rgb, 0.0, 255.0)
            return np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"image '{path}' cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})",
                        "remove it from model.data.folder or replace it with a real image") from None


def sample_images(inputs: Sequence[dict], count: int = 4, seed: int = 0,
                  folder: str | None = None) -> dict[str, np.ndarray]:
    """Evaluation images, normalized as SAM does: generated, or read from ``folder``."""
    spec = inputs[0]
    size = int(spec["shape"][-1])
    if folder:
        from pipeline.errors import UserError

        files = sorted(p for p in Path(folder).glob("*")
                       if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp"})
        if not files:
            raise UserError(f"no images (.png/.jpg/.jpeg/.bmp/.webp) in folder '{folder}'",
                            "point model.data.folder at a folder of images")
        images = [_load_image(p, size) for p in files[:count]]
    else:
        rng = np.random.default_rng(seed)
        images = [_synthetic_image(rng, size) for _ in range(count)]
    batch = np.stack([((im - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)[None] for im in images])
    return {spec["name"]: batch.astype(np.float32)}
