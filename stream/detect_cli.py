"""``chromastream detect``: the deepfake verdict of a picture or a video file.

A video is sampled the way the live pipeline samples a stream (a few frames per second, docs/ARCHITECTURE.md,
Contracts), each sampled frame goes through the detector (faces -> aligned crops -> calibrated P(fake) -> face
tracks), and the clip's answer is its most suspicious track. The aggregation window spans all sampled frames,
so each track's probability is a trimmed mean over the whole clip rather than over its last few samples. A
clip in which no face is ever found is ``no_face`` with a null probability, never a guess.

The input is checked (readable, a video stream, a usable size) before any model is loaded, so a bad
path costs nothing and reads as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from chromastream.stream.arg_types import number, whole_number
from chromastream.stream.errors import InputError, UsageError

if TYPE_CHECKING:
    from chromastream.models.detector.detector import ClipVerdict, DeepfakeDetector

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

DEFAULT_RATE = 2.0
DEFAULT_MAX_FRAMES = 32
#: Smallest picture or video frame accepted: below this no face detector can find anything.
MIN_SIDE = 16


@dataclass(frozen=True)
class SampledFrame:
    """One frame picked for analysis: RGB pixels, its pts and time in seconds (``None`` for a picture)."""

    rgb: U8
    pts: int | None
    time: float | None


def _check_size(path: Path, width: int, height: int, what: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(
            f"{path} is a {width}x{height} {what}: too small to hold a face "
            f"(at least {MIN_SIDE}x{MIN_SIDE} pixels needed)"
        )


def read_picture(path: Path) -> SampledFrame:
    """A still picture as one sampled frame (grey pictures are analysed as grey)."""
    from chromastream.stream.image_io import read_image

    picture = read_image(path)
    _check_size(path, picture.width, picture.height, "picture")
    return SampledFrame(picture.pixels, None, None)


def sample_video(path: Path, rate: float, max_frames: int) -> Iterator[SampledFrame]:
    """Decoded RGB frames of ``path``, the first frame at or after each multiple of ``1/rate`` seconds,
    at most ``max_frames`` of them. Every failure is an :class:`InputError` naming the file; a damaged
    tail after some frames were read ends the sampling with a warning."""
    import av
    import av.error

    from chromastream.stream.av_glue import open_input, time_base

    if rate <= 0:
        raise UsageError(f"--rate must be positive, got {rate}")
    with open_input(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        video = container.streams.video[0]
        _check_size(path, video.codec_context.width, video.codec_context.height, "video")
        video.thread_type = "AUTO"
        base = time_base(video)
        frame_rate = video.average_rate or video.guessed_rate or Fraction(25)
        step = 1.0 / rate
        next_time = 0.0
        sampled = 0
        index = -1
        frames = container.decode(video)
        while sampled < max_frames:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                if sampled == 0:
                    raise InputError(f"cannot decode video {path}: {exc.strerror or exc}") from exc
                logger.warning("%s: stopped at a damaged part (%s)", path.name, exc.strerror or exc)
                break
            index += 1
            pts = frame.pts
            seconds = float(pts * base) if pts is not None else index / float(frame_rate)
            if sampled == 0:
                next_time = seconds  # clips need not start at 0
            if seconds + 1e-6 < next_time:
                continue
            next_time += step
            sampled += 1
            yield SampledFrame(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8), pts, seconds)
        if sampled == 0:
            raise InputError(f"no video frame of {path} could be decoded (corrupt or truncated?)")


def build_detector(window: int) -> DeepfakeDetector:
    """The shipped detector (classifier + YuNet). A model problem raises a
    :class:`~chromastream.models.detector.DetectorError`, which the command line shows as one line."""
    from chromastream.models.detector.detector import DeepfakeDetector

    return DeepfakeDetector(window=window)


def _is_picture(path: Path) -> bool:
    from chromastream.stream.image_io import is_image_path

    return is_image_path(path)


def detect_file(
    path: Path,
    rate: float = DEFAULT_RATE,
    max_frames: int = DEFAULT_MAX_FRAMES,
    detector: DeepfakeDetector | None = None,
) -> dict[str, Any]:
    """The verdict of one picture or video as a JSON-ready dict (what ``detect --json`` prints)."""
    from chromastream.models.detector import DetectorError
    from chromastream.models.detector.detector import ClipVerdict

    if max_frames < 1:
        raise UsageError(f"--max-frames must be at least 1, got {max_frames}")
    picture = _is_picture(path)
    frames: Iterator[SampledFrame]
    if picture:
        frames = iter([read_picture(path)])
    else:
        frames = sample_video(path, rate, max_frames)
        first = next(frames)  # opens and checks the video before a model is loaded
        frames = _chain(first, frames)
    if detector is None:
        detector = build_detector(window=max(8, max_frames))
    detector.reset()
    clip = ClipVerdict(detector)
    times: dict[int | None, float | None] = {}
    try:
        for frame in frames:
            times[frame.pts] = frame.time
            clip.add(detector.sample(frame.rgb, frame.pts))
    except DetectorError as exc:
        raise InputError(f"{path}: {exc}") from exc
    return _result(path, "image" if picture else "video", clip, times, rate, max_frames)


def _chain(first: SampledFrame, rest: Iterator[SampledFrame]) -> Iterator[SampledFrame]:
    yield first
    yield from rest


def _result(
    path: Path,
    kind: str,
    clip: ClipVerdict,
    times: dict[int | None, float | None],
    rate: float,
    max_frames: int,
) -> dict[str, Any]:
    info = clip.detector.classifier.info
    probability = clip.probability
    tracks = []
    for record in clip.ranked_tracks():
        entry = record.to_json()
        entry["first_time"] = _seconds(times.get(record.first_pts))
        entry["last_time"] = _seconds(times.get(record.last_pts))
        tracks.append(entry)
    out: dict[str, Any] = {
        "input": str(path),
        "kind": kind,
        "fake_probability": None if probability is None else round(probability, 4),
        "label": clip.label,
        "faces": len(tracks),
        "frames_sampled": clip.frames_sampled,
        "frames_with_faces": clip.frames_with_faces,
        "tracks": tracks,
        "detector": clip.detector.version,
        "threshold": float(info.threshold),
        "uncertain_band": float(info.uncertain_band),
    }
    if kind == "video":
        out["rate"] = rate
        out["max_frames"] = max_frames
    return out


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human-readable form of a :func:`detect_file` result."""
    name = Path(str(result["input"])).name
    sampled = result["frames_sampled"]
    where = "the picture" if result["kind"] == "image" else f"{sampled} sampled frame(s)"
    if result["fake_probability"] is None:
        return [f"{name}: no_face: no face found in {where} (no probability)"]
    low = result["threshold"] - result["uncertain_band"]
    high = result["threshold"] + result["uncertain_band"]
    lines = [
        f"{name}: {result['label']}  P(fake) = {result['fake_probability']:.3f}  "
        f"(real below {low:.2f}, fake from {high:.2f}; detector {result['detector']})",
        f"  {result['faces']} face track(s) in {where}, {result['frames_with_faces']} with a face",
    ]
    for track in result["tracks"]:
        span = ""
        if track.get("first_time") is not None:
            span = f"  {track['first_time']:.2f}-{track['last_time']:.2f} s"
        box = ", ".join(f"{v:.0f}" for v in track["box"])
        lines.append(
            f"  track {track['track']}: {track['label']:<9} {track['probability']:.3f}  "
            f"{track['samples']} sample(s){span}  last box [{box}]"
        )
    return lines


_EPILOG = """\
The answer is one of real / fake / uncertain / no_face with the calibrated probability that a face is
manipulated (null when no face is found). A video's verdict is its most suspicious face track; each
track's probability is a trimmed mean over the frames it was seen in. Exit status 0 whatever the
verdict; non-zero only when the input cannot be analysed."""


def add_detect(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``detect`` on the ``chromastream`` command."""
    parser = subparsers.add_parser(
        "detect",
        help="deepfake verdict of a picture or a video (calibrated probability, per face track)",
        description="Find faces and estimate the probability that they are manipulated (deepfake).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="picture or video file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument(
        "--rate",
        type=number(0, above=True),
        default=DEFAULT_RATE,
        metavar="N",
        help=f"video frames sampled per second (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--max-frames",
        type=whole_number(1),
        default=DEFAULT_MAX_FRAMES,
        metavar="N",
        help=f"at most this many sampled video frames (default {DEFAULT_MAX_FRAMES})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.set_defaults(handler=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    result = detect_file(args.input, rate=args.rate, max_frames=args.max_frames)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(summary_lines(result)))
    return 0
