"""The deepfake classifier: ImageNet MobileNetV2 (dequantized from the Coral TFLite) and a small head.

Self-blending artefacts are low-level (a soft seam, a colour or sharpness step, a slight double edge), so
the head looks at the last feature map through both average and max pooling: the max keeps a strong
local seam from being averaged away over the whole face. The network takes RGB in 0..1 (``x / 255``) and
maps it to the TFLite model's ``(pixel - 128) / 128`` itself, so callers need no magic constants.

At 128×128 the backbone costs about 0.1 GFLOP: a few milliseconds per crop on one CPU core, inside the
25 ms budget per sampled frame with YuNet (see the model card for measured figures).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from chromastream.models.colorizer.mobilenet import MobileNetV2, load_tflite

TFLITE_PATH = Path("weights/coral-tflite/mobilenet_v2_1.0_224_quant.tflite")
INPUT_SIZE = 128
NORMALIZATION = "rgb/255"  # float RGB in [0, 1], NCHW


class DeepfakeNet(nn.Module):
    """``faces [N, 3, S, S]`` RGB in 0..1 -> ``logit [N]`` (positive: fake)."""

    def __init__(self, backbone: MobileNetV2 | None = None, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else MobileNetV2()
        self.reduce = nn.Sequential(nn.Conv2d(320, hidden, 1), nn.ReLU6())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, 1)
        self.train_from = 0

    def set_trainable(self, train_from: int) -> None:
        """Freeze the stem and the blocks before ``train_from``; they then run without autograd."""
        self.train_from = train_from
        for p in self.backbone.stem.parameters():
            p.requires_grad_(train_from <= 0)
        for i, block in enumerate(self.backbone.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= train_from)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces * 2.0 - 1.0  # 0..1 -> (pixel - 128) / 128 up to half a grey level
        frozen = self.training and self.train_from > 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x = self.backbone.stem(x)
            for block in self.backbone.blocks[: self.train_from]:
                x = block(x)
        for block in self.backbone.blocks[self.train_from :]:
            x = block(x)
        x = self.reduce(x)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled)).squeeze(1)


def build_classifier(shared: Path | None, train_from: int = 0) -> DeepfakeNet:
    """A classifier on the pretrained backbone (``shared`` given) or on a random one (``None``: tests)."""
    backbone = load_tflite(shared / TFLITE_PATH) if shared is not None else MobileNetV2()
    net = DeepfakeNet(backbone)
    net.set_trainable(train_from)
    return net


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
