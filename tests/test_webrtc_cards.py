"""While a stream's input is down, its viewers keep getting pictures: a "reconnecting" card, on time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from chromastream.stream import webrtc
from chromastream.stream.frames import OutputFrame
from chromastream.stream.webrtc import EncodedFrame, StreamEncoder, reconnecting_card


def output_frame(index: int) -> OutputFrame:
    y = np.full((96, 128), 120, np.uint8)
    u = np.full((48, 64), 90, np.uint8)
    v = np.full((48, 64), 170, np.uint8)
    return OutputFrame("cam", index, index * 3600, Fraction(1, 90000), y, u, v, False, 0.0, {"index": index})


class StallingSubscription:
    """Two frames, a gap with no frames (the camera rebooting), two more frames, then the end."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.closed = False

    async def _frames(self) -> AsyncIterator[OutputFrame]:
        for i in range(4):
            if i == 2:
                await asyncio.sleep(self.gap_s)
            yield output_frame(i)
            await asyncio.sleep(0.01)

    def __aiter__(self) -> AsyncIterator[OutputFrame]:
        return self._frames()

    def close(self) -> None:
        self.closed = True


class Feed:
    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s

    def subscribe(self, stream_id: str, maxsize: int = 2) -> Any:
        return StallingSubscription(self.gap_s)


def test_card_is_the_last_picture_dimmed_grey_and_labelled() -> None:
    card = reconnecting_card(output_frame(0), "cam")
    planes = card.to_ndarray(format="yuv420p")
    y, chroma = planes[:96], planes[96:]
    assert (card.width, card.height) == (128, 96)
    assert np.all(chroma == 128)  # no colour while the input is down
    assert np.median(y) < 0.5 * 120  # dimmed
    assert y.max() > 200  # the words are drawn
    first = reconnecting_card(None, "cam")
    assert (first.width, first.height) == (640, 480)


def test_encoder_sends_cards_while_the_input_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webrtc, "IDLE_CARD_S", 0.2)
    monkeypatch.setattr(webrtc, "CARD_PERIOD_S", 0.1)

    async def scenario() -> list[EncodedFrame]:
        encoder = StreamEncoder(Feed(gap_s=0.8), "cam", "VP8")
        queue = encoder.attach()
        items: list[EncodedFrame] = []
        while (item := await asyncio.wait_for(queue.get(), 5.0)) is not None:
            items.append(item)
        await encoder.close()
        return items

    items = asyncio.run(scenario())
    kinds = ["card" if "card" in i.event else "frame" for i in items]
    assert kinds[:2] == ["frame", "frame"] and kinds[-2:] == ["frame", "frame"]
    cards = kinds.count("card")
    assert 3 <= cards <= 9, kinds  # ~0.6 s of gap after the 0.2 s grace, one card every 0.1 s
    assert all(i.event["card"] == "reconnecting" for i in items if "card" in i.event)
    rtp = [i.event["rtp_time"] for i in items]
    assert rtp == sorted(rtp) and len(set(rtp)) == len(rtp)  # the clock keeps going forward
    decoder = av.CodecContext.create("libvpx", "r")
    pictures = [f for i in items for f in decoder.decode(i.packet)]
    assert len(pictures) == len(items)
