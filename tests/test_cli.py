"""``chromastream colorize`` on pictures, folders and frame sequences, and its error handling.

Most runs call ``main([...])`` in-process (fast); a few go through the installed console script to check
what a user really sees (exit status, a single error line, no traceback).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from chromastream.kernels.lab_numpy import rgb_to_lab
from chromastream.stream import colorize_files
from chromastream.stream.colorize_files import natural_key
from chromastream.stream.image_io import MAX_PIXELS, Picture, header_size
from tests.conftest import FAST, CliRun, colour_picture, grey_picture, leftovers, read_rgb, write_picture

Cli = Callable[..., CliRun]


def lab_l(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 0]


def assert_same_luminance(original: np.ndarray, result: np.ndarray) -> None:
    """Lab L of the output follows the input's; gamut clipping of strong colours may move a few pixels."""
    source = original if original.ndim == 3 else np.repeat(original[:, :, None], 3, axis=2)
    diff = np.abs(lab_l(result) - lab_l(source))
    assert float(diff.mean()) < 1.0, diff.mean()
    assert float(np.percentile(diff, 95)) < 2.5


def assert_one_error(run: CliRun) -> None:
    assert run.status != 0
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("chromastream: error: "), run.err
    assert "Traceback" not in run.err


# ------------------------------------------------------------------------------------------ pictures


@pytest.mark.parametrize(("suffix", "out_suffix"), [(".png", ".png"), (".jpg", ".png"), (".bmp", ".jpg")])
def test_grey_picture_keeps_size_and_luminance(
    cli: Cli, tmp_path: Path, suffix: str, out_suffix: str
) -> None:
    grey = grey_picture(75, 101)  # odd sizes on purpose: pictures have no 4:2:0 constraint
    source = write_picture(tmp_path / f"in{suffix}", grey)
    target = tmp_path / f"out{out_suffix}"
    run = cli("colorize", source, target, *FAST, "--quiet")
    assert run.status == 0, run.err
    result = read_rgb(target)
    assert result.shape == (75, 101, 3)
    decoded = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    if out_suffix == ".png":
        assert_same_luminance(decoded, result)
    assert leftovers(tmp_path, {source.name, target.name}) == set()


def test_colour_picture_uses_luminance_and_says_so(cli: Cli, tmp_path: Path) -> None:
    rgb = colour_picture(64, 80)
    source = write_picture(tmp_path / "photo.png", rgb)
    run = cli("colorize", source, tmp_path / "out.png", *FAST)
    assert run.status == 0, run.err
    assert any("already in colour" in line and "luminance" in line for line in run.err_lines), run.err
    assert_same_luminance(rgb, read_rgb(tmp_path / "out.png"))


def test_alpha_is_kept_for_png(cli: Cli, tmp_path: Path) -> None:
    rgba = np.dstack(
        [np.repeat(grey_picture(40, 50)[:, :, None], 3, axis=2), np.full((40, 50), 77, np.uint8)]
    )
    source = write_picture(tmp_path / "logo.png", rgba)
    assert cli("colorize", source, tmp_path / "out.png", *FAST, "-q").status == 0
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (40, 50, 4)
    assert (out[:, :, 3] == 77).all()


