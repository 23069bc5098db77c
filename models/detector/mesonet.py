"""MesoNet Meso4 (Afchar et al. 2018) in torch, loaded from the published Keras ``.h5`` weights.

MesoNet is the baseline the detector benchmark puts beside the project's detector. The published weights
(``shared/weights/mesonet``, DariusAf/MesoNet, Apache-2.0) are Keras 2.1.5 ``save_weights`` files; they are
read with ``h5py`` so no TensorFlow is needed. Three details decide whether the port reproduces the original
rather than merely loading without error:

* Keras stores convolution kernels as ``[kh, kw, in, out]`` (HWIO); torch wants ``[out, in, kh, kw]``.
* Keras ``Flatten`` flattens an NHWC tensor, so the first dense layer's 1024 inputs are in (h, w, c)
  order; the torch feature map is permuted to NHWC before flattening instead of reordering the matrix.
* Keras ``BatchNormalization`` uses ``epsilon=1e-3`` (torch's default is 1e-5).

The input is a 256×256 RGB face scaled to [0, 1] (``rescale=1/255`` in the original training script).
The network's sigmoid output is P(real) (the original trained with ``class_mode='binary'`` on folders
``df``/``real`` -> df = 0, real = 1); :meth:`MesoNet.fake_probability` returns 1 − that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from chromastream.models.detector import DetectorModelError

INPUT_SIZE = 256
KERAS_BN_EPSILON = 1e-3
DEFAULT_WEIGHTS = "Meso4_DF.h5"


class MesoNetError(DetectorModelError):
    """The weight file is missing, unreadable or does not hold a Meso4 network."""


def default_weights_path(name: str = DEFAULT_WEIGHTS) -> Path:
    """``<shared>/weights/mesonet/<name>`` (shared root: ``CHROMASTREAM_SHARED`` or ``../shared``)."""
    from chromastream.models.shared_data import shared_root

    return shared_root() / "weights" / "mesonet" / name


def _block(cin: int, cout: int, kernel: int, pool: int) -> nn.Sequential:
    """Conv ('same', ReLU) -> BatchNorm -> MaxPool: the order of the Keras model (BN after the ReLU)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.BatchNorm2d(cout, eps=KERAS_BN_EPSILON),
        nn.MaxPool2d(pool),
    )


class Meso4(nn.Module):
    """The Meso4 layers; ``forward`` takes ``[N, 3, 256, 256]`` in [0, 1] and returns P(real) ``[N]``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            _block(3, 8, 3, 2),  # 256 -> 128
            _block(8, 8, 5, 2),  # 128 -> 64
            _block(8, 16, 5, 2),  # 64 -> 32
            _block(16, 16, 5, 4),  # 32 -> 8
        )
        self.dense1 = nn.Linear(8 * 8 * 16, 16)
        self.act = nn.LeakyReLU(0.1)
        self.dense2 = nn.Linear(16, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every convolution block (for shape checks and inspection)."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens NHWC
        x = self.act(self.dense1(x))
        return torch.sigmoid(self.dense2(x)).squeeze(1)


def _dataset(group: object, name: str) -> npt.NDArray[np.float32]:
    import h5py

    if not isinstance(group, h5py.Group):
        raise MesoNetError(f"layer {name!r} is not a weight group")
    found: dict[str, npt.NDArray[np.float32]] = {}

    def visit(key: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[key.rsplit("/", 1)[-1]] = np.asarray(obj[()], dtype=np.float32)

    group.visititems(visit)
    if name not in found:
        raise MesoNetError(f"weight {name!r} missing (found {sorted(found)})")
    return found[name]


def load_keras_weights(model: Meso4, path: Path) -> None:
    """Copy the weights of a Keras Meso4 ``save_weights`` file into ``model``.

    Layers are taken in the file's ``layer_names`` order (Keras numbers them globally per session, e.g.
    ``conv2d_5``, so the names differ between files; the order does not).
    """
    import h5py

    if not path.is_file():
        raise MesoNetError(f"MesoNet weights not found: {path}")
    try:
        with h5py.File(path, "r") as fh:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in fh.attrs["layer_names"]]
            convs = [n for n in names if n.startswith("conv2d")]
            norms = [n for n in names if n.startswith("batch_normalization")]
            denses = [n for n in names if n.startswith("dense")]
            if (len(convs), len(norms), len(denses)) != (4, 4, 2):
                raise MesoNetError(
                    f"{path} is not a Meso4 weight file: {len(convs)} conv, {len(norms)} batch-norm and "
                    f"{len(denses)} dense layers (expected 4, 4, 2)"
                )
            state: dict[str, torch.Tensor] = {}
            for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
                kernel = _dataset(fh[conv], "kernel:0")  # [kh, kw, in, out]
                state[f"blocks.{i}.0.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
                state[f"blocks.{i}.0.bias"] = torch.from_numpy(_dataset(fh[conv], "bias:0"))
                bn = fh[norm]
                state[f"blocks.{i}.2.weight"] = torch.from_numpy(_dataset(bn, "gamma:0"))
                state[f"blocks.{i}.2.bias"] = torch.from_numpy(_dataset(bn, "beta:0"))
                state[f"blocks.{i}.2.running_mean"] = torch.from_numpy(_dataset(bn, "moving_mean:0"))
                state[f"blocks.{i}.2.running_var"] = torch.from_numpy(_dataset(bn, "moving_variance:0"))
                state[f"blocks.{i}.2.num_batches_tracked"] = torch.tensor(0)
            for j, dense in enumerate(denses, start=1):
                state[f"dense{j}.weight"] = torch.from_numpy(_dataset(fh[dense], "kernel:0").T.copy())
                state[f"dense{j}.bias"] = torch.from_numpy(_dataset(fh[dense], "bias:0"))
    except OSError as exc:
        raise MesoNetError(f"cannot read MesoNet weights {path}: {exc}") from exc
    except KeyError as exc:
        raise MesoNetError(f"{path} is not a Keras weight file: missing {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MesoNetError(f"{path}: weight shapes do not match Meso4 ({exc})") from exc


def prepare(crops: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """RGB (or grey) uint8 faces of any size -> ``[N, 3, 256, 256]`` float in [0, 1]."""
    batch = np.empty((len(crops), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    for i, crop in enumerate(crops):
        rgb = np.repeat(crop[:, :, None], 3, axis=2) if crop.ndim == 2 else crop
        if rgb.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            shrink = rgb.shape[0] > INPUT_SIZE
            rgb = np.asarray(
                cv2.resize(
                    rgb,
                    (INPUT_SIZE, INPUT_SIZE),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
                ),
                dtype=np.uint8,
            )
        batch[i] = rgb.astype(np.float32) / 255.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


class MesoNet:
    """Meso4 with published weights, on the CPU, answering P(fake) for face crops."""

    def __init__(self, weights: Path | None = None, threads: int | None = None) -> None:
        self.path = weights or default_weights_path()
        self.model = Meso4()
        load_keras_weights(self.model, self.path)
        self.model.eval()
        self.threads = threads
        self.name = f"mesonet-{self.path.stem}"

    def fake_probability(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        """P(fake) = 1 − P(real) per crop, float64 ``[N]``; crops are RGB, resized to 256 if needed."""
        if not crops:
            return np.zeros(0, dtype=np.float64)
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                real = self.model(prepare(crops)).double().numpy()
        finally:
            torch.set_num_threads(previous)
        out: npt.NDArray[np.float64] = 1.0 - real
        return out
