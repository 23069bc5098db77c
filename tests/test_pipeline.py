"""The live pipeline with the shipped model at a small working size, fed by in-test numpy sources.

What the network *says* is not asserted (the shipped model may be replaced); what the pipeline does with
it is: every frame accounted for, luminance untouched, each stream's state and hints its own (checked on
the tensors the backend received, against a sequential single-stream reference), resets where they belong,
bounded queues and latency, prompt shutdown, and metadata a client can parse. Where a test must see a hint
in the output chroma, a tiny backend that paints the hint's colour stands in, because a model's response to
one hint is the model's business.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Coroutine, Sequence
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pytest

from chromastream.kernels.combine import l_from_luma, luma_ab_to_yuv420
from chromastream.models.colorizer.hints import MAX_HINTS, Hint, HintError
from chromastream.models.runtime.base import F32, Backend, ModelInfo
from chromastream.models.runtime.registry import create_backend
from chromastream.models.runtime.session import ColorizerSession
from chromastream.stream.config import (
    ConfigError,
    PipelineConfig,
    RecordConfig,
    ServeConfig,
    StreamConfig,
    load_config,
    parse_config,
)
from chromastream.stream.frames import EndOfStream, Frame, OutputFrame, Reset, SourceEvent
from chromastream.stream.metadata import COLORIZER_KEYS, DEEPFAKE_KEYS, METADATA_KEYS
from chromastream.stream.pipeline import (
    DuplicateStream,
    Pipeline,
    StreamInfo,
    Subscription,
    UnknownStream,
)
from chromastream.stream.queues import DropPolicy
from chromastream.stream.sources._common import Stopped, ThreadedSource
from tests.conftest import ClipSpec, make_clip, read_clip

T = TypeVar("T")
H, W = 64, 96  # frames; the working shape at size 64 is the same, so L is a plain table lookup + copy
TIME_BASE = Fraction(1, 90000)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@cache
def real_backend() -> Backend:
    """The shipped model, loaded once and warmed up at the tests' shapes (ONNX Runtime's first call at a
    new shape is many times slower, which would read as pipeline latency)."""
    backend = create_backend()
    for batch in (1, 2):
        L = np.zeros((batch, 1, H, W), np.float32)
        backend.run(
            L,
            np.zeros((batch, 3, H, W), np.float32),
            np.zeros(backend.info.state_shape(batch, H, W), np.float32),
        )
    return backend


class Recording:
    """The real backend, remembering every call's inputs and outputs (rows are per stream and frame)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.info = inner.info
        self.calls: list[tuple[F32, F32, F32, F32, F32]] = []

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        ab, state_out = self.inner.run(L, hints, state)
        self.calls.append((L.copy(), hints.copy(), state.copy(), ab.copy(), state_out.copy()))
        return ab, state_out

    def rows(self) -> list[tuple[F32, F32, F32, F32, F32]]:
        """Every row of every call, in call order: (L, hints, state, ab, state_out), each ``[C, h, w]``."""
        return [tuple(x[i] for x in call) for call in self.calls for i in range(call[0].shape[0])]


class HintPainter:
    """A stand-in network whose output is exactly its hints' colour (and grey elsewhere)."""

    name = "hint-painter"
    info = ModelInfo(version="painter")

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        return np.ascontiguousarray(hints[:, :2] * hints[:, 2:]), state


