"""Pytest fixtures around the real GStreamer RTSP server (``tests/rtsp_server.py``) on 127.0.0.1.

Use them with ``pytest_plugins = ["tests.rtsp_fixtures"]`` in a test module (or the root conftest):

* ``rtsp_clip``: a short H.264 clip made in ``tmp_path`` (key frame every 12 frames, so a client that
  joins or reconnects decodes within half a second);
* ``rtsp_server``: a started :class:`RtspServer` serving that clip on ``/live`` (PLAY, looped) and taking
  pushes on ``/push`` (RECORD); ``stop()``, ``start()``, ``restart()``, ``hold()`` and ``resume()`` drive
  it, ``wait_for()`` waits for what it reports.

The server runs under Debian's ``/usr/bin/python3`` because PyGObject and GStreamer come from the
distribution (``make system-deps``). Without them the tests are skipped with the reason, except under
``CI=true``, where a missing server is a failure: CI installs it, so its absence is a broken setup.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
START_TIMEOUT = 15.0


@functools.cache
def gstreamer_problem() -> str | None:
    """Why the RTSP server cannot run here, or ``None`` when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the GStreamer RTSP server needs Debian's python3-gi)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst; Gst.init(None); "
        "missing = [e for e in ('appsrc', 'h264parse', 'rtph264pay', 'decodebin', 'y4menc', 'qtdemux') "
        "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
    )
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"GStreamer RTSP server unavailable ({last}); run `make system-deps`"
    if result.stdout.strip():
        return f"GStreamer elements missing: {result.stdout.strip()}; run `make system-deps`"
    return None


def require_gstreamer() -> None:
    """Skip the calling test without GStreamer, or fail it under ``CI=true``."""
    problem = gstreamer_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the RTSP test server cannot run: {problem}")
    pytest.skip(problem)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_h264_clip(
    path: Path, frames: int = 50, width: int = 160, height: int = 120, fps: int = 25, gop: int = 12
) -> Path:
    """A small H.264 MP4 with moving structure, so the encoder and decoder do real work."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            luma = (40 + (xx * 3 + i * 5) % 150 + 30 * ((yy // 8 + i) % 2)).astype(np.uint8)
            rgb = np.repeat(luma[:, :, None], 3, axis=2)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class RtspServer:
    """One ``rtsp_server.py`` process; keeps its port across restarts, so clients can come back."""

    def __init__(self, port: int, clip: Path | None, record_out: Path | None = None) -> None:
        self.port = port
        self.clip = clip
        self.record_out = record_out
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._changed = threading.Condition()

    @property
    def play_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    @property
    def record_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/push"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait for its ready line (retrying briefly if the port is still busy)."""
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)]
        if self.clip is not None:
            command += ["--clip", str(self.clip)]
        if self.record_out is not None:
            command += ["--record-out", str(self.record_out)]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ready_before = self.count("ready")
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
            )
            self._process = process
            self._readers = [
                threading.Thread(target=self._read_events, args=(process,), daemon=True),
                threading.Thread(target=self._read_stderr, args=(process,), daemon=True),
            ]
            for reader in self._readers:
                reader.start()
            if self._wait_ready(process, ready_before, deadline):
                return
            self._terminate(process)
            if process.returncode == 2 and time.monotonic() < deadline:  # port not free yet
                time.sleep(0.2)
                continue
            raise RuntimeError(f"RTSP test server did not start: {' '.join(self.stderr[-5:])}")

    def _wait_ready(self, process: subprocess.Popen[str], before: int, deadline: float) -> bool:
        with self._changed:
            self._changed.wait_for(
                lambda: self.count("ready") > before or process.poll() is not None,
                timeout=max(0.0, deadline - time.monotonic()),
            )
        return self.count("ready") > before

    def stop(self) -> None:
        if self._process is not None:
            self._terminate(self._process)
            self._process = None

    def restart(self, down: float = 0.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def hold(self) -> None:
        """Keep the RTSP sessions but stop sending video: a stalled camera."""
        self._signal(signal.SIGUSR1)
        self.wait_for("play_held")

    def resume(self) -> None:
        self._signal(signal.SIGUSR2)
        self.wait_for("play_resumed")

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e["event"] == name)

    def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first reported event called ``name`` (that satisfies ``predicate``), waiting if needed."""

        def found() -> dict[str, Any] | None:
            for event in self.events:
                if event["event"] == name and (predicate is None or predicate(event)):
                    return event
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None, timeout=timeout)
        event = found()
        if event is None:
            raise TimeoutError(f"RTSP test server did not report {name!r} within {timeout} s")
        return event

    def _signal(self, signum: int) -> None:
        assert self._process is not None and self._process.poll() is None, "server is not running"
        self._process.send_signal(signum)

    def _terminate(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for reader in self._readers:  # they reach the end of the pipes once the process is gone
            reader.join(timeout=5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    def _read_events(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.stderr.append(line.rstrip())
        with self._changed:
            self._changed.notify_all()


@pytest.fixture
def rtsp_clip(tmp_path: Path) -> Path:
    return make_h264_clip(tmp_path / "rtsp_clip.mp4")


@pytest.fixture
def rtsp_server(tmp_path: Path, rtsp_clip: Path) -> Iterator[RtspServer]:
    require_gstreamer()
    server = RtspServer(free_port(), rtsp_clip, record_out=tmp_path / "received.y4m")
    server.start()
    try:
        yield server
    finally:
        server.stop()
