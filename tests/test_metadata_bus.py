"""The metadata bus: a real ``chromastream serve`` publishing to a real Mosquitto broker on 127.0.0.1.

What a subscriber notices is checked: the node and each stream marked up (retained, so a late
subscriber sees them too), a summary about once a second per stream with plausible figures, a verdict,
a removed stream going down, the server's clean stop marking everything down and offline, and every
message valid against its schema in ``docs/schemas``. A broker that is down at start costs one warning
line and no serving; once it is up the messages flow, and when it goes away and comes back they flow
again; a server killed outright is marked offline by its Last Will.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
import yaml
from aiohttp import ClientSession

from chromastream.models.shared_data import shared_root
from chromastream.stream.cli import main
from chromastream.stream.config import ConfigError, parse_config
from chromastream.stream.metadata_bus import parse_sink_url
from tests.missing import missing
from tests.test_server import Served, served

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
CAMERA = "synthetic:?width=96&height=64&fps=15"
MOSQUITTO = Path("/usr/sbin/mosquitto")
LABELS = ("off", "real", "uncertain", "fake", "no_face")
FACE_CLIP = shared_root() / "data" / "faces" / "dfdc" / "dfdc_train_part_0" / "brtujopkby.mp4"
"""A DFDC clip with one face in view (a fake, per the set's labels), for the detector's own verdict."""


@pytest.fixture(autouse=True, scope="module")
def _mosquitto_installed() -> None:
    if not MOSQUITTO.exists():
        missing("Mosquitto is not installed (/usr/sbin; make system-deps)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """Debian's Mosquitto on a loopback port, anonymous, without persistence (a restart forgets the
    retained messages, so whatever is retained afterwards was published again)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.port = port
        self.conf = folder / f"mosquitto-{port}.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    server = Broker(tmp_path_factory.mktemp("mosquitto"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {
        kind: json.loads((SCHEMAS / f"mqtt-{kind}.schema.json").read_text())
        for kind in ("node", "status", "verdict", "summary", "frame")
    }


@dataclass
class Received:
    topic: str
    retain: bool
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        """The message kind its topic names: ``node``, ``status``, ``verdict``, ``summary``, ``frame``."""
        last = self.topic.rsplit("/", 1)[1]
        return "node" if "/nodes/" in self.topic else {"frames": "frame"}.get(last, last)


class Listener:
    """A subscriber to ``PREFIX/#`` that keeps every message it gets."""

    def __init__(self, port: int, prefix: str) -> None:
        self.port, self.prefix = port, prefix
        self.messages: list[Received] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Listener:
        client = await self._stack.enter_async_context(aiomqtt.Client("127.0.0.1", self.port))
        await client.subscribe(f"{self.prefix}/#", qos=1)
        task = asyncio.get_running_loop().create_task(self._collect(client))
        self._stack.callback(task.cancel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            self.messages.append(Received(str(message.topic), message.retain, json.loads(message.payload)))

    def of(self, kind: str, stream: str | None = None) -> list[Received]:
        return [
            m for m in self.messages if m.kind == kind and (stream is None or m.body.get("stream") == stream)
        ]

    async def until(self, condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout:.0f} s; got {[m.topic for m in self.messages]}")


def valid(schemas: dict[str, dict[str, Any]], messages: list[Received]) -> None:
    for message in messages:
        jsonschema.validate(message.body, schemas[message.kind])


def serve_with_bus(
    folder: Path, port: int, prefix: str, workers: int, streams: list[str], extra: str = ""
) -> Served:
    config = folder / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": {"backend": "pass-through", "detector_rate": 0},
                "metadata_sink": f"mqtt://127.0.0.1:{port}/{prefix}{extra}",
                "streams": [{"id": s, "url": CAMERA} for s in streams],
            }
        )
    )
    return Served(folder, "--config", str(config), "--workers", str(workers))


def bus_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "metadata bus:" in line and "retrying" in line]


# -------------------------------------------------------------------------------------- settings


