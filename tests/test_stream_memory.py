"""One stream's memory: its own rules, and proof that ``colorize`` and ``serve`` run the same memory.

The unit tests hand :class:`StreamMemory` arrays of the network's shapes directly (it never runs the
network itself). The end-to-end test drives the live :class:`Pipeline` and a :class:`ColorizerSession`
with the shipped model through one sequence of frames, hint changes and resets, and compares the ab
each turns into chroma: the benchmarks, built on the session, measure what the live streams get.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from chromastream.kernels.combine import l_from_luma
from chromastream.kernels.frame_ops import CpuFrameOps
from chromastream.models.colorizer.hints import Hint, rasterize
from chromastream.models.runtime.base import F32, ModelInfo
from chromastream.models.runtime.session import ColorizerSession
from chromastream.models.runtime.stream_memory import StreamMemory
from chromastream.models.runtime.temporal_filter import STRENGTH
from chromastream.stream.config import PipelineConfig, StreamConfig
from chromastream.stream.frames import Reset
from chromastream.stream.pipeline import Pipeline
from tests.test_pipeline import H, PushSource, W, real_backend, scene

INFO = ModelInfo(version="test")
SHAPE = (64, 96)
RED = Hint(x=0.5, y=0.5, a=70.0, b=50.0, radius=0.2)
BLUE = Hint(x=0.1, y=0.9, a=20.0, b=-60.0, radius=0.1)


def _network_output(seed: int, shape: tuple[int, int] = SHAPE) -> tuple[F32, F32, F32]:
    """What the network would be given and answer for one frame: ``L``, ``ab`` and ``state_out``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    L = np.full((1, 1, h, w), 0.5, np.float32)  # a still picture: the filter blends fully
    ab = rng.normal(0.0, 0.2, (1, 2, h, w)).astype(np.float32)
    state = rng.normal(0.0, 1.0, INFO.state_shape(1, h, w)).astype(np.float32)
    return L, ab, state


def _frame(memory: StreamMemory, seed: int, shape: tuple[int, int] = SHAPE) -> tuple[F32, F32, F32]:
    """One frame through the memory: (hint input, state input, ab out in Lab units)."""
    hints, state_in = memory.inputs(shape)
    L, ab, state_out = _network_output(seed, shape)
    return hints, state_in, memory.update(L, ab, state_out)


# --- the recurrent state ---------------------------------------------------------------------------


def test_the_state_carries_over_until_a_reset() -> None:
    memory = StreamMemory(INFO)
    _, first, _ = _frame(memory, 0)
    assert first.shape == INFO.state_shape(1, *SHAPE) and first.dtype == np.float32
    assert not first.any(), "a new stream starts from zeros"

    _, carried, _ = _frame(memory, 1)
    np.testing.assert_array_equal(carried, _network_output(0)[2])  # the previous frame's state_out

    memory.reset()
    _, after_reset, _ = _frame(memory, 2)
    assert not after_reset.any()
    _, carried, _ = _frame(memory, 3)
    np.testing.assert_array_equal(carried, _network_output(2)[2])


def test_a_new_working_shape_starts_from_zeros_of_that_shape() -> None:
    memory = StreamMemory(INFO)
    _frame(memory, 0)
    _, state, _ = _frame(memory, 1, (96, 64))
    assert state.shape == INFO.state_shape(1, 96, 64)
    assert not state.any()


def test_memory_off_always_starts_from_zeros_and_leaves_the_output_unfiltered() -> None:
    memory = StreamMemory(INFO, memory=False)
    for seed in range(3):
        _, state, ab = _frame(memory, seed)
        assert not state.any()
        np.testing.assert_array_equal(ab, _network_output(seed)[1][0] * INFO.ab_scale)


# --- hints -----------------------------------------------------------------------------------------


def test_the_hint_raster_is_reused_until_the_hints_or_the_shape_change() -> None:
    memory = StreamMemory(INFO)
    plain, _, _ = _frame(memory, 0)
    assert plain.shape == (1, 3, *SHAPE) and not plain.any()
    again, _, _ = _frame(memory, 1)
    assert again is plain, "unchanged hints are rasterized once"

    memory.set_hints([RED])
    red, _, _ = _frame(memory, 2)
    np.testing.assert_array_equal(red, rasterize([RED], *SHAPE)[None])
    memory.set_hints([RED])  # the same set again
    memory.reset()  # hints outlive a reset
    assert _frame(memory, 3)[0] is red

    memory.set_hints([RED, BLUE])
    both, _, _ = _frame(memory, 4)
    np.testing.assert_array_equal(both, rasterize([RED, BLUE], *SHAPE)[None])

    turned, _, _ = _frame(memory, 5, (96, 64))
    np.testing.assert_array_equal(turned, rasterize([RED, BLUE], 96, 64)[None])
    assert memory.hints == (RED, BLUE)


# --- the temporal filter ---------------------------------------------------------------------------


