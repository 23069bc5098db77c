"""The viewer page in a real headless Chromium against a real server: video, metadata, click-to-hint.

The colorizer is a stand-in that paints its hints (see ``tests.test_server.HintEchoBackend``): the page,
the API, the pipeline and WebRTC are real, and the colour a click asks for has one right answer.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make system-deps``). Without them the test skips,
except under ``CI=true``, where a missing browser is a failure: CI is where it must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from chromastream.stream.config import ServeConfig
from tests.test_server import HintEchoBackend, live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Headless Chromium as the tests need it: no sandbox (root in containers), loopback ICE, autoplay.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--window-size=900,700",
)


def _require_browser() -> None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


class ServerThread:
    """The live server on its own event loop: the WebDriver calls below block. ``serving`` (an async
    context manager yielding the server's base URL) replaces the default :func:`live_server`."""

    def __init__(
        self,
        config: ServeConfig | None = None,
        backend: Any = None,
        serving: Callable[[], AbstractAsyncContextManager[str]] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.serving = serving
        self.base: queue.Queue[str | BaseException] = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @contextlib.asynccontextmanager
    async def _live(self) -> AsyncIterator[str]:
        async with live_server(self.config, fps=15.0, backend=self.backend) as (base, _):
            yield base

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        try:
            async with (self.serving or self._live)() as base:
                self.base.put(base)
                await self.stop_event.wait()
        except BaseException as exc:
            self.base.put(exc)
            raise

    def __enter__(self) -> str:
        self.thread.start()
        base = self.base.get(timeout=60)
        if isinstance(base, BaseException):
            raise base
        return base

    def __exit__(self, *_: object) -> None:
        if self.loop is not None and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromastream-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_script_timeout(20)
        try:
            yield driver
        finally:
            driver.quit()


def poll(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not met in {timeout} s (last: {last!r})")


def redness(rgb: list[float]) -> float:
    return rgb[0] - (rgb[1] + rgb[2]) / 2


def test_viewer_page_plays_colorized_video_with_metadata_and_hints(browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    # The stand-in colorizer paints exactly its hints, so the colour under the click is a known answer.
    with ServerThread(backend=HintEchoBackend()) as base:
        browser.get(base + "/")
        hooks = "return window.chromastream"

        def js(expr: str) -> Any:
            return browser.execute_script(f"{hooks}.{expr}")

        def frames_decoded() -> int:
            return int(
                browser.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "window.chromastream.framesDecoded('cam1').then(done, () => done(0));"
                )
            )

        poll(lambda: "cam1" in (js("streams()") or []), what="stream card")
        poll(lambda: frames_decoded() > 5, what="frames decoded")
        assert js("videoSize('cam1')") == [64, 48]

        # Metadata arrives on the data channel and belongs to the frames on screen: one offset maps
        # the displayed frames' RTP timestamps onto the metadata's.
        poll(lambda: js("metadataCount('cam1')") > 10, what="metadata")
        last = js("lastMetadata('cam1')")
        assert last["stream"] == "cam1"
        assert isinstance(last["pts"], int)
        shown = poll(lambda: js("frameRtpTimes('cam1')") if len(js("frameRtpTimes('cam1')")) > 10 else None)
        meta = js("metadataRtpTimes('cam1')")
        offsets = Tally((f - m) % (1 << 32) for f in shown for m in meta)
        matched = offsets.most_common(1)[0][1]
        assert matched >= 0.8 * len(shown), (matched, len(shown))
        badge = browser.find_element(By.CSS_SELECTOR, "[data-stream='cam1'] .deepfake").text
        assert badge.startswith("deepfake:")

        # Click-to-hint through the UI: a point on the video, a colour, and the colour shows up there.
        before = js("sampleColour('cam1', 0.5, 0.5, 3)")
        video = browser.find_element(By.CSS_SELECTOR, "[data-stream='cam1'] video")
        ActionChains(browser).move_to_element(video).click().perform()
        browser.execute_script(
            "const card = document.querySelector(\"[data-stream='cam1']\");"
            "card.querySelector('.hint-size').value = '0.12';"
            "const input = card.querySelector('.hint-colour');"
            "input.value = '#ff0000';"
            "input.dispatchEvent(new Event('change'));"
        )
        hints = poll(lambda: js("hints('cam1')"), what="hint listed")
        assert len(hints) == 1
        assert abs(hints[0]["x"] - 0.5) < 0.05 and abs(hints[0]["y"] - 0.5) < 0.05
        assert hints[0]["a"] > 40  # red

        def redder() -> list[float] | None:
            after = js("sampleColour('cam1', 0.5, 0.5, 3)")
            return after if redness(after) > redness(before) + 15 else None

        after = poll(redder, what="hint colour on the video")
        assert after[0] > after[2], (before, after)

        browser.find_element(By.CSS_SELECTOR, "[data-stream='cam1'] .clear-hints").click()
        poll(lambda: js("hints('cam1')") == [], what="hints cleared")


def _brightness(png: bytes) -> float:
    """Mean grey level of a screenshot (PNG bytes)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.size > 0
    return float(image.mean())


def test_overlay_hides_once_playing_and_returns_when_the_stream_goes_down(browser: Any) -> None:
    """The "reconnecting…" overlay is what a user sees first: off the picture while video plays, over it
    (darkening it) while the server is gone."""
    from selenium.webdriver.common.by import By

    card = "[data-stream='cam1']"
    overlay_display = f'return getComputedStyle(document.querySelector("{card} .overlay")).display'
    with ServerThread(backend=HintEchoBackend()) as base:
        browser.get(base + "/")
        poll(lambda: "cam1" in (browser.execute_script("return window.chromastream.streams()") or []))
        poll(
            lambda: (
                browser.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "window.chromastream.framesDecoded('cam1').then(done, () => done(0));"
                )
                > 5
            ),
            what="frames decoded",
        )
        assert poll(lambda: browser.execute_script(overlay_display) == "none", what="overlay hidden")

        # What is on screen is as bright as the decoded frames themselves: nothing lies over the video.
        # (The stand-in colorizer sends the synthetic pattern in grey, a mean level of about 120.)
        video = browser.find_element(By.CSS_SELECTOR, f"{card} video")
        decoded = browser.execute_script("return window.chromastream.sampleColour('cam1', 0.5, 0.5, 100)")
        decoded_level = sum(decoded) / 3
        shown_level = _brightness(video.screenshot_as_png)
        assert decoded_level > 80, decoded
        assert shown_level > 0.85 * decoded_level, (shown_level, decoded_level)

    # The server is gone: the page says so over the last picture.
    assert poll(lambda: browser.execute_script(overlay_display) != "none", timeout=30, what="overlay shown")
    overlay = browser.find_element(By.CSS_SELECTOR, f"{card} .overlay")
    assert overlay.is_displayed() and "reconnecting" in overlay.text
    assert _brightness(video.screenshot_as_png) < 0.7 * decoded_level