def test_the_sink_url_is_checked_at_load_and_its_password_never_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = parse_sink_url("mqtt://cam:s3cret@127.0.0.1/site/a?frames=1&node=gate-box")
    assert (target.host, target.port, target.prefix, target.username, target.password) == (
        "127.0.0.1",
        1883,
        "site/a",
        "cam",
        "s3cret",
    )
    assert target.frames and target.node == "gate-box" and target.shown.startswith("mqtt://***@")
    assert parse_sink_url("mqtts://127.0.0.1").port == 8883
    assert parse_sink_url("mqtt://127.0.0.1:1999").prefix == "chromastream"
    for bad, why in (
        ("http://u:s3cret@127.0.0.1", "must be mqtt://"),
        ("mqtt://u:s3cret@127.0.0.1/a/#", "no '#'"),
        ("mqtt://u:s3cret@127.0.0.1/a/+/b", "prefix"),
        ("mqtt://u:s3cret@127.0.0.1?frame=1", "unknown option 'frame'"),
        ("mqtt://u:s3cret@127.0.0.1?frames=yes", "frames must be 0 or 1"),
        ("mqtt://u:s3cret@127.0.0.1?ca=/no/ca.pem", "for mqtts:// only"),
        ("mqtt:///prefix", "no host"),
    ):
        with pytest.raises(ConfigError, match=rf"^metadata_sink: .*{re.escape(why)}") as error:
            parse_config({"metadata_sink": bad})
        assert "s3cret" not in str(error.value)
    assert main(["serve", "--metadata-sink", "mqtt://u:s3cret@127.0.0.1:0", "--port", "0"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("chromastream: error:") and "metadata_sink" in err[0], err
    assert "s3cret" not in err[0]


# ----------------------------------------------------------------------------------- a real server


@pytest.mark.parametrize("workers", [1, 2])
def test_streams_are_published_up_summarised_and_down(
    tmp_path: Path, broker: Broker, schemas: dict[str, dict[str, Any]], workers: int
) -> None:
    prefix = f"bus-{uuid.uuid4().hex[:8]}"
    streams = ["cam1", "cam2"][:workers]
    server = serve_with_bus(tmp_path, broker.port, prefix, workers, streams, "?frames=1")

    async def body() -> None:
        async with Listener(broker.port, prefix) as bus, ClientSession() as http:
            for stream in streams:
                await bus.until(
                    lambda s=stream: [m for m in bus.of("status", s) if m.body["status"] == "up"],
                    f"{stream} up",
                )
                await bus.until(lambda s=stream: len(bus.of("summary", s)) >= 4, f"{stream}'s summaries")
            await bus.until(lambda: bus.of("verdict", "cam1") and bus.of("frame", "cam1"), "verdict, frames")
            valid(schemas, bus.messages)

            nodes = {m.body["node"] for m in bus.of("status")}
            assert len(nodes) == workers  # each worker publishes its own streams under its own node
            summaries = bus.of("summary", "cam1")[1:]  # the first may cover less than a second
            gaps = [b.body["time"] - a.body["time"] for a, b in itertools.pairwise(summaries)]
            assert all(0.6 <= gap <= 1.8 for gap in gaps), gaps
            for summary in (m.body for m in summaries):
                assert 0.8 <= summary["interval_s"] <= 1.8 and summary["state"] == "running"
                assert 3 <= summary["fps_out"] <= 20 and 3 <= summary["fps_in"] <= 20, summary
                assert summary["latency_ms_p50"] is not None and summary["latency_ms_p50"] < 2000
                assert summary["latency_ms_p95"] >= summary["latency_ms_p50"]
                assert summary["viewers"] == 0 and summary["verdict"] in LABELS
            assert bus.of("verdict", "cam1")[0].body["verdict"] in LABELS

            async with Listener(broker.port, prefix) as late:  # the states are retained
                await late.until(
                    lambda: len([m for m in late.messages if m.retain]) >= 2 * workers, "retained"
                )
                retained = {m.topic: m.body for m in late.messages if m.retain}
                assert retained[f"{prefix}/streams/cam1/status"]["status"] == "up"
                assert all(retained[f"{prefix}/nodes/{n}"]["status"] == "online" for n in nodes)

            async with http.get(f"{server.base}/metrics") as response:
                text = await response.text()
            assert re.search(r'chromastream_bus_messages_total\{kind="summary".*\} [1-9]', text), text
            assert re.search(r"^chromastream_bus_connected(\{.*\})? 1\.0$", text, re.M)

            async with http.delete(f"{server.base}/api/streams/cam1") as response:
                assert response.status == 200
            down = await bus.until(
                lambda: [m for m in bus.of("status", "cam1") if m.body["status"] == "down"], "cam1 down"
            )
            assert down[0].body["state"] == "removed" and down[0].retain is False

            assert server.stop() == 0
            offline = await bus.until(
                lambda: {m.body["node"] for m in bus.of("node") if m.body["status"] == "offline"} == nodes,
                "every node offline",
            )
            assert offline
            if workers == 2:
                last = bus.of("status", "cam2")[-1].body
                assert (last["status"], last["state"]) == ("down", "stopped")
            assert all(m.body["reason"] == "stopped" for m in bus.of("node") if m.body["status"] == "offline")
            valid(schemas, bus.messages)

    try:
        asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        server.close()
    assert bus_warnings(server.stderr()) == []


def test_the_detectors_own_verdict_on_a_face_reaches_the_bus(
    tmp_path: Path, broker: Broker, schemas: dict[str, dict[str, Any]]
) -> None:
    """With the detector on and a face in view, the verdict topic carries the detector's verdict (not
    ``off`` or ``no_face``) with its probability, and the summaries repeat it."""
    if not FACE_CLIP.is_file():
        missing(f"the DFDC face clip is not at {FACE_CLIP} (set CHROMASTREAM_SHARED)")
    prefix = f"face-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": {"backend": "pass-through", "detector_rate": 4},
                "metadata_sink": f"mqtt://127.0.0.1:{broker.port}/{prefix}",
                "streams": [{"id": "face", "url": FACE_CLIP.as_uri(), "loop": True}],
            }
        )
    )
    server = Served(tmp_path, "--config", str(config))

    async def body() -> None:
        async with Listener(broker.port, prefix) as bus:
            judged = await bus.until(
                lambda: [
                    m for m in bus.of("verdict", "face") if m.body["verdict"] in ("real", "uncertain", "fake")
                ],
                "a verdict on the face",
                timeout=40,
            )
            verdict = judged[0].body
            assert 0.0 <= verdict["probability"] <= 1.0 and verdict["faces"] >= 1
            await bus.until(
                lambda: [m for m in bus.of("summary", "face") if m.body["verdict"] == verdict["verdict"]],
                "a summary with that verdict",
            )
            async with ClientSession() as http, http.get(f"{server.base}/metrics") as response:
                text = await response.text()  # and Prometheus sees the same verdicts
            series = f'chromastream_deepfake_verdicts_total{{stream="face",verdict="{verdict["verdict"]}"}}'
            counted = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
            assert counted is not None and float(counted.group(1)) >= 1, text
            latest = re.search(r'^chromastream_deepfake_probability\{stream="face"\} (\S+)$', text, re.M)
            assert latest is not None and 0.0 <= float(latest.group(1)) <= 1.0, text
            async with Listener(broker.port, prefix) as late:  # and it is retained for a late subscriber
                kept = await late.until(
                    lambda: [m for m in late.of("verdict", "face") if m.retain], "a retained verdict"
                )
                assert kept[-1].body["verdict"] in ("real", "uncertain", "fake")
            valid(schemas, bus.messages)

    try:
        asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        server.close()