def scene(kind: str, i: int, h: int = H, w: int = W) -> np.ndarray:
    """Limited-range luma: ``stripes`` move smoothly; ``blobs`` is a different scene, also moving."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "stripes":
        value = 60 + 80 * (0.5 + 0.5 * np.sin((xx + 2 * i) / 5.0)) + 20 * np.cos(yy / 9.0)
    else:
        value = 200 - 120 * np.exp(-((xx - 20 - i) ** 2 + (yy - 40) ** 2) / 150.0) - 0.5 * yy
    return np.clip(value, 16, 235).astype(np.uint8)


def network_L(y: np.ndarray, size: tuple[int, int] = (H, W)) -> F32:
    small = cv2.resize(l_from_luma(y), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.asarray(small / 100.0, dtype=np.float32)


class ListSource:
    """A Source from a list of luma planes and Reset events: file-like, or live at ``fps``."""

    def __init__(
        self,
        stream_id: str,
        items: Sequence[np.ndarray | Reset],
        *,
        live: bool = False,
        fps: float | None = None,
        hang: bool = False,
        pts: Sequence[int] | None = None,
    ):
        self.stream_id = stream_id
        self.live = live
        self.items = list(items)
        self.fps = fps
        self.hang = hang
        self.pts = pts
        self.closed = False
        self._closed = asyncio.Event()

    async def events(self) -> AsyncIterator[SourceEvent]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        for n, item in enumerate(self.items):
            if isinstance(item, Reset):
                yield item
                continue
            if self.fps:
                await asyncio.sleep(max(0.0, start + n / self.fps - loop.time()))
            pts = self.pts[index] if self.pts is not None else 3000 * index + 17
            yield Frame(self.stream_id, index, pts, TIME_BASE, item, False, time.monotonic())
            index += 1
        if self.hang:
            await self._closed.wait()
            return
        yield EndOfStream(self.stream_id)

    async def close(self) -> None:
        self.closed = True
        self._closed.set()


class PushSource:
    """A live-like Source the test feeds one event at a time (``None`` ends it)."""

    live = True

    def __init__(self, stream_id: str):
        self.stream_id = stream_id
        self.queue: asyncio.Queue[np.ndarray | Reset | None] = asyncio.Queue()
        self.index = 0

    async def events(self) -> AsyncIterator[SourceEvent]:
        while True:
            item = await self.queue.get()
            if item is None:
                yield EndOfStream(self.stream_id)
                return
            if isinstance(item, Reset):
                yield item
                continue
            yield Frame(
                self.stream_id, self.index, 3000 * self.index, TIME_BASE, item, False, time.monotonic()
            )
            self.index += 1

    async def close(self) -> None:
        self.queue.put_nowait(None)


async def drain(sub: Subscription) -> list[OutputFrame]:
    return [frame async for frame in sub]


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def sample(p: Pipeline, name: str, **labels: str) -> float:
    return p.registry.get_sample_value(name, labels) or 0.0


def make(backend: Backend | None = None, **overrides: Any) -> Pipeline:
    config = PipelineConfig(**{"size": 64, "max_wait_ms": 2.0, **overrides})
    return Pipeline(config, backend or real_backend())


# --- end to end --------------------------------------------------------------------------------------


def test_file_source_every_frame_out_in_order_with_luma_untouched() -> None:
    frames = [scene("stripes", i) for i in range(12)]
    pts = [0, 3003, 6006, 9009, 12012, 15015, 18018, 21021, 30000, 33003, 36006, 39009]
    recorder = Recording(real_backend())

    async def main() -> tuple[list[OutputFrame], StreamInfo]:
        p = make(recorder)
        source = ListSource("file", frames, pts=pts)
        await p.add_stream(StreamConfig("file", "clip.mp4"), source)
        sub = p.subscribe("file", maxsize=2, policy=DropPolicy.WAIT)  # a recorder: lossless
        await p.start()
        out = await drain(sub)
        await wait_for(lambda: p.info("file").state == "ended")
        info = p.info("file")
        assert sample(p, "chromastream_frames_out_total", stream="file") == 12
        assert sample(p, "chromastream_dropped_frames_total", stream="file", stage="input") == 0
        await p.stop()
        assert source.closed
        return out, info

    out, info = run(main())
    assert [f.index for f in out] == list(range(12))
    assert [f.pts for f in out] == pts
    assert all(f.time_base == TIME_BASE for f in out)
    for frame, y in zip(out, frames, strict=True):
        np.testing.assert_array_equal(frame.y, y)
        assert frame.u.shape == frame.v.shape == (H // 2, W // 2)
    assert (info.frames_in, info.frames_out, info.drops, info.state) == (12, 12, 0, "ended")
    assert (info.width, info.height, info.viewers) == (W, H, 0)
    json.dumps(info.to_json())

    # The chroma is the network's: the same as colorizing the clip alone with a ColorizerSession, the
    # network's raw output (temporal filter off) and the filtered output that reaches the picture alike.
    raw_session = ColorizerSession(real_backend(), size=64, smoothing=(0.0, 1.0))
    session = ColorizerSession(real_backend(), size=64)
    rows = recorder.rows()
    assert len(rows) == 12
    for frame, y, row in zip(out, frames, rows, strict=True):
        raw = raw_session.predict_ab(l_from_luma(y))
        np.testing.assert_allclose(row[3] * real_backend().info.ab_scale, raw, atol=1e-4)
        expected = session.predict_ab(l_from_luma(y))
        _, u, v = luma_ab_to_yuv420(y, expected)
        assert np.abs(frame.u.astype(int) - u).max() <= 1 and np.abs(frame.v.astype(int) - v).max() <= 1

    # Metadata: the documented keys, plain JSON types, timing from pts.
    for frame in out:
        meta = json.loads(json.dumps(frame.metadata))
        assert tuple(meta) == METADATA_KEYS
        assert tuple(meta["colorizer"]) == COLORIZER_KEYS
        assert tuple(meta["deepfake"]) == DEEPFAKE_KEYS
        assert meta["stream"] == "file" and meta["index"] == frame.index and meta["pts"] == frame.pts
        assert meta["time_base"] == "1/90000"
        assert meta["time"] == pytest.approx(frame.pts / 90000)
        c = meta["colorizer"]
        assert c["backend"] == "onnxruntime" and c["model"] == real_backend().info.version
        assert c["size"] == [H, W] and c["memory"] is True and c["hints"] == 0
        assert isinstance(c["latency_ms"], float) and c["latency_ms"] > 0
        assert isinstance(meta["latency_ms"], float) and meta["latency_ms"] >= c["latency_ms"]
        assert meta["deepfake"] == {
            "label": "off",
            "probability": None,
            "faces": [],
            "sampled_pts": None,
            "detector": None,
        }
    assert [f.metadata["colorizer"]["reset"] for f in out] == ["start"] + [None] * 11


def test_live_source_faster_than_the_pipeline_drops_oldest_and_keeps_latency_bounded() -> None:
    frames = [scene("stripes", i % 20) for i in range(150)]

    async def main() -> tuple[list[OutputFrame], StreamInfo, float]:
        p = make(queue_size=3)
        await p.add_stream(StreamConfig("cam", "rtsp://cam"), ListSource("cam", frames, live=True, fps=500))
        sub = p.subscribe("cam", maxsize=100)
        await p.start()
        out = await drain(sub)
        info = p.info("cam")
        drops = sample(p, "chromastream_dropped_frames_total", stream="cam", stage="input")
        await p.stop()
        return out, info, drops

    out, info, drops = run(main())
    assert info.drops > 0 and drops == info.drops
    assert info.frames_in == 150
    assert info.frames_out + info.drops == 150 == len(out) + info.drops  # every frame out or counted
    indices = [f.index for f in out]
    assert indices == sorted(indices) and indices[-1] == 149  # the newest frames survive
    # Bounded: no frame waits behind more than the queue (3) plus the two in flight, so latency stays
    # within a few frame times however long the input runs, instead of growing with it.
    per_frame = min(f.metadata["latency_ms"] for f in out)
    latencies = [f.metadata["latency_ms"] for f in out]
    assert max(latencies) < 8 * per_frame + 150
    assert np.median(latencies[-10:]) < 8 * per_frame + 150


class BurstCamera(ThreadedSource):
    """A live camera on the sources' real thread-to-loop handover, whose decoder thread delivers its first
    frame at once and then ``burst`` frames during every inference call (:meth:`produce`, called by the
    backend). It always produces faster than the model consumes, and the newest frame handed over at
    the moment a frame reaches inference is known exactly."""

    live = True

    def __init__(self, stream_id: str, burst: int) -> None:
        super().__init__(stream_id, DropPolicy.DROP_OLDEST)
        self.burst = burst
        self.newest = -1
        """Index of the newest frame handed over to the consumer."""
        self.idle = threading.Event()
        self._requests = threading.Semaphore(0)
        self._thread: threading.Thread | None = None

    def _begin(self) -> None:
        self._thread = threading.Thread(target=self._run, name="burst-camera", daemon=True)
        self._thread.start()

    def produce(self) -> None:
        """From the backend's thread: one burst, returning once all of it was handed over."""
        self.idle.clear()
        self._requests.release()
        self.idle.wait(5)

    def _run(self) -> None:
        try:
            self._hand_over(1)
            while True:
                self.idle.set()
                while not self._requests.acquire(timeout=0.05):
                    self._wait(0)  # raises Stopped once the source is closed
                self._hand_over(self.burst)
        except Stopped:
            pass
        finally:
            self.idle.set()

    def _hand_over(self, count: int) -> None:
        for _ in range(count):
            index = self.newest + 1
            y = scene("stripes", index % 20)
            frame = Frame(self.stream_id, index, 3000 * index, TIME_BASE, y, False, time.monotonic())
            self.stats.frames += 1
            self._call(self._handover.put(frame))
            self.newest = index

    async def close(self) -> None:
        await super().close()
        await self._join(self._thread, 1.0)


