"""The MesoNet baseline: the torch port of Meso4 must reproduce the published Keras model.

Reference figures: ``shared/weights/mesonet/SOURCE.txt`` records P(real) of Meso4_DF on the bundled
test images as 0.05 / 0.04 for the two deepfakes and 0.99 / 1.00 for the two real faces.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from chromastream.models.detector.mesonet import (
    INPUT_SIZE,
    Meso4,
    MesoNet,
    MesoNetError,
    default_weights_path,
    prepare,
)

WEIGHTS = default_weights_path().parent
TEST_IMAGES = WEIGHTS / "test_images"

needs_weights = pytest.mark.skipif(
    not (WEIGHTS / "Meso4_DF.h5").is_file(), reason=f"MesoNet weights not found under {WEIGHTS}"
)


def load(folder: str) -> list[np.ndarray]:
    files = sorted((TEST_IMAGES / folder).glob("*.jpg"))
    assert files, f"no test images in {TEST_IMAGES / folder}"
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


def test_layer_shapes() -> None:
    model = Meso4().eval()
    x = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    shapes = [tuple(f.shape) for f in model.features(x)]
    assert shapes == [(2, 8, 128, 128), (2, 8, 64, 64), (2, 16, 32, 32), (2, 16, 8, 8)]
    assert model.dense1.in_features == 16 * 8 * 8
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2,)
    assert sum(p.numel() for p in model.parameters()) == 27_977  # Meso4 as published (~28k)


def test_prepare_scales_and_resizes() -> None:
    grey = np.full((100, 80), 255, dtype=np.uint8)
    rgb = np.zeros((300, 300, 3), dtype=np.uint8)
    batch = prepare([grey, rgb])
    assert batch.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    assert float(batch[0].min()) == 1.0 and float(batch[1].max()) == 0.0


@needs_weights
def test_df_weights_reproduce_published_predictions() -> None:
    model = MesoNet(WEIGHTS / "Meso4_DF.h5")
    fake = model.fake_probability(load("df"))
    real = model.fake_probability(load("real"))
    # Published P(real): 0.05 / 0.04 (df) and 0.99 / 1.00 (real); resizing differs a little from Keras'.
    np.testing.assert_allclose(1 - fake, [0.05, 0.04], atol=0.03)
    np.testing.assert_allclose(1 - real, [0.99, 1.00], atol=0.02)
    assert fake.mean() > real.mean()


@needs_weights
def test_f2f_weights_load_and_rank_real_lower() -> None:
    model = MesoNet(WEIGHTS / "Meso4_F2F.h5")
    fake = model.fake_probability(load("df"))
    real = model.fake_probability(load("real"))
    assert np.all((fake >= 0) & (fake <= 1))
    assert fake.mean() > real.mean()


@needs_weights
def test_wrong_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MesoNetError, match="not found"):
        MesoNet(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(MesoNetError, match="cannot read"):
        MesoNet(junk)
    with pytest.raises(MesoNetError, match="not a Meso4"):
        MesoNet(WEIGHTS / "MesoInception_DF.h5")