def test_a_broker_that_is_away_never_stops_serving_and_a_killed_server_reads_offline(
    tmp_path: Path, schemas: dict[str, dict[str, Any]]
) -> None:
    port = free_port()
    later = Broker(tmp_path, port)
    prefix = "away"
    config = tmp_path / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pipeline": {"backend": "pass-through", "detector_rate": 0},
                "metadata_sink": f"mqtt://cam:s3cret@127.0.0.1:{port}/{prefix}",
                "streams": [{"id": "cam1", "url": CAMERA}],
            }
        )
    )

    async def body(server: Served) -> None:
        async with ClientSession() as http:
            await asyncio.sleep(2.0)  # several attempts to connect
            async with http.get(f"{server.base}/api/streams/cam1") as response:
                stream = await response.json()
            assert stream["state"] == "running" and stream["frames_out"] > 0
            async with http.get(f"{server.base}/healthz") as response:
                assert response.status == 200
            warnings = bus_warnings(server.stderr())
            assert len(warnings) == 1, server.stderr()
            assert "cannot reach mqtt://***@127.0.0.1" in warnings[0]

            later.start()
            async with Listener(port, prefix) as bus:
                await bus.until(lambda: bus.of("summary", "cam1"), "messages once the broker is up", 12)
                assert any(m.body["status"] == "up" for m in bus.of("status", "cam1"))
            later.stop()  # goes away while serving: one more line, and back again
            await asyncio.sleep(1.0)
            later.start()
            async with Listener(port, prefix) as bus:
                up = await bus.until(
                    lambda: [m for m in bus.of("status", "cam1") if m.body["status"] == "up"],
                    "the status published again after the broker's restart",
                    12,
                )
                assert bus.of("node") and bus.of("node")[-1].body["status"] == "online"
                valid(schemas, bus.messages)
                log = server.stderr()
                assert len(bus_warnings(log)) == 2 and "lost the connection" in bus_warnings(log)[1], log
                assert up

                server.process.send_signal(signal.SIGKILL)
                server.process.wait(10)
                will = await bus.until(
                    lambda: [m for m in bus.of("node") if m.body["status"] == "offline"], "the Last Will"
                )
                assert will[0].body["reason"] == "lost"
                valid(schemas, bus.messages)

    try:
        with served(tmp_path, "--config", str(config), "--workers", "1") as server:
            asyncio.run(asyncio.wait_for(body(server), 60))
            log = server.stderr()
    finally:
        later.stop()
    assert "s3cret" not in log and "Traceback" not in log