class CameraPacedBackend:
    """The real backend; at each call it notes the camera's newest frame, then has the camera produce a
    burst while the model runs."""

    def __init__(self, inner: Backend, camera: BurstCamera):
        self.inner = inner
        self.name = inner.name
        self.info = inner.info
        self.camera = camera
        self.newest_at_inference: list[int] = []

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        self.camera.idle.wait(5)
        self.newest_at_inference.append(self.camera.newest)
        self.camera.produce()
        return self.inner.run(L, hints, state)


@pytest.mark.parametrize("queue_size", [1, 3])
def test_a_live_camera_frame_waits_behind_at_most_queue_size_frames(queue_size: int) -> None:
    camera = BurstCamera("cam", burst=6)
    backend = CameraPacedBackend(real_backend(), camera)

    async def main() -> tuple[list[OutputFrame], StreamInfo]:
        p = make(backend, queue_size=queue_size)
        await p.add_stream(StreamConfig("cam", "rtsp://cam"), camera)
        sub = p.subscribe("cam", maxsize=1000)
        await p.start()
        out = await asyncio.wait_for(_take(sub, 12), 20)
        info = p.info("cam")
        await p.stop()
        return out, info

    out, info = run(main())
    # One inference call per frame, in order: the k-th call colorized the k-th output frame.
    behind = [newest - frame.index for newest, frame in zip(backend.newest_at_inference, out, strict=False)]
    assert len(behind) == len(out) == 12
    assert max(behind) <= queue_size, behind
    assert behind[1:] == [queue_size - 1] * 11  # the queue was full every time: the newest were kept
    assert info.drops > 0


