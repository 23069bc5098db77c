"""The colorizer: pretrained MobileNetV2 encoder, light U-Net decoder, hint branch, ConvGRU memory.

Why this shape:
- The encoder is ImageNet MobileNetV2 (frozen while the decoder learns): semantic features are what make
  sky blue and grass green when colour training data is small, and it runs in real time on a CPU.
- The decoder uses depthwise-separable convolutions at high resolution and full convolutions only at
  1/16 and 1/32, where pixels are few; it predicts ab at 1/2 and upsamples, since chroma is smooth.
- User hints (Zhang et al. 2017) enter at 1/2, 1/4, 1/8 and 1/16, so a hint can change a whole object and
  not only the pixels it touches. They are pooled as "the mean colour of the hinted pixels in this cell" and
  "this cell holds a hint", not as plain averages: a 5-pixel click averaged over a 4x4 cell would reach the
  network as a faint, desaturated colour that it cannot tell from a weak one.
- Hint colours are then enforced and spread by a fixed, parameter-free step (:class:`HintPropagation`):
  what the decoder left between each hint's colour and its own prediction is spread around the hint over
  pixels of similar lightness, finest scale first. The decoder learns what a hint implies for the whole
  object; the propagation makes sure the clicked region gets the clicked colour.
- The temporal memory is a ConvGRU at 1/16 with a fixed-size state passed in and out explicitly: the
  engine stays stateless, the pipeline owns one state per stream, and memory never grows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chromastream.kernels.lab_torch import l_to_gray
from chromastream.models.colorizer import spec
from chromastream.models.colorizer.mobilenet import FEATURE_CHANNELS, MobileNetV2


def _sep(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with ReLU: a 3x3 receptive field at a fraction of the cost."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1),
        nn.ReLU(inplace=True),
    )


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.ReLU(inplace=True))


class ConvGRU(nn.Module):
    """A convolutional GRU cell. Its gates learn when to keep the previous frame's colours (static
    regions) and when to overwrite them (new content), which is what removes flicker."""

    def __init__(self, cin: int, hidden: int):
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


def pool_hints(hints: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, 3, H, W]`` hints -> ``[B, 3, H/factor, W/factor]``: per cell the mean a/b of its hinted pixels
    and a mask of 1 where any pixel of the cell is hinted (0 elsewhere)."""
    coverage = F.avg_pool2d(hints[:, 2:3], factor)
    ab = F.avg_pool2d(hints[:, :2], factor) / coverage.clamp_min(1.0 / (factor * factor))
    return torch.cat([ab, (coverage * (factor * factor)).clamp(max=1.0)], 1)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _gaussian(sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


class HintPropagation(nn.Module):
    """Spreads each hint's correction (its colour minus the decoder's) over similar-looking surroundings.

    A bilateral grid at 1/4 resolution: the corrections and the hint mask are splatted into ``bins``
    lightness layers, blurred in space and sliced back at every pixel's own lightness, so a correction
    travels along a surface and stops at edges in brightness. Scales are tried finest first; a pixel takes
    the correction of the finest scale with enough hint support around it (``support`` is the share of an
    isolated click's own support that counts as half) and leaves the rest to coarser scales, so dense
    hints stay local and a lone hint still reaches its object. Without hints it returns ``ab`` unchanged.
    The constants were set on held-out training photographs (PSNR gain at 10 and 100 hints)."""

    SCALE = 1024.0

    def __init__(
        self,
        sigmas: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0),
        bins: int = 4,
        sigma_l: float = 0.12,
        support: float = 0.3,
        click_area: float = 1.25,
    ):
        super().__init__()
        self.sigmas = sigmas
        self.centres = [i / (bins - 1) for i in range(bins)]
        self.sigma_l = sigma_l
        # Half confidence where the blurred mask is ``support`` times what one click's own area gives.
        # Everything is scaled by SCALE so that the sums stay far from FP16's smallest normal numbers.
        self.thresholds = [self.SCALE * support * click_area / (2 * math.pi * s**2) for s in sigmas]
        # Separable Gaussian per scale, one copy per blurred channel (a, b, mask), as fixed buffers. Wide
        # scales blur a coarser copy of the grid (a pyramid), so no kernel is longer than 13 taps.
        self.factors = [max(1, int(s // 2)) for s in sigmas]
        for i, (sigma, factor) in enumerate(zip(sigmas, self.factors, strict=True)):
            kernel = _gaussian(sigma / factor)
            self.register_buffer(f"row{i}", kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), persistent=False)
            self.register_buffer(f"col{i}", kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), persistent=False)

    def _blur(self, x: torch.Tensor, i: int) -> torch.Tensor:
        row: torch.Tensor = getattr(self, f"row{i}")
        col: torch.Tensor = getattr(self, f"col{i}")
        r = row.shape[-1] // 2
        x = F.conv2d(x, row, padding=(0, r), groups=3)
        return F.conv2d(x, col, padding=(r, 0), groups=3)

    def forward(self, ab: torch.Tensor, hints: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        mask = hints[:, 2:3]
        # Everything past the splat runs at 1/4 resolution (the grid's own), and only the final correction
        # is upsampled: the step costs a few percent of the network, with or without hints.
        splat = F.avg_pool2d(torch.cat([(hints[:, :2] - ab) * mask, mask], 1) * self.SCALE, 4)
        lightness = F.avg_pool2d(L, 4)
        layers = [torch.exp(-((lightness - c) ** 2) / (2 * self.sigma_l**2)) for c in self.centres]
        pooled = [splat * w for w in layers]
        total = torch.zeros_like(splat[:, :2])
        left = torch.ones_like(splat[:, 2:3])
        for i, threshold in enumerate(self.thresholds):
            acc = torch.zeros_like(splat)
            factor = self.factors[i]
            for w, grid in zip(layers, pooled, strict=True):
                if factor == 1:
                    blurred = self._blur(grid, i)
                else:
                    coarse = self._blur(F.avg_pool2d(grid, factor, ceil_mode=True), i)
                    blurred = F.interpolate(coarse, size=grid.shape[-2:], mode="bilinear")
                acc = acc + w * blurred
            num, den = acc[:, :2], acc[:, 2:3]
            conf = den / (den + threshold)
            total = total + left * conf * num / den.clamp_min(1e-3)
            left = left * (1 - conf)
        return ab + F.interpolate(total, size=ab.shape[-2:], mode="bilinear")


class Colorizer(nn.Module):
    """``(L, hints, state) -> (ab, state_out)`` in the units of :mod:`chromastream.models.colorizer.spec`."""

    ab_gain: torch.Tensor

    def __init__(self, encoder: MobileNetV2 | None = None):
        super().__init__()
        self.encoder = encoder if encoder is not None else MobileNetV2()
        c2, c4, c8, c16, c32 = FEATURE_CHANNELS
        hid = spec.STATE_CHANNELS
        self.hint8 = _conv(3, 16, 3, 2)
        self.hint16 = _conv(16, 32, 3, 2)
        self.reduce32 = _conv(c32, 128, 1)
        self.fuse16 = _conv(128 + c16 + 32, 96)
        self.gru = ConvGRU(96, hid)
        self.dec16 = _conv(96 + hid, 96)
        self.dec8 = _sep(96 + c8 + 16, 64)
        self.dec4 = nn.Sequential(_sep(64 + c4 + 3, 48), _sep(48, 32))
        self.dec2 = _sep(32 + c2, 24)
        # Hints at 1/2 act on the last features directly, so a click shows at its own pixels at once;
        # zero-initialized, so adding it to a trained network starts from that network's output.
        self.hint2 = nn.Conv2d(3, 24, 3, padding=1)
        for param in self.hint2.parameters():
            nn.init.zeros_(param)
        self.head = nn.Conv2d(24, 2, 1)
        self.propagate = HintPropagation()
        # Chroma gain, tuned on held-out data after training: regression losses desaturate, and how bold
        # the colours should be is a PSNR/colourfulness trade-off that is cheaper to set than to learn.
        self.register_buffer("ab_gain", torch.ones(()))

    def forward(
        self, L: torch.Tensor, hints: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gray = l_to_gray(L * spec.L_SCALE)
        x = (gray * 255.0 - 128.0) / 128.0
        f2, f4, f8, f16, f32 = self.encoder.features(x, gray=True)
        h4 = pool_hints(hints, 4)
        h8 = self.hint8(h4)
        h16 = self.hint16(h8)
        d = _up(self.reduce32(f32))
        d = self.fuse16(torch.cat([d, f16, h16], 1))
        state_out = self.gru(d, state)
        d = self.dec16(torch.cat([d, state_out], 1))
        d = self.dec8(torch.cat([_up(d), f8, h8], 1))
        d = self.dec4(torch.cat([_up(d), f4, h4], 1))
        d = self.dec2(torch.cat([_up(d), f2], 1)) + self.hint2(pool_hints(hints, 2))
        ab = self.propagate(_up(self.head(d)) * self.ab_gain, hints, L)
        return ab, state_out

    def decoder_parameters(self) -> list[nn.Parameter]:
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]


def zero_state(batch: int, height: int, width: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """A fresh memory for frames of ``height`` x ``width`` (the working size, multiples of 32)."""
    shape = (batch, spec.STATE_CHANNELS, height // spec.STATE_STRIDE, width // spec.STATE_STRIDE)
    if like is None:
        return torch.zeros(shape)
    return torch.zeros(shape, dtype=like.dtype, device=like.device)
