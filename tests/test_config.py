"""The ``serve`` configuration tree: YAML, flags over it, its documents, and file streams that loop.

``docs/serve.example.yaml`` and ``docs/CONFIG.md`` are checked against the dataclasses here, so adding a
setting without documenting it fails a test instead of leaving the documents behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from chromastream.stream.cli import SERVE_FLAGS, _serve_config, build_parser, main
from chromastream.stream.config import (
    ConfigError,
    EventsConfig,
    RecordConfig,
    ServeConfig,
    StreamConfig,
    WebRTCConfig,
    load_config,
    parse_config,
)
from chromastream.stream.config_reference import EXAMPLE, field_docs, render, sections
from chromastream.stream.pipeline import _source_options
from chromastream.stream.server import serve
from chromastream.stream.sources import FileSource, RtspSource, SyntheticSource, open_source
from tests.conftest import ClipSpec, make_clip

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE_FILE = DOCS / "serve.example.yaml"
REFERENCE_FILE = DOCS / "CONFIG.md"


def _write(tmp_path: Path, text: str, name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------- documents


def test_every_setting_has_a_docstring() -> None:
    for path, cls in sections():
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not missing, f"{path or 'top level'}: no docstring for {sorted(missing)}"


def test_example_file_lists_every_setting_at_its_default() -> None:
    text = EXAMPLE_FILE.read_text()
    assert load_config(EXAMPLE_FILE) == ServeConfig()  # what it shows are the real defaults
    raw = yaml.safe_load(text)
    for path, cls in sections():
        if "[]" in path:
            continue  # list entries: the commented examples, checked below
        data = raw
        for part in filter(None, path.split(".")):
            data = data[part]
        assert set(data) == {f.name for f in dataclasses.fields(cls)}, path or "top level"
    settings = text.split("\n# streams:")[0]
    for line in settings.splitlines():
        if re.match(r"\s*\w+:\s*\S", line):  # a key with a value: it says what it is for
            assert re.search(r"\S\s+# \w", line), f"no comment: {line!r}"


def test_example_streams_are_valid_and_use_every_stream_key() -> None:
    text = EXAMPLE_FILE.read_text()
    block = text[text.index("\n# streams:") + 1 :]
    uncommented = "\n".join(line.removeprefix("# ").removeprefix("#") for line in block.splitlines())
    raw = yaml.safe_load(uncommented)
    config = parse_config(raw, DOCS)
    gate, lobby = config.streams
    assert gate.url.startswith("rtsp://viewer:secret@") and gate.record is not None
    assert gate.record.path == DOCS / "recordings/gate.mp4" and gate.record.retain_hours == 168
    record_keys = re.findall(r"^#\s{7}(\w+):", block, re.MULTILINE)
    assert set(record_keys) == {f.name for f in dataclasses.fields(RecordConfig)}
    assert len(gate.hints) == 1 and lobby.url == str(DOCS / "videos/lobby.mp4") and lobby.loops
    used = {key for stream in raw["streams"] for key in stream}
    (stream_path,) = [path for path, cls in sections() if cls is StreamConfig]
    assert used == {f.name for f in dataclasses.fields(StreamConfig)}, stream_path


def test_reference_is_generated_from_the_dataclasses() -> None:
    """docs/CONFIG.md is the generator's output; after changing stream/config.py, regenerate it with
    ``python -m chromastream.stream.config_reference > docs/CONFIG.md``."""
    assert REFERENCE_FILE.read_text() == render(), "docs/CONFIG.md is stale: regenerate it (see docstring)"
    text = render()
    for path, cls in sections():
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"{path}.{f.name}"
    assert "| `bitrate` | integer | `1500000` | `--bitrate` | Bits per second" in text
    assert "| `loop` | true/false or null | `null` |" in text


def test_reference_example_is_a_valid_config(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_load(EXAMPLE), tmp_path)
    assert config.webrtc.bitrate == 2_500_000 and [s.id for s in config.streams] == ["gate", "lobby"]
    assert f"```yaml\n{EXAMPLE}```" in render()


def test_serve_help_points_to_the_documents(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "docs/CONFIG.md" in out and "docs/serve.example.yaml" in out


# -------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("webrtc: {bitrate: 10}", "webrtc.bitrate: must be in 50000..100000000 bits per second, got 10"),
        ("webrtc: {max_viewers: 0}", "webrtc.max_viewers: must be in 1..1024, got 0"),
        ("webrtc: {keyframe_interval: 0}", "webrtc.keyframe_interval: must be in 1..1000 frames"),
        ("webrtc: {bitrate: 1500000.0}", "webrtc.bitrate: must be an integer, got float"),
        ("webrtc: {ice_loopback: 1}", "webrtc.ice_loopback: must be true or false"),
        ("webrtc: {viewers: 3}", "webrtc.viewers: unknown key; expected one of bitrate, connect_timeout_s"),
        ("webrtc: {connect_timeout_s: 0}", "webrtc.connect_timeout_s: must be in 1..600 seconds, got 0"),
        ("webrtc: {disconnect_grace_s: .nan}", "webrtc.disconnect_grace_s: must be in 0..600 seconds"),
        ("events: {queue_size: 0}", "events.queue_size: must be in 1..10000, got 0"),
        ("events: 5", "events: must be a mapping of keys, got int"),
        ("sse_queue: 4", "sse_queue: unknown key"),
        ("streams: [{id: a, url: x.mp4, loop: maybe}]", "streams[0].loop: must be true or false"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert needle in str(info.value)


def test_relative_file_urls_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "streams:\n"
        "  - {id: a, url: clips/a.mp4}\n"
        "  - {id: b, url: /srv/b.mp4}\n"
        "  - {id: c, url: 'rtsp://u:p@cam/1'}\n"
        "  - {id: d, url: 'synthetic:?fps=5'}\n"
        "  - {id: e, url: 'file:///srv/e.mp4'}\n",
    )
    urls = [s.url for s in load_config(path).streams]
    local = str(tmp_path / "clips/a.mp4")
    assert urls == [local, "/srv/b.mp4", "rtsp://u:p@cam/1", "synthetic:?fps=5", "file:///srv/e.mp4"]


# --------------------------------------------------------------------------------------- flags


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "port: 9000\npipeline: {size: 128, max_batch: 4}\n"
        "webrtc: {bitrate: 2000000, max_viewers: 4}\nevents: {queue_size: 5}\n",
    )
    args = [
        "serve",
        "--config",
        str(path),
        "--bitrate",
        "3000000",
        "--size",
        "96",
        "--keyframe-interval",
        "30",
    ]
    config = _serve_config(build_parser().parse_args(args))
    assert config.webrtc == WebRTCConfig(bitrate=3_000_000, max_viewers=4, keyframe_interval=30)
    assert (config.pipeline.size, config.pipeline.max_batch, config.port) == (96, 4, 9000)
    assert config.events == EventsConfig(queue_size=5) and config.streams == ()
    plain = _serve_config(build_parser().parse_args(["serve", "--max-viewers", "2"]))
    assert plain.webrtc.max_viewers == 2 and plain.webrtc.bitrate == WebRTCConfig().bitrate


def test_every_flag_sets_a_key_of_the_tree() -> None:
    keys = {f"{path}.{f.name}".lstrip(".") for path, cls in sections() for f in dataclasses.fields(cls)}
    assert set(SERVE_FLAGS.values()) <= keys


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-viewers", "0", "must be in 1..1024, got 0"),
        ("--bitrate", "1.5M", "not a whole number"),
        ("--keyframe-interval", "5000", "must be in 1..1000, got 5000"),
    ],
)
def test_bad_flag_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", f"{flag}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and message in err


def test_plain_serve_and_sources_share_the_file_rule(tmp_path: Path) -> None:
    demo = _serve_config(build_parser().parse_args(["serve"])).streams[0]
    assert demo.loop is None and demo.loops and demo.realtime
    cam, clip = _serve_config(
        build_parser().parse_args(["serve", "--source", "rtsp://c/1", "--source", "a.mp4"])
    ).streams
    assert (cam.loops, clip.loops) == (False, True)


# ------------------------------------------------------------------------------- file looping


@pytest.mark.parametrize(
    ("stream", "kind", "loops"),
    [
        ({"url": "clip.mp4"}, FileSource, True),
        ({"url": "clip.mp4", "loop": False}, FileSource, False),
        ({"url": "rtsp://viewer:pw@10.0.0.7/s1"}, RtspSource, None),
        ({"url": "synthetic:?fps=5"}, SyntheticSource, None),
    ],
)
def test_sources_open_with_the_loop_rule(
    tmp_path: Path, stream: dict[str, Any], kind: type[Any], loops: bool | None
) -> None:
    """A file loops unless told not to; a camera or test pattern without ``loop`` opens as before."""
    make_clip(tmp_path / "clip.mp4", ClipSpec(frames=3))
    (cfg,) = parse_config({"streams": [{"id": "s", **stream}]}, tmp_path).streams
    source = open_source(cfg.id, cfg.url, **_source_options(cfg))
    assert isinstance(source, kind)
    assert getattr(source, "loop", None) is loops


async def _serve_and_watch(
    config: ServeConfig, until: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> dict[str, Any]:
    """Run ``serve`` with ``config`` until its one stream, as ``GET /api/streams`` reports it, satisfies
    ``until``; return that report."""
    stop = asyncio.Event()
    announced: list[str] = []
    server = asyncio.create_task(serve(config, announce=announced.append, stop=stop))
    try:
        async with asyncio.timeout(timeout), ClientSession() as session:
            while not announced:
                if server.done():
                    server.result()
                await asyncio.sleep(0.05)
            while True:
                async with session.get(f"{announced[0]}api/streams") as response:
                    (stream,) = (await response.json())["streams"]
                if until(stream):
                    return dict(stream)
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await server


CLIP_FRAMES = 8


def _file_config(tmp_path: Path, extra: str = "") -> ServeConfig:
    make_clip(tmp_path / "clip.mp4", ClipSpec(frames=CLIP_FRAMES))
    text = (
        "port: 0\npipeline: {size: 64, detector_rate: 0}\n"
        f"streams:\n  - id: clip\n    url: clip.mp4\n    realtime: false\n{extra}"
    )
    return load_config(_write(tmp_path, text))


def _over(stream: dict[str, Any]) -> bool:
    return stream["state"] in ("ended", "failed")


def test_a_configured_file_keeps_playing_past_its_end(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    assert config.streams[0].loop is None  # nothing said: a file loops
    stream = asyncio.run(_serve_and_watch(config, lambda s: s["frames_out"] >= 3 * CLIP_FRAMES or _over(s)))
    assert stream["state"] == "running" and stream["frames_out"] >= 3 * CLIP_FRAMES, stream


def test_a_configured_file_with_loop_false_plays_once(tmp_path: Path) -> None:
    config = _file_config(tmp_path, "    loop: false\n")
    stream = asyncio.run(_serve_and_watch(config, _over))
    assert stream["state"] == "ended" and stream["frames_out"] == CLIP_FRAMES, stream


def test_loop_on_a_camera_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path,
        "port: 0\npipeline: {size: 64, detector_rate: 0}\n"
        "streams: [{id: gate, url: 'rtsp://viewer:pw@127.0.0.1:9/s1', loop: true}]\n",
    )
    assert main(["serve", "--config", str(path)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("chromastream: error")]
    assert len(err) == 1, err
    assert "stream 'gate'" in err[0] and "does not take option(s) loop" in err[0], err