def test_two_streams_batch_together_yet_keep_their_own_state_and_hints() -> None:
    clips = {"a": [scene("stripes", i) for i in range(8)], "b": [scene("blobs", i) for i in range(8)]}
    hint = Hint(0.3, 0.6, 50.0, -30.0, 0.1)
    recorder = Recording(real_backend())

    async def main() -> float:
        p = make(recorder, max_wait_ms=30.0)
        subs = {}
        for sid, clip in clips.items():
            await p.add_stream(StreamConfig(sid, f"{sid}.mp4"), ListSource(sid, clip))
            subs[sid] = p.subscribe(sid, policy=DropPolicy.WAIT)
        p.set_hints("b", [hint])
        await p.start()
        outs = await asyncio.gather(*(drain(s) for s in subs.values()))
        assert [len(o) for o in outs] == [8, 8]
        batched = sample(p, "chromastream_batch_size_sum") / sample(p, "chromastream_batch_size_count")
        await p.stop()
        return batched

    mean_batch = run(main())
    assert mean_batch > 1.0
    assert any(call[0].shape[0] == 2 for call in recorder.calls)

    # Attribute every row to its stream by its L input, then replay each stream alone.
    owner = {network_L(y).tobytes(): (sid, i) for sid, clip in clips.items() for i, y in enumerate(clip)}
    per_stream: dict[str, list[tuple[F32, ...]]] = {"a": [], "b": []}
    for row in recorder.rows():
        sid, i = owner[row[0][0].tobytes()]
        assert len(per_stream[sid]) == i  # each stream's frames in order
        per_stream[sid].append(row)
    info = real_backend().info
    for sid, clip in clips.items():
        session = ColorizerSession(real_backend(), size=64, smoothing=(0.0, 1.0))  # raw network output
        session.set_hints([hint] if sid == "b" else [])
        state = np.zeros(info.state_shape(1, H, W), np.float32)
        for i, (y, row) in enumerate(zip(clip, per_stream[sid], strict=True)):
            _, hints_in, state_in, ab, state_out = row
            assert (hints_in[2].max() == 1.0) == (sid == "b")  # B's hints never reach A
            # The state a stream gets is its own previous state_out, exactly: nothing of the other leaks.
            np.testing.assert_array_equal(state_in, state[0] if i else np.zeros_like(state_in))
            ref_ab, ref_state = real_backend().run(network_L(y)[None, None], hints_in[None], state)
            np.testing.assert_allclose(ab, ref_ab[0], atol=1e-4)
            np.testing.assert_allclose(state_out, ref_state[0], atol=1e-4)
            np.testing.assert_allclose(ab * info.ab_scale, session.predict_ab(l_from_luma(y)), atol=1e-4)
            state = ref_state


def test_hints_reach_the_next_frame_and_survive_resets() -> None:
    hint = Hint(0.25, 0.5, 60.0, -50.0, 0.1)
    recorder = Recording(real_backend())

    async def step(source: PushSource, sub: Subscription, item: np.ndarray | Reset) -> OutputFrame:
        await source.queue.put(item)
        return await anext(sub)

    async def main(backend: Backend) -> list[OutputFrame]:
        p = make(backend, scene_cut_threshold=None)
        source = PushSource("cam")
        await p.add_stream(StreamConfig("cam", "rtsp://cam"), source)
        sub = p.subscribe("cam")
        await p.start()
        y = scene("stripes", 0)
        out = [await step(source, sub, y)]
        p.add_hint("cam", hint)
        assert p.hints("cam") == [hint]
        out.append(await step(source, sub, y))
        await source.queue.put(Reset("cam", "reconnect"))
        out.append(await step(source, sub, y))
        p.reset("cam")
        out.append(await step(source, sub, y))
        p.clear_hints("cam")
        out.append(await step(source, sub, y))
        await p.stop()
        return out

    out = run(main(recorder))
    assert [f.metadata["colorizer"]["hints"] for f in out] == [0, 1, 1, 1, 0]
    assert [f.metadata["colorizer"]["reset"] for f in out] == ["start", None, "reconnect", "request", None]
    rows = recorder.rows()
    assert [row[1][2].max() for row in rows] == [0.0, 1.0, 1.0, 1.0, 0.0]  # the hint mask reached the net
    assert not np.array_equal(rows[1][3], rows[0][3])  # and the network's answer changed

    # With a network that paints its hints, the output chroma shows the hint on exactly those frames.
    painted = run(main(HintPainter()))
    cy, cx = H // 4, W // 8  # the hint's centre on the chroma grid
    for frame, hinted in zip(painted, [False, True, True, True, False], strict=True):
        u, v = int(frame.u[cy, cx]), int(frame.v[cy, cx])
        far_u, far_v = int(frame.u[cy, -2]), int(frame.v[cy, -2])
        assert abs(far_u - 128) <= 2 and abs(far_v - 128) <= 2  # grey away from the hint
        assert (abs(v - 128) > 20) == hinted, (frame.index, u, v)