def test_the_output_is_in_lab_units_and_filtered_on_a_still_picture() -> None:
    memory = StreamMemory(INFO)
    *_, first = _frame(memory, 0)
    raw = [_network_output(seed)[1][0] * INFO.ab_scale for seed in range(2)]
    np.testing.assert_array_equal(first, raw[0])  # nothing to blend with yet
    *_, second = _frame(memory, 1)
    # A still picture keeps STRENGTH of the previous colour.
    np.testing.assert_allclose(second, raw[1] + STRENGTH * (raw[0] - raw[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "fresh"),
    [
        (lambda m: m.set_hints([RED]), True),  # a new hint shows at once
        (lambda m: m.set_hints([]), False),  # the same (empty) set: the colour stays steady
        (lambda m: m.reset(), True),
    ],
)
def test_a_new_hint_set_or_a_reset_restarts_the_filter(change: Any, fresh: bool) -> None:
    memory = StreamMemory(INFO)
    _frame(memory, 0)
    _frame(memory, 1)
    change(memory)
    *_, ab = _frame(memory, 2)
    raw = _network_output(2)[1][0] * INFO.ab_scale
    assert np.array_equal(ab, raw) == fresh


def test_strength_zero_is_the_network_alone() -> None:
    memory = StreamMemory(INFO, smoothing=(0.0, 3.0))
    for seed in range(3):
        *_, ab = _frame(memory, seed)
        np.testing.assert_array_equal(ab, _network_output(seed)[1][0] * INFO.ab_scale)


# --- the live pipeline and the session agree -------------------------------------------------------


class RecordingFrameOps(CpuFrameOps):
    """The pipeline's own CPU frame work, keeping a copy of each ab it turns into chroma."""

    def __init__(self) -> None:
        self.ab: list[F32] = []

    def to_yuv420(self, y: np.ndarray, ab: F32, full_range: bool) -> tuple[Any, Any, Any]:
        self.ab.append(np.array(ab, copy=True))
        return super().to_yuv420(y, ab, full_range)


HINT = Hint(0.3, 0.6, 50.0, -30.0, 0.1)
# (action, argument): a frame's luma, new hints, a reset asked through the API, or one from the source.
STEPS: list[tuple[str, Any]] = [
    *(("frame", scene("stripes", i)) for i in range(3)),
    ("hints", [HINT]),
    *(("frame", scene("stripes", i)) for i in range(3, 5)),
    ("request", None),
    *(("frame", scene("stripes", i)) for i in range(5, 7)),
    ("hints", [HINT, Hint(0.8, 0.2, -40.0, 40.0, 0.15)]),
    *(("frame", scene("blobs", i)) for i in range(7, 9)),
    ("source", Reset("cam", "reconnect")),
    *(("frame", scene("blobs", i)) for i in range(9, 11)),
    *(("frame", scene("blobs", i, W, H)) for i in range(11, 13)),  # turned: a new working shape
    ("hints", []),
    *(("frame", scene("blobs", i, W, H)) for i in range(13, 15)),
]
RESETS = ["start", None, None, None, None, "request", None, None, None, "reconnect", None, "resize"]
RESETS += [None] * 3


@pytest.mark.parametrize("memory", [True, False])
def test_the_live_pipeline_and_the_session_give_the_same_ab(memory: bool) -> None:
    async def live() -> tuple[list[F32], list[dict[str, Any]]]:
        config = PipelineConfig(size=64, max_wait_ms=2.0, memory=memory, scene_cut_threshold=None)
        p = Pipeline(config, real_backend())
        ops = RecordingFrameOps()
        p.frame_ops = ops
        source = PushSource("cam")
        await p.add_stream(StreamConfig("cam", "rtsp://cam"), source)
        sub = p.subscribe("cam", maxsize=len(STEPS))
        await p.start()
        metadata = []
        for action, arg in STEPS:
            if action == "frame":
                await source.queue.put(arg)
                metadata.append((await anext(sub)).metadata["colorizer"])
            elif action == "hints":
                p.set_hints("cam", arg)
            elif action == "request":
                p.reset("cam")
            else:
                await source.queue.put(arg)
        await p.stop()
        return ops.ab, metadata

    pipeline_ab, metadata = asyncio.run(asyncio.wait_for(live(), 60))
    assert [m["reset"] for m in metadata] == RESETS
    assert [m["hints"] for m in metadata] == [0] * 3 + [1] * 4 + [2] * 6 + [0] * 2

    # The session gets the same frames, hints and resets, except the resize: a new working shape
    # starts fresh by the memory's own rule, as it does for the pipeline.
    session = ColorizerSession(real_backend(), size=64, memory=memory)
    session_ab = []
    for action, arg in STEPS:
        if action == "frame":
            session_ab.append(session.predict_ab(l_from_luma(arg)))
        elif action == "hints":
            session.set_hints(arg)
        else:
            session.reset()

    assert len(pipeline_ab) == len(session_ab) == len(RESETS)
    for i, (live_ab, file_ab) in enumerate(zip(pipeline_ab, session_ab, strict=True)):
        assert live_ab.shape == file_ab.shape == (2, *((64, 96) if i < 11 else (96, 64)))
        # Equal up to the network's own float noise; a different memory rule differs by whole Lab units.
        np.testing.assert_allclose(live_ab, file_ab, rtol=0, atol=1e-4, err_msg=f"frame {i}")
