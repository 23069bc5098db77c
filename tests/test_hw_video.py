"""The live video path on the GPU's video engines where they exist, in software with one log line where not.

What runs where: the tests without a mark run on every machine and, on one without an NVIDIA GPU (or with
one that has no NVENC), check the software fallback for real: ``serve`` with ``sources.decode: nvdec`` and
a file and a camera (the GStreamer RTSP server of ``tests/rtsp_fixtures.py``), ``webrtc.h264_encoder:
nvenc`` for WebRTC and the RTSP push, the H.264 level that the SPS states, and headless Chromium playing
a 1080p H.264 stream. The ``gpu`` tests check that NVDEC and NVENC are really used where they open, and
skip with the reason elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import yaml

from chromastream.models.runtime.registry import nvidia_device_visible
from chromastream.stream import av_glue, hw_decode
from chromastream.stream.av_glue import NVENC, ProcessProbe, h264_level
from chromastream.stream.config import PipelineConfig, ServeConfig, StreamConfig, WebRTCConfig
from chromastream.stream.frames import Frame, OutputFrame
from chromastream.stream.sinks import RtspPusher
from chromastream.stream.sources import Backoff, FileSource, InvalidSourceError
from chromastream.stream.webrtc import StreamEncoder
from tests import test_browser
from tests.conftest import ClipSpec, make_clip
from tests.rtsp_fixtures import RtspServer
from tests.test_server import served

browser = test_browser.browser  # the headless Chromium fixture

NVDEC_PROBLEM = hw_decode.NVDEC_PROBE.problem()
NVENC_PROBLEM = av_glue.NVENC_PROBE.problem()
FALLBACK_LINE = "NVDEC cannot be used"
no_nvdec_here = pytest.mark.skipif(
    NVDEC_PROBLEM is None, reason="NVDEC opens here: test_nvdec_is_used_where_it_opens checks it is used"
)
no_nvenc_here = pytest.mark.skipif(
    NVENC_PROBLEM is None, reason="NVENC opens here: test_nvenc_is_used_where_it_opens covers it"
)


def stream_json(base: str, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/streams/{stream_id}", timeout=10) as response:
        data: dict[str, Any] = json.load(response)
    return data


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not met in {timeout} s (last: {last!r})")


# --------------------------------------------------------------------------------------------- decode


def serve_config(folder: Path, decode: str, clip: Path, camera: str, workers: int = 1) -> Path:
    config = folder / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workers": workers,
                "pipeline": {"backend": "pass-through", "detector_rate": 0},
                "sources": {"decode": decode},
                "streams": [{"id": "file", "url": str(clip)}, {"id": "camera", "url": camera}],
            }
        )
    )
    return config


@no_nvdec_here
@pytest.mark.parametrize("workers", [1, 2])
def test_nvdec_asked_for_without_it_decodes_in_software_with_one_warning(
    tmp_path: Path, rtsp_server: RtspServer, rtsp_clip: Path, workers: int
) -> None:
    """Two streams (a file and a camera) and a camera reconnection: frames flow, one warning per process
    that decodes (with two workers each stream has its own, and the setting reaches both)."""
    config = serve_config(tmp_path, "nvdec", rtsp_clip, rtsp_server.play_url, workers)
    # --quiet: the log holds warnings and errors only, so the line found below is a warning.
    with served(tmp_path, "--config", str(config), "--quiet") as server:
        for stream_id in ("file", "camera"):
            wait_until(lambda s=stream_id: stream_json(server.base, s)["frames_out"] >= 10, 30, "frames")
        assert stream_json(server.base, "file")["decoder"] == "h264 (software)"
        assert stream_json(server.base, "camera")["decoder"] == "h264 (software)"
        resets = stream_json(server.base, "camera")["resets"]
        rtsp_server.restart(down=0.3)
        wait_until(lambda: stream_json(server.base, "camera")["resets"] > resets, 30, "a reconnection")
        frames = stream_json(server.base, "camera")["frames_out"]
        wait_until(lambda: stream_json(server.base, "camera")["frames_out"] > frames + 5, 30, "frames")
        log = server.stderr()
    warnings = [line for line in log.splitlines() if FALLBACK_LINE in line]
    assert len(warnings) == workers, log
    for warning in warnings:
        assert "'nvdec'" in warning and "in software" in warning
        assert NVDEC_PROBLEM is not None and NVDEC_PROBLEM in warning


@no_nvdec_here
def test_auto_decodes_in_software_without_a_word(tmp_path: Path, rtsp_server: RtspServer) -> None:
    """No CUDA device (or one NVDEC cannot use): ``auto`` decodes in software, and says nothing about it
    above info level; the stream shows it."""
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workers": 1,
                "pipeline": {"backend": "pass-through", "detector_rate": 0},
                "streams": [{"id": "camera", "url": rtsp_server.play_url}],
            }
        )
    )
    with served(tmp_path, "--config", str(config), "--decode", "auto") as server:
        wait_until(lambda: stream_json(server.base, "camera")["frames_out"] >= 10, 30, "frames")
        assert stream_json(server.base, "camera")["decoder"] == "h264 (software)"
        log = server.stderr()
    assert "NVDEC" not in log, log


def decoded_file(clip: Path, decode: str) -> tuple[str | None, list[np.ndarray]]:
    """The file source's decoder and the luma planes it hands over, read once as fast as consumed."""

    async def read() -> tuple[str | None, list[np.ndarray]]:
        source = FileSource("cam", clip, loop=False, realtime=False, decode=decode)
        lumas = [event.y for event in [e async for e in source.events()] if isinstance(event, Frame)]
        await source.close()
        return source.decoder, lumas

    return asyncio.run(read())