def test_scene_cut_and_source_reset_and_resize_reset_the_state() -> None:
    items: list[np.ndarray | Reset] = [scene("stripes", i) for i in range(10)]
    items += [scene("blobs", i) for i in range(6)]  # the cut: frame 10
    items += [Reset("cam", "reconnect")]
    items += [scene("blobs", 6 + i) for i in range(3)]  # frame 16 after the reconnect
    items += [scene("blobs", 9 + i, 2 * H, 2 * W) for i in range(3)]  # frame 19: the camera's size changed
    recorder = Recording(real_backend())

    async def main() -> tuple[list[OutputFrame], StreamInfo, dict[str, float]]:
        p = make(recorder)
        await p.add_stream(StreamConfig("cam", "cam.mp4"), ListSource("cam", items))
        sub = p.subscribe("cam", policy=DropPolicy.WAIT)
        await p.start()
        out = await drain(sub)
        counts = {
            r: sample(p, "chromastream_resets_total", stream="cam", reason=r)
            for r in ("scene_cut", "reconnect", "resize")
        }
        counts["reconnects"] = sample(p, "chromastream_reconnects_total", stream="cam")
        info = p.info("cam")
        await p.stop()
        return out, info, counts

    out, info, counts = run(main())
    resets = {f.index: f.metadata["colorizer"]["reset"] for f in out if f.metadata["colorizer"]["reset"]}
    assert resets == {0: "start", 10: "scene_cut", 16: "reconnect", 19: "resize"}
    assert info.resets == 3
    assert counts == {"scene_cut": 1, "reconnect": 1, "resize": 1, "reconnects": 1}
    assert out[19].metadata["colorizer"]["size"] == [H, W]  # short side 128 -> working 64
    assert out[19].y.shape == (2 * H, 2 * W)
    for i, row in enumerate(recorder.rows()):
        state_in = row[2]
        assert (not state_in.any()) == (i in resets), i  # zeros exactly where the state was reset


def test_memory_off_starts_every_frame_fresh() -> None:
    recorder = Recording(real_backend())

    async def main() -> list[OutputFrame]:
        p = make(recorder, memory=False)
        await p.add_stream(
            StreamConfig("s", "s.mp4"), ListSource("s", [scene("stripes", i) for i in range(4)])
        )
        sub = p.subscribe("s", policy=DropPolicy.WAIT)
        await p.start()
        out = await drain(sub)
        await p.stop()
        return out

    out = run(main())
    assert len(out) == 4 and all(f.metadata["colorizer"]["memory"] is False for f in out)
    assert all(not row[2].any() for row in recorder.rows())


def test_subscribers_drop_their_own_oldest_and_never_slow_others() -> None:
    frames = [scene("stripes", i) for i in range(10)]

    async def main() -> None:
        p = make()
        await p.add_stream(StreamConfig("s", "s.mp4"), ListSource("s", frames))
        idle = p.subscribe("s", maxsize=2)  # nobody reads it until the stream is over
        reader = p.subscribe("s", maxsize=2)
        lossless = p.subscribe("s", maxsize=1, policy=DropPolicy.WAIT)
        assert p.info("s").viewers == 3
        await p.start()
        read, kept = await asyncio.gather(drain(reader), drain(lossless))
        await wait_for(lambda: p.info("s").state == "ended")
        late = await drain(idle)
        assert [f.index for f in kept] == list(range(10))
        assert [f.index for f in late] == [8, 9]
        assert idle.drops == 8 and lossless.drops == 0
        assert len(read) + reader.drops == 10
        assert (
            sample(p, "chromastream_dropped_frames_total", stream="s", stage="subscriber") == 8 + reader.drops
        )
        assert p.info("s").viewers == 0  # finished subscriptions detach
        ended = p.subscribe("s")  # subscribing to an ended stream ends at once
        assert await drain(ended) == []
        await p.stop()

    run(main())


