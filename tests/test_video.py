"""``chromastream colorize`` on video files: frames, timestamps, luminance, audio passthrough, damage.

Clips are synthetic and tiny (64x48, a dozen frames) so each test runs in well under a second or two.
Exact luminance is checked with a lossless encoder setting (the Y plane goes through untouched, so only
the encoder could change it); the default lossy setting is checked with a small tolerance.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from chromastream.stream import video_io
from chromastream.stream.av_glue import AVCOL_RANGE_JPEG, AVCOL_RANGE_MPEG
from tests.conftest import FAST, ClipSpec, CliRun, leftovers, make_clip, read_clip
from tests.test_cli import _console_script

Cli = Callable[..., CliRun]


@pytest.fixture
def lossless(monkeypatch: pytest.MonkeyPatch) -> None:
    """x264 at QP 0 is lossless: any Y difference would then come from the pipeline itself."""
    monkeypatch.setattr(video_io, "ENCODER_OPTIONS", {"preset": "ultrafast", "qp": "0"})


def assert_one_error(run: CliRun) -> None:
    assert run.status != 0
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("chromastream: error: ")


def test_round_trip_keeps_frames_timestamps_and_audio(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", ClipSpec(frames=15, audio="aac"))
    target = tmp_path / "out.mp4"
    run = cli("colorize", source, target, *FAST, "-q")
    assert run.status == 0, run.err
    before, after = read_clip(source), read_clip(target)
    assert (after.width, after.height) == (before.width, before.height)
    assert after.codec == "h264" and after.pix_fmt == "yuv420p"
    assert after.times == before.times
    assert len(after.lumas) == 15
    assert after.audio_packets == before.audio_packets and len(after.audio_packets) > 10
    assert after.audio_times == before.audio_times
    diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(after.lumas, before.lumas, strict=True)]
    assert max(float(d.mean()) for d in diffs) < 2.5  # lossy re-encode (CRF 20) of a busy 64x48 pattern
    assert after.color_range == AVCOL_RANGE_MPEG
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == set()


@pytest.mark.usefixtures("lossless")
def test_luma_passes_through_exactly(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mkv", ClipSpec(frames=8, codec="ffv1"))
    run = cli("colorize", source, tmp_path / "out.mkv", *FAST, "-q", "--no-memory")
    assert run.status == 0, run.err
    before, after = read_clip(source), read_clip(tmp_path / "out.mkv")
    for a, b in zip(after.lumas, before.lumas, strict=True):
        assert np.array_equal(a, b)
    assert after.times == before.times


@pytest.mark.usefixtures("lossless")
def test_full_range_source_keeps_its_range(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.avi", ClipSpec(frames=6, codec="mjpeg", color_range=2))
    assert read_clip(source).pix_fmt == "yuvj420p"
    run = cli("colorize", source, tmp_path / "out.mkv", *FAST, "-q")
    assert run.status == 0, run.err
    before, after = read_clip(source), read_clip(tmp_path / "out.mkv")
    assert after.color_range == AVCOL_RANGE_JPEG
    for a, b in zip(after.lumas, before.lumas, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.usefixtures("lossless")
@pytest.mark.parametrize("pix_fmt", ["gray", "bgr0", "yuv444p"])
def test_other_pixel_formats_and_odd_sizes(cli: Cli, tmp_path: Path, pix_fmt: str) -> None:
    spec = ClipSpec(frames=5, codec="ffv1", pix_fmt=pix_fmt, width=65, height=49)
    source = make_clip(tmp_path / "in.mkv", spec)
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q")
    assert run.status == 0, run.err
    after = read_clip(tmp_path / "out.mp4")
    assert (after.width, after.height) == (64, 48)  # 4:2:0 needs even sizes: cropped by one pixel
    assert len(after.lumas) == 5
    assert after.times == read_clip(source).times


@pytest.mark.usefixtures("lossless")
def test_variable_frame_rate_timestamps_are_copied(cli: Cli, tmp_path: Path) -> None:
    pts = [0, 1, 2, 5, 6, 10, 11, 20]
    source = make_clip(tmp_path / "in.mkv", ClipSpec(codec="ffv1", pts=pts, time_base=Fraction(1, 25)))
    assert cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q").status == 0
    assert read_clip(tmp_path / "out.mp4").times == [Fraction(p, 25) for p in pts]


def test_colour_video_logs_luminance_line(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", ClipSpec(frames=4, colour=True))
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST)
    assert run.status == 0, run.err
    assert sum("already in colour" in line and "luminance" in line for line in run.err_lines) == 1


def test_hints_and_no_memory_on_video(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", ClipSpec(frames=4))
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"hints": [{"x": 0.2, "y": 0.8, "a": 20, "b": -30}]}))
    run = cli("colorize", source, tmp_path / "out.mkv", *FAST, "-q", "--no-memory", "--hints", hints)
    assert run.status == 0, run.err
    assert len(read_clip(tmp_path / "out.mkv").lumas) == 4


def test_corrupt_frame_fails_unless_partial_is_allowed(cli: Cli, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mkv", ClipSpec(frames=10, codec="mjpeg", garbage_at=(4,)))
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST)
    assert_one_error(run)
    assert "in.mkv is damaged: a video packet at 0.160s cannot be decoded" in run.err, run.err
    assert "after 4 frames" in run.err and "--allow-partial" in run.err, run.err
    assert leftovers(tmp_path, {"in.mkv"}) == set()

    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "--allow-partial")
    assert run.status == 0, run.err
    assert any("skipping a corrupt video packet" in line for line in run.err_lines), run.err
    assert any("skipped 1 corrupt" in line for line in run.err_lines), run.err
    after = read_clip(tmp_path / "out.mp4")
    assert len(after.lumas) == 9
    assert Fraction(4, 25) not in after.times


def _cut(path: Path, share: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name("cut" + path.suffix)
    cut.write_bytes(data[: int(len(data) * share)])
    path.unlink()
    return cut


def _faststart(path: Path) -> Path:
    """The same clip with its index at the front (how MP4s for the web are written): a truncated copy
    still opens, and declares all its frames."""
    import av

    moved = path.with_name("front" + path.suffix)
    with av.open(str(path)) as inp, av.open(str(moved), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    path.unlink()
    return moved


def test_truncated_matroska_is_reported_not_passed_off_as_whole(cli: Cli, tmp_path: Path) -> None:
    """A cut-off recording decodes without a single error: only its declared length gives it away."""
    source = _cut(make_clip(tmp_path / "rec.mkv", ClipSpec(frames=100, audio="aac")), 0.5)
    run = cli("colorize", source, tmp_path / "out.mkv", *FAST, "-q")
    assert_one_error(run)
    assert "cut.mkv ends early: decoded " in run.err, run.err
    assert " s of 4.0 s); the rest is missing or damaged" in run.err, run.err
    assert "--allow-partial" in run.err
    assert leftovers(tmp_path, {"cut.mkv"}) == set()

    run = cli("colorize", source, tmp_path / "out.mkv", *FAST, "-q", "--allow-partial")
    assert run.status == 0, run.err
    frames = len(read_clip(tmp_path / "out.mkv").lumas)
    assert 20 < frames < 80
    assert run.err_lines == [
        f"chromastream: cut.mkv ends early: decoded {frames} frames ({frames / 25:.1f} s of 4.0 s); "
        "the rest is missing or damaged, so the output is partial"
    ]


def test_truncated_mp4_says_how_many_frames_were_lost(cli: Cli, tmp_path: Path) -> None:
    source = _cut(_faststart(make_clip(tmp_path / "in.mp4", ClipSpec(frames=100))), 0.5)
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q")
    assert_one_error(run)
    assert "cut.mp4 ends early: decoded " in run.err and " of 100 frames (" in run.err, run.err
    assert leftovers(tmp_path, {"cut.mp4"}) == set()
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q", "--allow-partial")
    assert run.status == 0, run.err
    assert any("of 100 frames" in line and "output is partial" in line for line in run.err_lines), run.err
    assert 20 < len(read_clip(tmp_path / "out.mp4").lumas) < 80


def test_audio_codec_the_container_cannot_hold(cli: Cli, tmp_path: Path) -> None:
    """G.711 µ-law (common from CCTV cameras) fits AVI and MOV but not MP4: say so, suggest one that fits."""
    source = make_clip(tmp_path / "cam.avi", ClipSpec(frames=4, codec="mjpeg", audio="pcm_mulaw"))
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q")
    assert_one_error(run)
    assert "pcm_mulaw" in run.err and ".mov" in run.err, run.err
    assert leftovers(tmp_path, {"cam.avi"}) == set()
    ok = cli("colorize", source, tmp_path / "out.mov", *FAST, "-q")
    assert ok.status == 0, ok.err
    assert read_clip(tmp_path / "out.mov").audio_packets == read_clip(source).audio_packets


def _truncated(folder: Path) -> Path:
    clip = make_clip(folder / "whole.mp4", ClipSpec(frames=10))
    data = clip.read_bytes()
    clip.unlink()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    return folder / "cut.mp4"


def _audio_only(folder: Path) -> Path:
    import av

    path = folder / "sound.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return path


BAD_VIDEOS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "garbage": (
        lambda d: _put(d / "x.mp4", b"\x00" * 64 + b"not a video" * 100),
        "out.mp4",
        "cannot read video",
    ),
    "empty": (lambda d: _put(d / "x.mkv", b""), "out.mp4", "empty"),
    "truncated": (_truncated, "out.mp4", "cannot read video"),
    "no video stream": (_audio_only, "out.mkv", "no video stream"),
    "webm output": (lambda d: make_clip(d / "in.mp4", ClipSpec(frames=2)), "out.webm", ".mp4"),
    "video to picture": (lambda d: make_clip(d / "in.mp4", ClipSpec(frames=2)), "out.png", "video output"),
}


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_VIDEOS))
def test_bad_video_gives_one_error_line(cli: Cli, tmp_path: Path, case: str) -> None:
    make, out_name, expected = BAD_VIDEOS[case]
    source = make(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    run = cli("colorize", source, tmp_path / out_name, *FAST, "-q")
    assert_one_error(run)
    assert expected in run.err, run.err
    assert leftovers(tmp_path, before) == set()


def test_interrupt_mid_video_removes_temporary(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chromastream.stream import colorize_files

    real = colorize_files.chroma_function

    def failing(session: object) -> video_io.ChromaFn:
        inner = real(session)  # type: ignore[arg-type]
        calls = [0]

        def chroma(y: np.ndarray, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
            calls[0] += 1
            if calls[0] == 3:
                raise KeyboardInterrupt
            return inner(y, full_range)

        return chroma

    monkeypatch.setattr(colorize_files, "chroma_function", failing)
    source = make_clip(tmp_path / "in.mp4", ClipSpec(frames=8, audio="aac"))
    run = cli("colorize", source, tmp_path / "out.mp4", *FAST, "-q")
    assert run.status == 130
    assert leftovers(tmp_path, {"in.mp4"}) == set()


@pytest.mark.parametrize(
    ("sig", "status", "said"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_stop_signal_mid_video_removes_temporary(tmp_path: Path, sig: int, status: int, said: str) -> None:
    """``timeout``, ``docker stop`` and systemd stop a run with SIGTERM: it must clean up like Ctrl-C."""
    source = make_clip(
        tmp_path / "in.mp4", ClipSpec(frames=1500, width=160, height=96, options={"preset": "ultrafast"})
    )
    target = tmp_path / "out.mp4"
    with subprocess.Popen(
        [*_console_script(), "colorize", str(source), str(target), *FAST],
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".out.") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside the frames, not at the first one
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines()[-1] == f"chromastream: {said}", err
    assert "Traceback" not in err
    assert leftovers(tmp_path, {"in.mp4"}) == set()
