"""Colour-space kernels: known values, round trips, and the fast / reference / torch versions agreeing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chromastream.kernels import combine, combine_numpy, combine_torch, lab_numpy, lab_torch, luma

RNG_SEED = 1234

# CIE Lab (D65, 2°) of the sRGB primaries and secondaries, as published (Lindbloom's calculator, EasyRGB).
KNOWN_LAB = [
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
    ((1.0, 1.0, 0.0), (97.1393, -21.5537, 94.4780)),
    ((0.0, 1.0, 1.0), (91.1132, -48.0875, -14.1312)),
    ((1.0, 0.0, 1.0), (60.3242, 98.2343, -60.8249)),
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((128 / 255, 128 / 255, 128 / 255), (53.5850, 0.0, 0.0)),
]

# (odd and non-square) low-resolution ab sizes and full-resolution frame sizes.
SIZES = [((9, 13), (48, 64)), ((16, 16), (64, 64)), ((7, 11), (30, 86)), ((12, 9), (40, 22))]


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _nchw(x: np.ndarray) -> torch.Tensor:
    """Channel-last numpy ``[..., 3]`` -> torch ``[1, 3, H, W]`` (float64 for tight comparisons)."""
    a = np.asarray(x, dtype=np.float64).reshape(1, -1, 1, 3)
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def _random_lab(n: int, rng: np.random.Generator, ab: float = 100.0) -> np.ndarray:
    return np.stack(
        [rng.uniform(0, 100, n), rng.uniform(-ab, ab, n), rng.uniform(-ab, ab, n)], axis=-1
    ).astype(np.float32)


# ---------------------------------------------------------------- Lab


@pytest.mark.parametrize(("rgb", "lab"), KNOWN_LAB)
def test_rgb_to_lab_known_values(rgb: tuple[float, ...], lab: tuple[float, ...]) -> None:
    np.testing.assert_allclose(lab_numpy.rgb_to_lab(np.array(rgb)), lab, atol=0.05)
    got = lab_torch.rgb_to_lab(_nchw(np.array(rgb)))[0, :, 0, 0].numpy()
    np.testing.assert_allclose(got, lab, atol=0.05)


@pytest.mark.parametrize(("rgb", "lab"), KNOWN_LAB)
def test_lab_to_rgb_known_values(rgb: tuple[float, ...], lab: tuple[float, ...]) -> None:
    np.testing.assert_allclose(lab_numpy.lab_to_rgb(np.array(lab)), rgb, atol=2e-4)


def test_rgb_lab_round_trip() -> None:
    rgb = _rng().uniform(0, 1, (4096, 3))
    np.testing.assert_allclose(lab_numpy.lab_to_rgb(lab_numpy.rgb_to_lab(rgb)), rgb, atol=1e-4)
    t = _nchw(rgb)
    np.testing.assert_allclose(lab_torch.lab_to_rgb(lab_torch.rgb_to_lab(t)).numpy(), t.numpy(), atol=1e-6)


def test_lab_to_rgb_clips_out_of_gamut() -> None:
    """Colours sRGB cannot show come back inside [0, 1], never as NaN (a = 127 at L = 95 is far outside)."""
    rgb = lab_numpy.lab_to_rgb(np.array([[95.0, 127.0, -127.0], [2.0, -127.0, 127.0]]))
    assert np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_numpy_and_torch_lab_agree() -> None:
    rng = _rng()
    rgb = rng.uniform(0, 1, (2048, 3))
    np.testing.assert_allclose(
        lab_torch.rgb_to_lab(_nchw(rgb))[0, :, :, 0].T.numpy(), lab_numpy.rgb_to_lab(rgb), atol=2e-4
    )
    lab = _random_lab(2048, rng)
    np.testing.assert_allclose(
        lab_torch.lab_to_rgb(_nchw(lab))[0, :, :, 0].T.numpy(), lab_numpy.lab_to_rgb(lab), atol=1e-5
    )
    # float32 (what training and inference run in) stays close too.
    got32 = lab_torch.lab_to_rgb(_nchw(lab).float())[0, :, :, 0].T.numpy()
    np.testing.assert_allclose(got32, lab_numpy.lab_to_rgb(lab), atol=1e-4)


def test_gray_to_l_and_l_to_gray_are_inverse() -> None:
    gray = np.linspace(0.0, 1.0, 1001)
    l_channel = lab_numpy.gray_to_l(gray)
    assert np.all(np.diff(l_channel) > 0), "L must grow strictly with the grey level"
    np.testing.assert_allclose(lab_numpy.l_to_gray(l_channel), gray, atol=1e-5)
    levels = np.linspace(0.0, 100.0, 1001)
    np.testing.assert_allclose(lab_numpy.gray_to_l(lab_numpy.l_to_gray(levels)), levels, atol=1e-3)
    np.testing.assert_allclose(
        lab_torch.l_to_gray(torch.from_numpy(levels)).numpy(), lab_numpy.l_to_gray(levels), atol=1e-6
    )
    # A grey's L is the L of the RGB triple with R = G = B.
    np.testing.assert_allclose(
        lab_numpy.rgb_to_lab(np.repeat(gray[:, None], 3, 1))[:, 0], l_channel, atol=1e-3
    )
    np.testing.assert_allclose(
        lab_numpy.gray_u8_to_l_table(), lab_numpy.gray_to_l(np.arange(256) / 255), atol=0
    )


def test_torch_lab_gradients_are_finite() -> None:
    """Training backpropagates through these, including black, white, the curve knees and out-of-gamut ab."""
    rng = _rng()
    lab = torch.from_numpy(_random_lab(512, rng, ab=150.0).reshape(1, 16, 32, 3)).permute(0, 3, 1, 2)
    lab = lab.contiguous()
    lab[0, 0, 0, :4] = torch.tensor([0.0, 100.0, 8.0, 116.0 * (6 / 29) - 16.0])
    lab[0, 1:, 0, :4] = 0.0
    lab.requires_grad_(True)
    lab_torch.lab_to_rgb(lab).sum().backward()
    assert lab.grad is not None and torch.isfinite(lab.grad).all()
    # In-gamut colours must actually pass gradient (the clamp is only at the very end).
    assert lab.grad[0, 0, 0, 2].abs() > 0

    rgb = torch.rand(1, 3, 8, 8, dtype=torch.float32)
    rgb[0, :, 0, 0] = 0.0
    rgb[0, :, 0, 1] = 1.0
    rgb[0, :, 0, 2] = 0.04045
    rgb.requires_grad_(True)
    lab_torch.rgb_to_lab(rgb).sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all()

    ab_low = torch.randn(2, 2, 5, 7, requires_grad=True)
    l_full = torch.rand(2, 20, 28) * 100
    combine_torch.lab_to_rgb(l_full, ab_low * 40).mean().backward()
    assert ab_low.grad is not None and torch.isfinite(ab_low.grad).all() and ab_low.grad.abs().sum() > 0


# ---------------------------------------------------------------- combine: resampling


@pytest.mark.parametrize(("low", "full"), SIZES)
def test_upsample_ab_three_ways_agree(low: tuple[int, int], full: tuple[int, int]) -> None:
    ab = _rng().uniform(-100, 100, (2, *low)).astype(np.float32)
    ref = combine_numpy.upsample_ab(ab, *full)
    assert ref.shape == (*full, 2)
    np.testing.assert_allclose(combine.upsample_ab(ab, *full), ref, atol=2e-3)
    got = combine_torch.upsample_ab(torch.from_numpy(ab)[None], *full)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_bilinear_half_pixel_centres_by_hand() -> None:
    """Doubling [0, 1]: output centres sit at -0.25, 0.25, 0.75, 1.25 in input pixels, clamped at the ends."""
    x = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(combine_numpy.resize_bilinear(x, 1, 4)[0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    # Same size is the identity; a constant stays constant; shrinking is bilinear, not an average.
    y = _rng().uniform(size=(5, 9)).astype(np.float32)
    np.testing.assert_allclose(combine_numpy.resize_bilinear(y, 5, 9), y, atol=1e-7)
    np.testing.assert_allclose(combine_numpy.resize_bilinear(np.full((3, 4), 7.0), 11, 6), 7.0, atol=1e-6)
    row = np.arange(8, dtype=np.float32)[None]
    np.testing.assert_allclose(combine_numpy.resize_bilinear(row, 1, 4)[0], [0.5, 2.5, 4.5, 6.5], atol=1e-6)


def test_area_down2_matches_opencv_and_torch() -> None:
    import cv2

    x = _rng().uniform(0, 100, (30, 86)).astype(np.float32)
    ref = combine_numpy.area_down2(x)
    assert ref.shape == (15, 43)
    np.testing.assert_allclose(ref[0, 0], x[:2, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(cv2.resize(x, (43, 15), interpolation=cv2.INTER_AREA), ref, atol=1e-4)
    got = combine_torch.area_down2(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        combine_numpy.area_down2(np.zeros((3, 4)))


# ---------------------------------------------------------------- combine: luma -> L


def test_l_from_luma_limited_and_full_range() -> None:
    limited = combine.luma_to_l_table(False)
    full = combine.luma_to_l_table(True)
    assert limited.shape == full.shape == (256,)
    assert limited[16] == pytest.approx(0.0, abs=1e-6)
    assert limited[235] == pytest.approx(100.0, abs=1e-3)
    # Footroom and headroom clip to black and white.
    assert np.all(limited[:16] == limited[16]) and np.all(limited[235:] == limited[235])
    assert full[0] == pytest.approx(0.0, abs=1e-6) and full[255] == pytest.approx(100.0, abs=1e-3)
    assert full[16] > 1.0, "full range: code 16 is a dark grey, not black"
    assert np.all(np.diff(full) > 0) and np.all(np.diff(limited[16:236]) > 0)
    np.testing.assert_allclose(full, lab_numpy.gray_to_l(np.arange(256) / 255.0), atol=1e-5)
    # Limited code y shows the grey level (y - 16) / 219.
    np.testing.assert_allclose(limited[125], lab_numpy.gray_to_l(109 / 219), atol=1e-5)

    y = _rng().integers(0, 256, (37, 53), dtype=np.uint8)
    for full_range in (False, True):
        ref = combine.l_from_luma(y, full_range)
        np.testing.assert_array_equal(combine_numpy.l_from_luma(y, full_range), ref)
        got = combine_torch.l_from_luma(torch.from_numpy(y)[None], full_range)[0].numpy()
        np.testing.assert_allclose(got, ref, atol=0)
    with pytest.raises(TypeError, match="uint8"):
        combine_torch.l_from_luma(torch.zeros(2, 2, dtype=torch.int32))


# ---------------------------------------------------------------- combine: RGB and YUV output


@pytest.mark.parametrize(("low", "full"), SIZES)
def test_lab_to_rgb_u8_three_ways_agree(low: tuple[int, int], full: tuple[int, int]) -> None:
    rng = _rng()
    y = rng.integers(0, 256, full, dtype=np.uint8)
    ab = rng.uniform(-70, 70, (2, *low)).astype(np.float32)
    l_full = combine.l_from_luma(y)
    ref = combine_numpy.lab_to_rgb_u8(l_full, ab)
    assert ref.shape == (*full, 3) and ref.dtype == np.uint8
    fast = combine.lab_to_rgb_u8(l_full, ab)
    assert fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - ref).max() <= 1
    got = combine_torch.lab_to_rgb_u8(torch.from_numpy(l_full)[None], torch.from_numpy(ab)[None])
    assert got.dtype == torch.uint8
    assert np.abs(got[0].permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1


@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize(("low", "full"), SIZES[:3])
def test_yuv420_three_ways_agree(low: tuple[int, int], full: tuple[int, int], full_range: bool) -> None:
    rng = _rng()
    y = rng.integers(0, 256, full, dtype=np.uint8)
    ab = rng.uniform(-70, 70, (2, *low)).astype(np.float32)
    ref = combine_numpy.luma_ab_to_yuv420(y, ab, full_range)
    fast = combine.luma_ab_to_yuv420(y, ab, full_range)
    y_in = torch.from_numpy(y)[None]
    y_t, u_t, v_t = combine_torch.luma_ab_to_yuv420(y_in, torch.from_numpy(ab)[None], full_range)
    chroma = (full[0] // 2, full[1] // 2)
    for plane in (1, 2):
        assert ref[plane].shape == fast[plane].shape == chroma
        for other in (fast[plane], (u_t, v_t)[plane - 1][0].numpy()):
            diff = np.abs(other.astype(int) - ref[plane])
            assert diff.max() <= 1
            assert (diff > 0).mean() < 0.01, "off-by-one should be rare rounding ties, not a bias"
    # The output's luminance is the input's: the very same plane.
    assert fast[0] is y and ref[0] is y
    assert y_t is y_in


def test_yuv420_grey_has_neutral_chroma() -> None:
    """ab = 0 is grey at every brightness: U = V = 128 exactly, in both ranges and all versions."""
    y = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    ab = np.zeros((2, 3, 5), dtype=np.float32)
    for full_range in (False, True):
        for fn in (combine.luma_ab_to_yuv420, combine_numpy.luma_ab_to_yuv420):
            _, u, v = fn(y, ab, full_range)
            assert np.all(u == 128) and np.all(v == 128), fn.__module__
        _, u_t, v_t = combine_torch.luma_ab_to_yuv420(
            torch.from_numpy(y)[None], torch.from_numpy(ab)[None], full_range
        )
        assert bool((u_t == 128).all()) and bool((v_t == 128).all())


# BT.601 limited-range Cb/Cr of the primaries (ITU-R BT.601 tables): red (90, 240), blue (240, 110).
@pytest.mark.parametrize(
    ("rgb", "uv"), [((1.0, 0.0, 0.0), (90, 240)), ((0.0, 0.0, 1.0), (240, 110)), ((0.0, 1.0, 0.0), (54, 34))]
)
def test_known_colours_land_on_the_right_chroma(rgb: tuple[float, ...], uv: tuple[int, int]) -> None:
    u_ref, v_ref = combine_numpy.chroma_u8(np.array(rgb), full_range=False)
    assert (int(u_ref), int(v_ref)) == uv
    u_t, v_t = combine_torch.chroma_u8(torch.tensor(rgb, dtype=torch.float64).reshape(1, 3, 1, 1))
    assert (int(u_t), int(v_t)) == uv
    # Full range spreads chroma over 255 levels instead of 224: the same colour sits further from 128.
    u_f, v_f = combine_numpy.chroma_u8(np.array(rgb), full_range=True)
    assert abs(int(u_f) - 128) >= abs(uv[0] - 128) and abs(int(v_f) - 128) >= abs(uv[1] - 128)

    # Through the whole path: luma at this colour's lightness, ab of the colour, in every version.
    lab = lab_numpy.rgb_to_lab(np.array(rgb))
    code = round(16 + 219 * float(lab_numpy.l_to_gray(lab[0])))
    y = np.full((4, 6), code, dtype=np.uint8)
    ab = np.broadcast_to(lab[1:, None, None], (2, 2, 3)).astype(np.float32)
    outs = [combine.luma_ab_to_yuv420(y, ab)[1:], combine_numpy.luma_ab_to_yuv420(y, ab)[1:]]
    _, u_t, v_t = combine_torch.luma_ab_to_yuv420(torch.from_numpy(y)[None], torch.from_numpy(ab)[None])
    outs.append((u_t[0].numpy(), v_t[0].numpy()))
    for u, v in outs:
        assert np.abs(u.astype(int) - uv[0]).max() <= 2 and np.abs(v.astype(int) - uv[1]).max() <= 2


def test_red_lab_gives_red_chroma_signs() -> None:
    """Positive a (red) pushes V above 128; negative b (blue) pushes U above 128."""
    y = np.full((8, 8), 120, dtype=np.uint8)
    red = np.stack([np.full((2, 2), 60.0), np.full((2, 2), 40.0)]).astype(np.float32)
    blue = np.stack([np.full((2, 2), 20.0), np.full((2, 2), -60.0)]).astype(np.float32)
    _, u, v = combine.luma_ab_to_yuv420(y, red)
    assert np.all(v > 128) and np.all(u < 128)
    _, u, v = combine.luma_ab_to_yuv420(y, blue)
    assert np.all(u > 128)


def test_yuv420_rejects_odd_sizes() -> None:
    y = np.zeros((5, 8), dtype=np.uint8)
    ab = np.zeros((2, 2, 2), dtype=np.float32)
    for fn in (combine.luma_ab_to_yuv420, combine_numpy.luma_ab_to_yuv420):
        with pytest.raises(ValueError, match="even"):
            fn(y, ab)
    with pytest.raises(ValueError, match="even"):
        combine_torch.luma_ab_to_yuv420(torch.zeros(1, 5, 8, dtype=torch.uint8), torch.zeros(1, 2, 2, 2))


def test_torch_combine_batches_independently() -> None:
    """A batch of streams gives each stream what it would get alone."""
    rng = _rng()
    y = torch.from_numpy(rng.integers(0, 256, (3, 24, 40), dtype=np.uint8))
    ab = torch.from_numpy(rng.uniform(-60, 60, (3, 2, 6, 10)).astype(np.float32))
    _, u, v = combine_torch.luma_ab_to_yuv420(y, ab)
    for i in range(3):
        _, ui, vi = combine_torch.luma_ab_to_yuv420(y[i : i + 1], ab[i : i + 1])
        assert torch.equal(u[i], ui[0]) and torch.equal(v[i], vi[0])


# ---------------------------------------------------------------- luma extraction


def _i420(
    rng: np.random.Generator, h: int, w: int, stride: int, uv_stride: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """A flat I420 buffer with padding filled with 255 (so a wrong offset shows), and its true Y plane."""
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)
    yp = np.full((rows, stride), 255, dtype=np.uint8)
    yp[:h, :w] = y
    uv_rows = max(ch, (rows + 1) // 2)
    planes = [yp.ravel()]
    for _ in range(2):
        c = np.full((uv_rows, uv_stride), 255, dtype=np.uint8)
        c[:ch, :cw] = rng.integers(16, 241, (ch, cw), dtype=np.uint8)
        planes.append(c.ravel())
    return np.concatenate(planes), y


def _nv12(rng: np.random.Generator, h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)
    yp = np.full((h, stride), 255, dtype=np.uint8)
    yp[:h, :w] = y
    uv = np.full((ch, stride), 255, dtype=np.uint8)
    uv[:, : 2 * cw] = rng.integers(16, 241, (ch, 2 * cw), dtype=np.uint8)
    return np.concatenate([yp.ravel(), uv.ravel()]), y


@pytest.mark.parametrize(
    ("h", "w", "stride"), [(48, 64, 64), (48, 64, 96), (5, 7, 7), (5, 7, 16), (30, 86, 128)]
)
def test_y_plane_i420(h: int, w: int, stride: int) -> None:
    buf, y = _i420(_rng(), h, w, stride, (stride + 1) // 2, h)
    out = luma.y_plane_i420(buf, h, w, stride)
    assert out.shape == (h, w) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, y)
    assert np.shares_memory(out, buf), "the Y plane must be a view, not a copy"
    out_t = combine_torch.y_plane(torch.from_numpy(buf), "i420", h, w, stride)
    np.testing.assert_array_equal(out_t.numpy(), y)
    assert out_t.untyped_storage().data_ptr() == torch.from_numpy(buf).untyped_storage().data_ptr()


@pytest.mark.parametrize(("h", "w", "stride"), [(48, 64, 64), (48, 64, 80), (5, 7, 8), (30, 86, 128)])
def test_y_plane_nv12(h: int, w: int, stride: int) -> None:
    buf, y = _nv12(_rng(), h, w, stride)
    out = luma.y_plane_nv12(buf, h, w, stride)
    np.testing.assert_array_equal(out, y)
    assert np.shares_memory(out, buf)
    np.testing.assert_array_equal(
        combine_torch.y_plane(torch.from_numpy(buf), "nv12", h, w, stride).numpy(), y
    )


def test_y_plane_with_aligned_rows_and_own_chroma_stride() -> None:
    """Decoders align plane heights (e.g. 1080 -> 1088) and choose chroma strides of their own."""
    h, w, stride, uv_stride, rows = 45, 60, 64, 48, 48
    buf, y = _i420(_rng(), h, w, stride, uv_stride, rows)
    out = luma.y_plane(buf, "i420", h, w, y_stride=stride, uv_stride=uv_stride, y_rows=rows)
    np.testing.assert_array_equal(out, y)
    layout = luma.planar_layout("i420", h, w, stride, uv_stride, rows)
    assert layout.size == buf.size == stride * rows + 2 * uv_stride * 24


def test_y_plane_from_bytes_is_a_read_only_view() -> None:
    buf, y = _i420(_rng(), 8, 8, 8, 4, 8)
    raw = buf.tobytes()
    out = luma.y_plane(raw, "i420", 8, 8)
    np.testing.assert_array_equal(out, y)
    assert not out.flags.writeable
    np.testing.assert_array_equal(luma.y_plane(bytearray(raw), "i420", 8, 8), y)
    np.testing.assert_array_equal(luma.y_plane(memoryview(raw), "i420", 8, 8), y)


def test_y_plane_rejects_wrong_layouts() -> None:
    buf, _ = _i420(_rng(), 48, 64, 64, 32, 48)
    with pytest.raises(ValueError, match=r"i420 frame 64x48 .* needs 4608 bytes, got 4607"):
        luma.y_plane_i420(buf[:-1], 48, 64)
    with pytest.raises(ValueError, match="needs 4608 bytes, got 4609"):
        luma.y_plane_i420(np.concatenate([buf, buf[:1]]), 48, 64)
    with pytest.raises(ValueError, match="needs"):
        luma.y_plane_nv12(buf, 48, 64, stride=80)
    with pytest.raises(ValueError, match="needs"):
        combine_torch.y_plane(torch.from_numpy(buf[:-2]), "i420", 48, 64)
    with pytest.raises(ValueError, match="smaller than the width"):
        luma.y_plane_i420(buf, 48, 64, stride=32)
    with pytest.raises(ValueError, match="unknown pixel format"):
        luma.y_plane(buf, "yuyv", 48, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        luma.y_plane(buf.astype(np.uint16), "i420", 48, 64)
    with pytest.raises(TypeError, match="bytes-like"):
        luma.y_plane([0] * 4608, "i420", 48, 64)


def test_fast_path_accepts_float64_inputs() -> None:
    """ab computed in double precision (numpy arithmetic promotes easily) must not trip OpenCV's
    float32-only Lab conversion."""
    rng = _rng()
    y = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    ab64 = rng.uniform(-50, 50, (2, 4, 6))
    l64 = combine.l_from_luma(y).astype(np.float64)
    ref_rgb = combine_numpy.lab_to_rgb_u8(l64.astype(np.float32), ab64.astype(np.float32))
    assert np.abs(combine.lab_to_rgb_u8(l64, ab64).astype(int) - ref_rgb).max() <= 1  # type: ignore[arg-type]
    _, u, v = combine.luma_ab_to_yuv420(y, ab64)  # type: ignore[arg-type]
    _, u_ref, v_ref = combine_numpy.luma_ab_to_yuv420(y, ab64.astype(np.float32))
    assert np.abs(u.astype(int) - u_ref).max() <= 1 and np.abs(v.astype(int) - v_ref).max() <= 1