def test_remove_stream_ends_subscriptions_and_forgets_the_stream() -> None:
    async def main() -> None:
        p = make()
        await p.start()
        source = ListSource("cam", [scene("stripes", i) for i in range(5)], live=True, fps=100, hang=True)
        await p.add_stream(StreamConfig("cam", "rtsp://u:pw@cam/1"), source)
        assert p.info("cam").url == "rtsp://***@cam/1"
        sub = p.subscribe("cam", maxsize=10)
        other = p.subscribe("cam")
        await wait_for(lambda: p.info("cam").frames_out == 5)
        info = p.info("cam")
        assert info.state == "running" and info.fps_in > 0 and info.latency_ms_p50 is not None
        assert info.viewers == 2 and sample(p, "chromastream_viewers", stream="cam") == 2
        other.close()
        assert await drain(other) == []
        assert p.info("cam").viewers == 1
        assert len(await asyncio.wait_for(_take(sub, 5), 5)) == 5
        await p.remove_stream("cam")
        assert await asyncio.wait_for(drain(sub), 2) == []
        assert source.closed
        assert p.streams() == []
        with pytest.raises(UnknownStream):
            p.info("cam")
        with pytest.raises(UnknownStream):
            await p.remove_stream("cam")
        assert p.registry.get_sample_value("chromastream_frames_in_total", {"stream": "cam"}) is None
        await p.stop()

    run(main())


async def _take(sub: Subscription, n: int) -> list[OutputFrame]:
    return [await anext(sub) for _ in range(n)]


def test_stop_is_prompt_with_a_hanging_source() -> None:
    class Hanging:
        """Never produces a frame, never ends, and its close() never returns."""

        live = True

        def __init__(self) -> None:
            self.stream_id = "stuck"

        async def events(self) -> AsyncIterator[SourceEvent]:
            await asyncio.Event().wait()
            yield EndOfStream(self.stream_id)  # pragma: no cover

        async def close(self) -> None:
            await asyncio.Event().wait()

    async def main() -> float:
        p = make()
        p.close_timeout = 0.2
        await p.start()
        await p.add_stream(StreamConfig("stuck", "rtsp://stuck"), Hanging())
        sub = p.subscribe("stuck")
        await asyncio.sleep(0.05)
        assert p.info("stuck").state == "starting"
        start = time.monotonic()
        await p.stop()
        elapsed = time.monotonic() - start
        assert await asyncio.wait_for(drain(sub), 1) == []
        with pytest.raises(Exception, match="stopped"):
            await p.add_stream(StreamConfig("x", "x"), ListSource("x", []))
        return elapsed

    assert run(main()) < 1.5


def test_a_failing_source_marks_the_stream_failed_and_ends_subscribers() -> None:
    class Broken:
        """Delivers two frames, then its decoder raises something that is not a connection error."""

        live = True
        stream_id = "b"

        async def events(self) -> AsyncIterator[SourceEvent]:
            for i in range(2):
                yield Frame("b", i, i, TIME_BASE, scene("stripes", i), False, time.monotonic())
            await asyncio.sleep(0.2)
            raise OSError("decoder exploded")

        async def close(self) -> None:
            self.closed = True

    async def main() -> tuple[list[OutputFrame], StreamInfo, bool]:
        p = make()
        await p.start()
        source = Broken()
        await p.add_stream(StreamConfig("b", "b.mp4"), source)
        frames = await drain(p.subscribe("b", maxsize=10))
        info = p.info("b")
        await p.stop()
        return frames, info, getattr(source, "closed", False)

    frames, info, closed = run(main())
    assert [f.index for f in frames] == [0, 1]
    assert info.state == "failed" and info.error == "OSError: decoder exploded"
    assert closed


def test_detector_hook_samples_off_the_video_path() -> None:
    class SlowDetector:
        def __init__(self) -> None:
            self.calls: list[int] = []
            self.forgotten: list[str] = []

        async def detect(self, frame: Frame) -> dict[str, Any]:
            self.calls.append(frame.index)
            await asyncio.sleep(0.3)
            return {
                "label": "real",
                "probability": 0.1,
                "faces": [],
                "sampled_pts": frame.pts,
                "detector": "t",
            }

        def forget(self, stream_id: str) -> None:
            self.forgotten.append(stream_id)

    detector = SlowDetector()

    async def main() -> list[OutputFrame]:
        config = PipelineConfig(size=64, max_wait_ms=2.0, detector_rate=2.0)
        p = Pipeline(config, real_backend(), detector=detector)
        await p.start()
        frames = [scene("stripes", i) for i in range(30)]
        await p.add_stream(StreamConfig("cam", "rtsp://cam"), ListSource("cam", frames, live=True, fps=50))
        out = await drain(p.subscribe("cam", maxsize=50))
        await p.stop()
        return out

    out = run(main())
    assert 1 <= len(detector.calls) <= 2  # 0.6 s of video at 2 samples a second, one call at a time
    assert detector.forgotten == ["cam"]
    assert max(f.metadata["latency_ms"] for f in out) < 300  # frames never waited for the detector
    verdicts = [f.metadata["deepfake"] for f in out]
    assert verdicts[0]["label"] == "off"
    assert verdicts[-1] == {
        "label": "real",
        "probability": 0.1,
        "faces": [],
        "sampled_pts": 17,
        "detector": "t",
    }