def test_file_source_decoder_is_reported_and_bad_modes_are_refused(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", ClipSpec(frames=4))
    decoder, lumas = decoded_file(clip, "software")
    assert decoder == "h264 (software)" and len(lumas) == 4
    with pytest.raises(InvalidSourceError, match="unknown decode mode 'gpu'"):
        FileSource("cam", clip, decode="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(NVDEC_PROBLEM is not None, reason=f"NVDEC cannot be used here: {NVDEC_PROBLEM}")
def test_nvdec_is_used_where_it_opens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file source asked for NVDEC decodes on it, and hands over the same pictures as software (H.264
    decoding is exact, and the Y plane of the downloaded NV12 frame is the picture's luma)."""
    clip = make_clip(tmp_path / "in.mp4", ClipSpec(frames=8, width=256, height=144))
    decoder, lumas = decoded_file(clip, "nvdec")
    assert decoder == "h264 (cuda)"
    reference = decoded_file(clip, "software")[1]
    assert len(lumas) == len(reference) == 8
    for got, expected in zip(lumas, reference, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert FALLBACK_LINE not in caplog.text
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workers": 1,
                "pipeline": {"backend": "pass-through", "detector_rate": 0},
                "streams": [{"id": "file", "url": str(clip)}],
            }
        )
    )
    with served(tmp_path, "--config", str(config), "--decode", "nvdec") as server:
        wait_until(lambda: stream_json(server.base, "file")["frames_out"] >= 10, 30, "frames")
        assert stream_json(server.base, "file")["decoder"] == "h264 (cuda)"
        assert FALLBACK_LINE not in server.stderr()


# --------------------------------------------------------------------------------------------- encode


class Frames:
    """A stream's output frames of one size (what the pipeline hands an encoder)."""

    def __init__(self, width: int, height: int, count: int) -> None:
        self.size, self.count = (width, height), count

    async def _frames(self) -> AsyncIterator[OutputFrame]:
        width, height = self.size
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(self.count):
            y = (16 + (xx + yy + 8 * i) % 200).astype(np.uint8)
            u = np.full((height // 2, width // 2), 100 + i, np.uint8)
            v = np.full((height // 2, width // 2), 150, np.uint8)
            yield OutputFrame("cam", i, i * 3600, Fraction(1, 90000), y, u, v, False, 0.0, {"index": i})
            await asyncio.sleep(0.01)

    def subscribe(self, stream_id: str, maxsize: int = 2) -> Any:
        return self

    def __aiter__(self) -> AsyncIterator[OutputFrame]:
        return self._frames()

    def close(self) -> None:
        pass


def encode_for_a_viewer(width: int, height: int, choice: str, count: int = 3) -> tuple[str, list[bytes]]:
    """The packets a WebRTC viewer of an H.264 stream gets, and the encoder that made them."""

    async def viewer() -> tuple[str, list[bytes]]:
        encoder = StreamEncoder(Frames(width, height, count), "cam", "H264", h264_encoder=choice)
        queue_ = encoder.attach()
        packets = []
        while (item := await asyncio.wait_for(queue_.get(), 20.0)) is not None:
            packets.append(bytes(item.packet))
        await encoder.close()
        assert encoder.encoder is not None
        return encoder.encoder, packets

    return asyncio.run(viewer())


def sps_level(data: bytes) -> int:
    """``level_idc`` of the first SPS in an Annex B stream: the third byte after its NAL header."""
    for match in re.finditer(rb"\x00\x00\x01(.)", data, re.DOTALL):
        if match.group(1)[0] & 0x1F == 7:
            return data[match.end() + 2]
    raise AssertionError("no SPS in the packet")


@pytest.fixture
def fresh_nvenc_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVENC probe as a new process starts it: not asked yet, nothing logged."""
    monkeypatch.setattr(av_glue, "NVENC_PROBE", ProcessProbe(av_glue.nvenc_problem))


def nvenc_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == av_glue.logger.name and "nvenc" in r.getMessage()]


@no_nvenc_here
@pytest.mark.usefixtures("fresh_nvenc_probe")
def test_nvenc_asked_for_without_it_encodes_with_libx264_and_warns_once(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Two WebRTC streams and an RTSP push all ask for NVENC: libx264 encodes them, one warning in all."""
    caplog.set_level(logging.INFO)
    for _ in range(2):
        encoder, packets = encode_for_a_viewer(320, 240, "nvenc")
        assert encoder == "libx264"
        decoder = av.CodecContext.create("h264", "r")
        pictures = [f for p in packets for f in decoder.decode(av.Packet(p))]
        assert [(f.width, f.height) for f in pictures] == [(320, 240)] * 3
    backoff = Backoff(initial=0.05, maximum=0.2)
    pusher = RtspPusher(rtsp_server.record_url, "s", backoff=backoff, encoder="nvenc")

    async def frames() -> AsyncIterator[OutputFrame]:
        async for frame in Frames(320, 240, 40):
            yield frame
            await asyncio.sleep(0.02)

    asyncio.run(pusher.run(frames()))
    assert pusher.frames_sent > 0
    wait_until(lambda: rtsp_server.count("record_frame") >= 5, 15, "pushed frames at the server")
    warnings = nvenc_lines(caplog)
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "encoded with libx264" in warnings[0].getMessage()
    assert NVENC_PROBLEM is not None and NVENC_PROBLEM in warnings[0].getMessage()


@no_nvenc_here
@pytest.mark.usefixtures("fresh_nvenc_probe")
def test_auto_encodes_with_libx264_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert encode_for_a_viewer(320, 240, "auto")[0] == "libx264"
    assert encode_for_a_viewer(320, 240, "auto")[0] == "libx264"
    assert nvenc_lines(caplog) == []


@pytest.mark.parametrize(
    ("width", "height", "level"),
    [(640, 480, 31), (1280, 720, 31), (1920, 1080, 40), (3840, 2160, 51)],
)
def test_the_h264_level_allows_the_frame_size(width: int, height: int, level: int) -> None:
    """The SPS of the WebRTC H.264 stream states a level whose frame size limit (Annex A) covers the
    picture: level 3.1 holds at most 3,600 macroblocks (1280x720), so 1080p needs 4.0."""
    _, packets = encode_for_a_viewer(width, height, "libx264", count=1)
    assert sps_level(packets[0]) == level
    limits = {row[0]: row[1] for row in av_glue.H264_LEVELS}
    assert ((width + 15) // 16) * ((height + 15) // 16) <= limits[f"{level // 10}.{level % 10}"]
    decoder = av.CodecContext.create("h264", "r")
    (picture,) = decoder.decode(av.Packet(packets[0]))
    assert (picture.width, picture.height) == (width, height)


def test_h264_level_table() -> None:
    assert [h264_level(w, h) for w, h in ((320, 240), (1280, 720), (1280, 960), (1920, 1080))] == [
        "3.1",
        "3.1",
        "3.2",
        "4.0",
    ]
    assert h264_level(1920, 1080, bitrate=30_000_000) == "4.1"  # 4.0 allows 20 Mbit/s
    assert h264_level(1280, 720, fps=60) == "3.2"
    assert h264_level(3840, 2160) == "5.1"
    assert h264_level(7680, 4320) == "5.2"  # beyond the table: its last level


@pytest.mark.gpu
@pytest.mark.skipif(
    NVENC_PROBLEM is not None,
    reason="no NVENC on this GPU" if nvidia_device_visible() else f"no NVIDIA GPU: {NVENC_PROBLEM}",
)
def test_nvenc_is_used_where_it_opens() -> None:
    encoder, packets = encode_for_a_viewer(1920, 1080, "auto", count=6)
    assert encoder == NVENC
    assert len(packets) == 6, "one packet per frame: nothing held inside the encoder"
    assert sps_level(packets[0]) == 40
    decoder = av.CodecContext.create("h264", "r")
    pictures = [f for p in packets for f in decoder.decode(av.Packet(p))]
    assert [(f.width, f.height) for f in pictures] == [(1920, 1080)] * 6


# -------------------------------------------------------------------------------------------- browser


@contextlib.asynccontextmanager
async def big_stream() -> AsyncIterator[str]:
    """A server with one 1920x1080 stream, ``big``, encoded by libx264: the size where level 3.1 no longer
    holds. Yields its base URL."""
    from aiohttp import web

    from chromastream.stream.passthrough import create_serve_backend
    from chromastream.stream.pipeline import Pipeline
    from chromastream.stream.server import create_app

    config = PipelineConfig(size=64, backend="pass-through", detector_rate=0)
    pipeline = Pipeline(config, create_serve_backend(config))
    runner: web.AppRunner | None = None
    try:
        await pipeline.start()
        await pipeline.add_stream(StreamConfig("big", "synthetic:?width=1920&height=1080&fps=8"))
        serve = ServeConfig(webrtc=WebRTCConfig(h264_encoder="libx264"))
        runner = web.AppRunner(create_app(pipeline, serve))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        if runner is not None:
            await runner.cleanup()
        await pipeline.stop()


#: A WHEP viewer that offers H.264 only (packetization mode 1, as aiortc sends it).
WATCH_H264 = """
const done = arguments[arguments.length - 1];
(async () => {
  const h264 = RTCRtpReceiver.getCapabilities("video").codecs.filter(
    (c) => c.mimeType.toLowerCase() === "video/h264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""));
  if (!h264.length) { done({ skip: "this Chromium decodes no H.264" }); return; }
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" }).setCodecPreferences(h264);
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; document.body.appendChild(video);
  pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
    setTimeout(resolve, 3000);
  });
  const response = await fetch("/whep/big", {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
  const answer = await response.text();
  if (response.status !== 201) { done({ error: response.status + " " + answer }); return; }
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  window.viewer = { pc, video };
  done({ answer });
})().catch((e) => done({ error: String(e) }));
"""

#: What the viewer has decoded so far.
DECODED = """
const done = arguments[arguments.length - 1];
const { pc, video } = window.viewer;
pc.getStats().then((stats) => {
  let out = { width: video.videoWidth, height: video.videoHeight };
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.framesDecoded = s.framesDecoded || 0;
      const codec = s.codecId && stats.get(s.codecId);
      out.codec = codec ? codec.mimeType : null;
    }
  });
  done(out);
});
"""


def test_chromium_plays_1080p_h264_at_its_level(browser: Any) -> None:
    """The SPS says level 4.0 while the SDP keeps aiortc's level 3.1 (``profile-level-id`` ...1f): headless
    Chromium negotiates H.264 with it and decodes the 1080p pictures."""
    with test_browser.ServerThread(serving=big_stream) as base:
        browser.get(f"{base}/healthz")
        started = browser.execute_async_script(WATCH_H264)
        if "skip" in started:
            pytest.skip(started["skip"])
        assert "answer" in started, started
        assert re.search(r"H264/90000", started["answer"]), started["answer"]
        assert re.search(r"profile-level-id=42[0-9a-f]{2}1f", started["answer"]), started["answer"]
        stats = wait_until(
            lambda: (s := browser.execute_async_script(DECODED)).get("framesDecoded", 0) >= 5 and s,
            40,
            "decoded 1080p H.264 frames",
        )
    assert stats["codec"].lower() == "video/h264"
    assert (stats["width"], stats["height"]) == (1920, 1080)
