"""ImageNet MobileNetV2 (1.0, 224) as a torch module, with weights dequantized from the int8 TFLite file.

The TFLite model (``shared/weights/coral-tflite/mobilenet_v2_1.0_224_quant.tflite``) stores per-tensor
asymmetric uint8 weights with int32 biases, batch norm already folded into the convolutions. Dequantizing
gives a float network that reproduces the quantized classifier's decisions, so its features carry the
ImageNet semantics that make colours right with little colorization data.

Two details matter for an exact match: TensorFlow "SAME" padding on stride-2 layers pads only bottom and
right (torch pads symmetrically), and the input is expected as (pixel - 128) / 128.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (expansion, output channels, repeats, first stride) — the MobileNetV2 paper's table.
_BLOCKS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Index (in ``MobileNetV2.blocks``) of the last block at each downsampling level: 1/2, 1/4, 1/8, 1/16, 1/32.
FEATURE_BLOCKS = (0, 2, 5, 12, 16)
FEATURE_CHANNELS = (16, 24, 32, 96, 320)


class TFConv(nn.Conv2d):
    """A convolution with TensorFlow "SAME" padding and an optional ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu6: bool = True):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=True)
        self.relu6 = relu6
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            if self.stride[0] == 2:
                x = F.pad(x, (0, 1, 0, 1))  # TF SAME on even sizes: all padding bottom/right
            else:
                p = self.k // 2
                x = F.pad(x, (p, p, p, p))
        y = super().forward(x)
        return F.relu6(y) if self.relu6 else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(TFConv(cin, hidden, 1))
        layers += [TFConv(hidden, hidden, 3, stride, groups=hidden), TFConv(hidden, cout, 1, relu6=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 feature pyramid; ``classifier`` exists only to check the loaded weights."""

    def __init__(self, with_classifier: bool = False):
        super().__init__()
        self.stem = TFConv(3, 32, 3, 2)
        blocks: list[nn.Module] = []
        cin = 32
        for t, c, n, s in _BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head: nn.Module | None = None
        self.classifier: nn.Module | None = None
        if with_classifier:
            self.head = TFConv(320, 1280, 1)
            self.classifier = TFConv(1280, 1001, 1, relu6=False)

    def features(self, x: torch.Tensor, gray: bool = False, upto: int = 16) -> list[torch.Tensor]:
        """Feature maps at 1/2 … 1/32 (blocks in FEATURE_BLOCKS, up to block ``upto``).

        ``gray`` takes a one-channel input: the stem's weights summed over RGB give the same result as a
        grey picture replicated to three channels, at a third of the cost.
        """
        if gray:
            w = self.stem.weight.sum(dim=1, keepdim=True)
            x = F.relu6(F.conv2d(F.pad(x, (0, 1, 0, 1)), w, self.stem.bias, stride=2))
        else:
            x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            if i > upto:
                break
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.head is not None and self.classifier is not None
        f = self.features(x)[-1]
        f = self.head(f).mean(dim=(2, 3), keepdim=True)
        return self.classifier(f).flatten(1)


def _convs(module: nn.Module) -> list[TFConv]:
    return [m for m in module.modules() if isinstance(m, TFConv)]


def load_tflite(path: Path, with_classifier: bool = False) -> MobileNetV2:
    """Build a MobileNetV2 and fill it with the dequantized weights of the TFLite file at ``path``."""
    import tflite  # training extra

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)

    def tensor_array(index: int) -> np.ndarray:
        t = graph.Tensors(index)
        raw = model.Buffers(t.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT32: np.int32}[t.Type()]
        arr = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy()).astype(np.float64)
        q = t.Quantization()
        return (arr - float(q.ZeroPoint(0))) * float(q.Scale(0))

    conv_codes = {tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D}
    weights: list[tuple[np.ndarray, np.ndarray, bool]] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin not in conv_codes:
            continue
        w = tensor_array(op.Inputs(1))
        b = tensor_array(op.Inputs(2))
        if builtin == tflite.BuiltinOperator.DEPTHWISE_CONV_2D:
            w = w.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
        else:
            w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        weights.append((w, b, builtin == tflite.BuiltinOperator.DEPTHWISE_CONV_2D))

    net = MobileNetV2(with_classifier=True)
    convs = _convs(net)
    if len(convs) != len(weights):
        raise ValueError(f"{path}: expected {len(convs)} convolutions, found {len(weights)}")
    with torch.no_grad():
        for conv, (w, b, _) in zip(convs, weights, strict=True):
            if tuple(conv.weight.shape) != w.shape:
                raise ValueError(f"{path}: weight shape {w.shape} does not fit {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(w).float())
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(b).float())
    if not with_classifier:
        net.head = None
        net.classifier = None
    return net