def test_api_errors_and_hint_limits() -> None:
    async def main() -> None:
        p = make()
        await p.add_stream(StreamConfig("s", "s.mp4", hints=(Hint(0.5, 0.5, 10, 10),)), ListSource("s", []))
        assert len(p.hints("s")) == 1  # hints from the config apply from the first frame
        with pytest.raises(DuplicateStream):
            await p.add_stream(StreamConfig("s", "other.mp4"), ListSource("s", []))
        for call in (p.info, p.hints, p.reset, p.clear_hints, p.subscribe):
            with pytest.raises(UnknownStream):
                call("nope")  # type: ignore[operator]
        with pytest.raises(HintError, match="too many"):
            p.set_hints("s", [Hint(0.5, 0.5, 0, 0)] * (MAX_HINTS + 1))
        p.set_hints("s", [Hint(0.5, 0.5, 0, 0)] * MAX_HINTS)
        with pytest.raises(HintError, match="too many"):
            p.add_hint("s", Hint(0.1, 0.1, 0, 0))
        assert len(p.hints("s")) == MAX_HINTS
        with pytest.raises(HintError):
            p.set_hints("s", [{"x": 0.5}])
        await p.stop()

    run(main())


def test_add_stream_without_a_source_opens_one_from_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[Any, ...]] = []

    def open_source(stream_id: str, url: str, **options: Any) -> ListSource:
        opened.append((stream_id, url, options))
        return ListSource(stream_id, [scene("stripes", 0)])

    monkeypatch.setitem(
        sys.modules, "chromastream.stream.sources", types.SimpleNamespace(open_source=open_source)
    )

    async def main() -> list[OutputFrame]:
        p = make()
        await p.start()
        info = await p.add_stream(StreamConfig("f", "clip.mp4", loop=True, realtime=False))
        assert info.state == "starting" and info.frames_in == 0
        out = await drain(p.subscribe("f", policy=DropPolicy.WAIT))
        await p.stop()
        return out

    out = run(main())
    # Only options that differ from their defaults: each kind of source rejects the others' options.
    assert opened == [("f", "clip.mp4", {"loop": True, "realtime": False})]
    assert len(out) <= 1