def _ramp16(height: int, width: int) -> np.ndarray:
    """A smooth 16-bit ramp: ``width`` grey levels, far more than 8 bits can tell apart."""
    return np.repeat((np.arange(width) * 65535 // (width - 1)).astype(np.uint16)[None], height, axis=0)


@pytest.mark.parametrize(("suffix", "colour"), [(".png", False), (".tif", False), (".tif", True)])
def test_16bit_master_stays_16bit(cli: Cli, tmp_path: Path, suffix: str, colour: bool) -> None:
    grey = _ramp16(24, 1000)
    pixels = np.dstack([grey, grey // 2 + 10000, grey // 3]) if colour else grey
    source = tmp_path / f"master{suffix}"
    assert cv2.imwrite(str(source), pixels)
    target = tmp_path / f"out{suffix}"
    run = cli("colorize", source, target, *FAST, "-q")
    assert run.status == 0, run.err
    out = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (24, 1000, 3)
    assert len(np.unique(out[:, :, 1])) > 600  # the fine steps survive; 8 bits would give at most 256
    rgb_in = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if colour else np.repeat(grey[:, :, None], 3, axis=2)
    l_in = rgb_to_lab(rgb_in.astype(np.float32) / 65535.0)[..., 0]
    l_out = rgb_to_lab(cv2.cvtColor(out, cv2.COLOR_BGR2RGB).astype(np.float32) / 65535.0)[..., 0]
    assert float(np.median(np.abs(l_out - l_in))) < 0.05  # 8-bit rounding alone is ~0.1 of L


def test_16bit_master_to_jpeg_says_it_is_8bit(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "master.png"
    assert cv2.imwrite(str(source), _ramp16(24, 300))
    run = cli("colorize", source, tmp_path / "out.jpg", *FAST)
    assert run.status == 0, run.err
    assert any("16-bit" in line and "output is 8-bit" in line for line in run.err_lines), run.err
    assert cv2.imread(str(tmp_path / "out.jpg"), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_large_picture_strips_match_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big pictures are combined in strips; the result must be what the one-piece path gives."""
    from chromastream.models.runtime.session import ColorizerSession

    session = ColorizerSession(colorize_files.create_backend("auto", None), size=64)
    picture = Picture(colour_picture(150, 130))
    whole = colorize_files.colorize_picture(session, picture)
    monkeypatch.setattr(colorize_files, "_WHOLE_PIXELS", 100)
    monkeypatch.setattr(colorize_files, "_STRIP_PIXELS", 130 * 7)
    strips = colorize_files.colorize_picture(session, picture)
    assert strips.shape == whole.shape
    diff = np.abs(strips.astype(int) - whole.astype(int))
    # The strips resample ab in two separable passes, the whole picture in one: float rounding differs,
    # which flips 8-bit values by one here and there (two at most, through Lab -> RGB), never more.
    assert int(diff.max()) <= 2 and float(np.percentile(diff, 99)) <= 1 and float(diff.mean()) < 0.5


def test_hints_and_no_memory_accepted(cli: Cli, tmp_path: Path) -> None:
    source = write_picture(tmp_path / "in.png", grey_picture(48, 64))
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps([{"x": 0.5, "y": 0.5, "rgb": "#3060c0", "radius": 0.1}]))
    run = cli("colorize", source, tmp_path / "out.png", *FAST, "--hints", hints, "--no-memory", "-q")
    assert run.status == 0, run.err
    assert read_rgb(tmp_path / "out.png").shape == (48, 64, 3)


def test_existing_output_needs_overwrite(cli: Cli, tmp_path: Path) -> None:
    source = write_picture(tmp_path / "in.png", grey_picture(32, 32))
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    run = cli("colorize", source, target, *FAST, "-q")
    assert_one_error(run)
    assert "--overwrite" in run.err
    assert target.read_bytes() == b"keep me"
    assert cli("colorize", source, target, *FAST, "-q", "--overwrite").status == 0
    assert read_rgb(target).shape == (32, 32, 3)


# ------------------------------------------------------------------------------ folders and sequences


def test_folder_of_pictures(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_picture(folder / "a.png", grey_picture(40, 60))
    write_picture(folder / "b.jpg", grey_picture(50, 30))
    write_picture(folder / "c.png", colour_picture(33, 45))
    (folder / "notes.txt").write_text("not a picture")
    target = tmp_path / "colour"
    run = cli("colorize", folder, target, *FAST, "-q")
    assert run.status == 0, run.err
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "b.jpg", "c.png"]
    assert read_rgb(target / "a.png").shape == (40, 60, 3)
    assert read_rgb(target / "b.jpg").shape == (50, 30, 3)
    assert read_rgb(target / "c.png").shape == (33, 45, 3)
    assert leftovers(tmp_path, {"scans", "colour"}) == set()


def test_sequence_keeps_stems_as_png(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):
        write_picture(folder / f"frame{i}.jpg", grey_picture(36, 48))
    target = tmp_path / "out"
    target.mkdir()
    (target / "unrelated.txt").write_text("stays")
    run = cli("colorize", "--sequence", folder, target, *FAST, "-q")
    assert run.status == 0, run.err
    names = sorted(p.name for p in target.iterdir())
    assert names == ["frame1.png", "frame10.png", "frame2.png", "unrelated.txt"]
    assert read_rgb(target / "frame10.png").shape == (36, 48, 3)


def test_sequence_order_is_natural() -> None:
    names = ["f10.png", "f2.png", "f1.png", "F3.png"]
    assert sorted(names, key=natural_key) == ["f1.png", "f2.png", "F3.png", "f10.png"]


def test_folder_keeps_going_past_a_bad_picture(cli: Cli, tmp_path: Path) -> None:
    """One unreadable scan costs only itself: the good ones are written, the failure is named with its
    reason, one line counts written, failed and skipped entries, and the status says something failed."""
    folder = tmp_path / "scans"
    folder.mkdir()
    write_picture(folder / "a.png", grey_picture(40, 60))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_picture(folder / "c.jpg", grey_picture(30, 20))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "raw").mkdir()
    target = tmp_path / "out"
    for flags in ((), ("-q",)):
        run = cli("colorize", folder, target, *FAST, "--overwrite", *flags)
        assert run.status == 1, run.err
        assert sorted(p.name for p in target.iterdir()) == ["a.png", "c.jpg"]
        assert read_rgb(target / "c.jpg").shape == (30, 20, 3)
        failure = [line for line in run.err_lines if "b.png not colorized" in line]
        assert len(failure) == 1 and "cannot decode" in failure[0], run.err
        assert run.err_lines[-1] == (
            f"chromastream: error: {target}: 2 pictures written, 1 failed (b.png), 2 skipped (not pictures)"
        )
        assert "Traceback" not in run.err
    assert leftovers(tmp_path, {"scans", "out"}) == set()


def test_folder_summary_counts_skipped_entries(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_picture(folder / "a.png", grey_picture(40, 60))
    (folder / "notes.txt").write_text("not a picture")
    run = cli("colorize", folder, tmp_path / "out", *FAST)
    assert run.status == 0, run.err
    assert any(
        line.startswith(f"chromastream: {tmp_path / 'out'}: 1 picture written, 0 failed, 1 skipped")
        for line in run.err_lines
    ), run.err
    assert any("notes.txt" in line for line in run.err_lines), run.err


def test_folder_where_every_picture_fails_writes_no_folder(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = cli("colorize", folder, tmp_path / "out", *FAST, "-q")
    assert run.status == 1
    assert "0 pictures written, 1 failed (b.png)" in run.err_lines[-1]
    assert leftovers(tmp_path, {"scans"}) == set()


# ---------------------------------------------------------------------------------------------- errors


def _huge_png_header(path: Path) -> Path:
    """A PNG whose header claims 20000 x 20000 pixels: refused before any decoding."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    return path


ERROR_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing input": (lambda d: [str(d / "nope.png"), str(d / "out.png")], "not found"),
    "empty picture": (lambda d: [str(_write(d / "empty.png", b"")), str(d / "o.png")], "empty"),
    "corrupt picture": (
        lambda d: [str(_write(d / "bad.jpg", b"\xff\xd8\xff garbage")), str(d / "o.png")],
        "cannot decode",
    ),
    "unsupported input": (
        lambda d: [str(_write(d / "notes.txt", b"hello")), str(d / "o.png")],
        "unsupported",
    ),
    "picture to video": (lambda d: [str(_picture(d)), str(d / "o.mp4")], "picture output"),
    "too large": (lambda d: [str(_huge_png_header(d / "huge.png")), str(d / "o.png")], "200 MP"),
    "output folder missing": (
        lambda d: [str(_picture(d)), str(d / "no" / "such" / "o.png")],
        "does not exist",
    ),
    "output under a file": (
        lambda d: [str(_picture(d)), str(_write(d / "f", b"x") / "o.png")],
        "not a directory",
    ),
    "malformed hints": (
        lambda d: [str(_picture(d)), str(d / "o.png"), "--hints", str(_write(d / "h.json", b"[{'x': 1}]"))],
        "hints",
    ),
    "invalid hint": (
        lambda d: [
            str(_picture(d)),
            str(d / "o.png"),
            "--hints",
            str(_write(d / "h.json", b'[{"x": 2, "y": 0}]')),
        ],
        "hint 0",
    ),
    "missing model": (lambda d: [str(_picture(d)), str(d / "o.png"), "--model", str(d / "m.onnx")], "model"),
    "sequence from a file": (lambda d: [str(_picture(d)), str(d / "o.png"), "--sequence"], "--sequence"),
    "folder without pictures": (lambda d: [str(_folder(d)), str(d / "out")], "no pictures"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _picture(folder: Path) -> Path:
    return write_picture(folder / "in.png", grey_picture(24, 32))


def _folder(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_gives_one_error_line(cli: Cli, tmp_path: Path, case: str) -> None:
    make_args, expected = ERROR_CASES[case]
    args = make_args(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    run = cli("colorize", *args, *FAST, "-q")
    assert_one_error(run)
    assert expected in run.err, run.err
    assert leftovers(tmp_path, before) == set(), "an output or a temporary was left behind"


def test_header_size_probes() -> None:
    for suffix in (".png", ".jpg", ".bmp", ".tif", ".webp"):
        ok, data = cv2.imencode(suffix, np.zeros((37, 53, 3), np.uint8))
        assert ok
        assert header_size(data.tobytes()) == (53, 37), suffix
    assert MAX_PIXELS == 200_000_000


def test_unwritable_output_folder(cli: Cli, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes; /proc refuses new files even to root.
        run = cli("colorize", _picture(tmp_path), "/proc/1/o.png", *FAST, "-q")
        assert_one_error(run)
        assert not Path("/proc/1/o.png").exists()
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run = cli("colorize", _picture(tmp_path), locked / "o.png", *FAST, "-q")
        assert_one_error(run)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_interrupt_removes_temporary(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> bytes:
        raise KeyboardInterrupt

    source = _picture(tmp_path)
    monkeypatch.setattr(colorize_files, "_write", interrupted)
    run = cli("colorize", source, tmp_path / "o.png", *FAST, "-q")
    assert run.status == 130
    assert leftovers(tmp_path, {source.name}) == set()


def test_info_lines_go_to_stderr_unless_quiet(
    cli: Cli, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _picture(tmp_path)
    with caplog.at_level(logging.INFO):
        loud = cli("colorize", source, tmp_path / "a.png", *FAST)
    assert loud.status == 0 and "wrote" in loud.err
    quiet = cli("colorize", source, tmp_path / "b.png", *FAST, "--quiet")
    assert quiet.status == 0 and quiet.err == ""


# ------------------------------------------------------------------------------- the real command line


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("chromastream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "chromastream.stream.cli"]


def test_console_script_picture_and_error(tmp_path: Path) -> None:
    source = _picture(tmp_path)
    ok = subprocess.run(
        [*_console_script(), "colorize", str(source), str(tmp_path / "o.jpg"), *FAST],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert read_rgb(tmp_path / "o.jpg").shape == (24, 32, 3)
    bad = subprocess.run(
        [*_console_script(), "colorize", str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"chromastream: error: input not found: {tmp_path / 'missing.mp4'}"
    ]
    assert not (tmp_path / "o.mp4").exists()


def test_console_script_folder_with_a_damaged_picture(tmp_path: Path) -> None:
    """What a terminal shows: our lines only (OpenCV's own decoder warnings stay quiet), status 1."""
    folder = tmp_path / "scans"
    folder.mkdir()
    write_picture(folder / "a.png", grey_picture(24, 32))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    done = subprocess.run(
        [*_console_script(), "colorize", str(folder), str(tmp_path / "out"), *FAST],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("chromastream: ") for line in lines), lines
    assert lines[-1].startswith("chromastream: error: ") and "1 failed (b.png)" in lines[-1]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_usage_lists_colorize() -> None:
    out = subprocess.run(
        [*_console_script(), "colorize", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for option in (
        "--demo",
        "--size",
        "--backend",
        "--model",
        "--no-memory",
        "--hints",
        "--quiet",
        "--overwrite",
    ):
        assert option in out


def test_output_formats_are_named_alike_in_help_and_every_message(cli: Cli, tmp_path: Path) -> None:
    """One list of formats: ``--help`` and each refusal name the same outputs, so none contradicts another."""
    from tests.conftest import ClipSpec, make_clip

    videos_out = ".mp4, .mkv, .mov, .avi"
    pictures = ".png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp"
    help_text = subprocess.run(
        [*_console_script(), "colorize", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert f"videos out (H.264): {videos_out}" in help_text
    assert f"pictures, in and out: {pictures}" in help_text
    clip = make_clip(tmp_path / "in.webm", ClipSpec(frames=2, codec="libvpx-vp9"))
    for name in ("out.webm", "out.png", "out.gif"):
        run = cli("colorize", clip, tmp_path / name, "-q")
        assert_one_error(run)
        assert f"a video input needs a video output ({videos_out}: H.264), got {name}" in run.err, run.err
    for name in ("out.mp4", "out.gif"):
        run = cli("colorize", _picture(tmp_path), tmp_path / name, "-q")
        assert_one_error(run)
        assert f"a picture input needs a picture output ({pictures}), got {name}" in run.err, run.err


def test_demo_writes_default_name(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``colorize --demo`` is the first command of the README: it must work from any directory."""
    from chromastream.stream import cli as cli_module

    # A two-second cut of the bundled clip keeps the test fast; the asset itself is checked below.
    clip = cli_module.demo_clip()
    assert clip.is_file() and clip.stat().st_size < 1_500_000
    short = workdir / "short.mp4"
    _cut(clip, short, seconds=2.0)
    monkeypatch.setattr(cli_module, "demo_clip", lambda: short)
    run = cli("colorize", "--demo", *FAST, "-q")
    assert run.status == 0, run.err
    assert (workdir / "chromastream-demo.mp4").is_file()
    run = cli("colorize", "--demo", "mine.mkv", *FAST, "-q")
    assert run.status == 0, run.err
    assert (workdir / "mine.mkv").is_file()


def _cut(source: Path, target: Path, seconds: float) -> None:
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        streams = {
            s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")
        }
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None or packet.pts is None or packet.pts * packet.time_base >= seconds:
                continue
            packet.stream = streams[packet.stream_index]
            out.mux(packet)


def test_demo_asset_is_grey_and_licensed() -> None:
    import av

    from chromastream.stream.cli import demo_clip

    with av.open(str(demo_clip())) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (768, 432)
        frame = next(container.decode(video))
        chroma = frame.to_ndarray()[432:]
        assert np.abs(chroma.astype(int) - 128).max() <= 2
    notice = (Path(__file__).resolve().parents[1] / "NOTICE").read_text()
    assert "CC BY 4.0" in notice and "Apache" in notice


def test_serve_flags_lay_over_the_defaults() -> None:
    from chromastream.stream.cli import _serve_config, build_parser
    from chromastream.stream.config import PipelineConfig

    args = build_parser().parse_args(["serve", "--detector-rate", "0.5", "--size", "224"])
    config = _serve_config(args)
    assert config.pipeline.detector_rate == 0.5 and config.pipeline.size == 224
    assert [s.id for s in config.streams] == ["demo"]  # no source, no config: the bundled clip
    default = _serve_config(build_parser().parse_args(["serve"]))
    assert default.pipeline.detector_rate == PipelineConfig().detector_rate == 2.0


@pytest.mark.parametrize("value", ["-1", "x", "nan", "500"])
def test_serve_refuses_a_bad_detector_rate(capsys: pytest.CaptureFixture[str], value: str) -> None:
    from chromastream.stream.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", f"--detector-rate={value}"])
    assert exit_info.value.code == 2
    assert "--detector-rate" in capsys.readouterr().err