def test_real_file_and_synthetic_sources(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", ClipSpec(frames=15, width=96, height=64))
    lumas = read_clip(clip).lumas

    async def main() -> tuple[list[OutputFrame], list[OutputFrame], StreamInfo]:
        p = make()
        await p.add_stream(StreamConfig("file", str(clip), loop=False, realtime=False))
        file_sub = p.subscribe("file", policy=DropPolicy.WAIT)
        await p.add_stream(StreamConfig("syn", "synthetic:?width=96&height=64&fps=50"))
        syn_sub = p.subscribe("syn", maxsize=10)
        await p.start()
        from_file = await drain(file_sub)
        from_syn = await asyncio.wait_for(_take(syn_sub, 5), 10)
        info = p.info("syn")
        await p.stop()
        return from_file, from_syn, info

    from_file, from_syn, info = run(main())
    assert [f.index for f in from_file] == list(range(15))
    for frame, y in zip(from_file, lumas, strict=True):
        np.testing.assert_array_equal(frame.y, y)
    assert all(f.y.shape == (64, 96) and f.u.shape == (32, 48) for f in from_syn)
    assert info.state == "running" and info.frames_out >= 5


def test_source_counters_are_mirrored() -> None:
    class Counting(ListSource):
        """A live source that reports its own drops and reconnects, as the RTSP source does."""

        def __init__(self) -> None:
            super().__init__("c", [scene("stripes", i) for i in range(3)], live=True, hang=True)
            self.stats = types.SimpleNamespace(reconnects=0, dropped=0, state="running")

    async def main() -> None:
        p = make(queue_size=4)  # room for all three frames: this test is about counters, not drops
        await p.start()
        source = Counting()
        await p.add_stream(StreamConfig("c", "rtsp://c"), source)
        await wait_for(lambda: p.info("c").frames_out == 3)
        source.stats.reconnects, source.stats.dropped, source.stats.state = 2, 5, "reconnecting"
        info = p.info("c")
        assert info.state == "reconnecting" and info.drops == 5
        assert sample(p, "chromastream_reconnects_total", stream="c") == 2
        assert sample(p, "chromastream_dropped_frames_total", stream="c", stage="source") == 5
        source.stats.state = "running"
        assert p.info("c").state == "running"
        await p.stop()

    run(main())


# --- configuration ---------------------------------------------------------------------------------


FULL_CONFIG = """
host: 0.0.0.0
port: 9000
token: s3cret
pipeline:
  size: 128
  backend: onnxruntime
  model: weights/c.onnx
  max_batch: 4
  max_wait_ms: 3
  queue_size: 2
  memory: false
  scene_cut_threshold: 0.6
  detector_rate: 1
streams:
  - id: gate-1
    url: rtsp://admin:pw@10.0.0.7/stream1
    transport: udp
    hints: [{x: 0.5, y: 0.2, rgb: "#3070c0"}, {x: 0.1, y: 0.9, a: 10, b: -20, radius: 0.05}]
  - id: demo
    url: demo.mp4
    loop: true
    realtime: false
    record: out/demo.mp4
    rtsp_push: rtsp://127.0.0.1:8554/demo
"""


def test_load_config_full(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(FULL_CONFIG)
    cfg = load_config(path)
    assert (cfg.host, cfg.port, cfg.token) == ("0.0.0.0", 9000, "s3cret")
    assert cfg.pipeline == PipelineConfig(
        size=128,
        backend="onnxruntime",
        model=tmp_path / "weights/c.onnx",
        max_batch=4,
        max_wait_ms=3.0,
        queue_size=2,
        memory=False,
        scene_cut_threshold=0.6,
        detector_rate=1.0,
    )
    gate, demo = cfg.streams
    assert gate.transport == "udp" and len(gate.hints) == 2 and gate.hints[1] == Hint(0.1, 0.9, 10, -20, 0.05)
    assert demo.loop and not demo.realtime and demo.record == RecordConfig(tmp_path / "out/demo.mp4")
    assert demo.rtsp_push == "rtsp://127.0.0.1:8554/demo"
    assert isinstance(cfg.pipeline.max_wait_ms, float)
    assert load_config(_write(tmp_path, "")) == ServeConfig()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour: red", "colour: unknown key"),
        ("pipeline: {size: 64, sise: 3}", "pipeline.sise: unknown key"),
        ("streams: [{id: a, url: x, lopp: true}]", "streams[0].lopp: unknown key"),
        ("port: '8080'", "port: must be an integer, got str"),
        ("port: 70000", "port: must be in 0..65535"),
        ("pipeline: {memory: 1}", "pipeline.memory: must be true or false"),
        ("pipeline: {max_batch: true}", "pipeline.max_batch: must be an integer, got bool"),
        ("pipeline: {max_wait_ms: fast}", "pipeline.max_wait_ms: must be a number"),
        ("pipeline: {size: 16}", "pipeline.size: must be in 64..2048"),
        ("pipeline: {queue_size: 0}", "pipeline.queue_size: must be in 1..1024"),
        ("pipeline: {scene_cut_threshold: -1}", "pipeline.scene_cut_threshold: must be a positive"),
        ("pipeline: [1, 2]", "pipeline: must be a mapping"),
        ("streams: {id: a}", "streams: must be a list of streams"),
        ("streams: [{url: x}]", "streams[0].id: is required"),
        ("streams: [{id: a}]", "streams[0].url: is required"),
        ("streams: [{id: a, url: x}, {id: a, url: y}]", "streams[1].id: duplicate stream id 'a'"),
        ("streams: [{id: 'a b', url: x}]", "streams[0].id: must be 1-64 characters"),
        (f"streams: [{{id: {'x' * 65}, url: x}}]", "streams[0].id: must be 1-64 characters"),
        ("streams: [{id: 7, url: x}]", "streams[0].id: must be a string, got int"),
        ("streams: [{id: a, url: x, transport: quic}]", "streams[0].transport: must be one of"),
        (
            "streams: [{id: a, url: x, hints: [{x: 2, y: 0, a: 1, b: 1}]}]",
            "streams[0].hints: hint 0: x and y",
        ),
        ("streams: [{id: a, url: x, record: 5}]", "streams[0].record: must be a path"),
        ("token: null\nhost: ''", "host: must be a non-empty"),
        ("[1, 2]", "config: must be a mapping"),
        ("port: [unclosed", "is not valid YAML"),
    ],
)
def test_load_config_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_configs_validate_when_built_in_code_too() -> None:
    with pytest.raises(ConfigError, match="id"):
        StreamConfig("bad id", "x")
    with pytest.raises(ConfigError, match="max_batch"):
        PipelineConfig(max_batch=0)
    assert parse_config({"streams": [{"id": "a", "url": "x"}]}).streams[0] == StreamConfig("a", "x")
