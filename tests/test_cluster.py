"""``serve --cluster``: a real Ray cluster of three nodes on 127.0.0.1 behind a real gateway.

The head node has no CPU to give, so every worker actor lands on one of the two worker nodes, one each.
Cameras are the GStreamer RTSP server's. What a user notices is checked: every stream flows (its frame
count rises in the gateway's API), ``/metrics`` carries each worker's series, a WHEP viewer signalled
through the gateway receives coloured video from a worker node, a restarted controller still knows
every stream's worker and hints, and a node that dies hands its streams to the surviving worker within
15 s, hints kept. Bad cluster addresses are one error line and exit status 2.

The cluster starts once for the module (about 10 s on two cores, the gateway and its workers about 30 s
more); the node-kill test runs last because it takes a node away. By default each worker gets one camera
stream; ``CHROMASTREAM_CLUSTER=full`` gives each two, so a node's loss moves several streams at once.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep 127.0.0.1 as it is (see connect)

from chromastream.stream.cli import _serve_config, build_parser, main
from chromastream.stream.cluster import ClusterError, cluster_worker_count, parse_address
from chromastream.stream.config import ClusterConfig, ConfigError, parse_config
from tests import test_browser
from tests.missing import missing
from tests.rtsp_fixtures import RtspServer, free_port, make_h264_clip, require_gstreamer
from tests.test_browser import poll
from tests.test_server import Served
from tests.test_webrtc import chroma, frames_at_least, whep
from tests.test_workers import event_where, streams_by_id, until

browser = test_browser.browser  # the headless Chromium fixture

REPO = Path(__file__).resolve().parents[1]
RED = {"x": 0.5, "y": 0.5, "rgb": "#ff0000"}
BLUE = {"x": 0.2, "y": 0.2, "rgb": "#0000ff"}
FULL = os.environ.get("CHROMASTREAM_CLUSTER", "").lower() == "full"
PER_WORKER = 2 if FULL else 1
FAILOVER_S = 15.0


# ------------------------------------------------------------------------ settings (no cluster needed)


def test_cluster_section_and_flag(tmp_path: Path) -> None:
    assert parse_config({}).cluster == ClusterConfig()
    cluster = parse_config({"cluster": {"address": "10.0.0.5:6379", "cpus_per_worker": 4}}).cluster
    assert (cluster.address, cluster.cpus_per_worker, cluster.workers) == ("10.0.0.5:6379", 4.0, "auto")
    for bad, key in (({"cpus_per_worker": 0}, "cpus_per_worker"), ({"workers": 0}, "workers")):
        with pytest.raises(ConfigError, match=rf"^cluster\.{key}: must be"):
            parse_config({"cluster": bad})
    config = tmp_path / "serve.yaml"
    config.write_text("cluster: {address: '10.0.0.5:6379', workers: 3}\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--cluster", "auto"])
    assert _serve_config(args).cluster == ClusterConfig(address="auto", workers=3)


def test_worker_count_follows_the_cluster_resources() -> None:
    def node(cpu: float, gpu: float = 0, alive: bool = True) -> dict[str, Any]:
        return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}

    settings = ClusterConfig(address="auto", cpus_per_worker=2)
    count, why = cluster_worker_count(settings, [node(0), node(4), node(3), node(8, alive=False)])
    assert count == 3 and "one per 2 CPUs of each node (7 CPUs on 3 nodes, no GPU)" in why
    count, why = cluster_worker_count(settings, [node(16, gpu=2), node(16, gpu=1)])
    assert count == 3 and "one per GPU" in why
    assert cluster_worker_count(ClusterConfig(address="auto", workers=5), [node(1)]) == (5, "as configured")


def test_addresses_are_checked_before_ray_is_asked() -> None:
    assert parse_address("auto") is None
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    for bad in ("10.0.0.5", "head:port", ":6379", "head:70000"):
        with pytest.raises(ClusterError, match="expected auto or HOST:PORT"):
            parse_address(bad)
    with pytest.raises(ClusterError, match=r"Ray Client \(ray://\) is not supported"):
        parse_address("ray://head:10001")


@pytest.mark.parametrize("address", ["127.0.0.1:1", "head-without-port", "ray://127.0.0.1:10001"])
def test_a_bad_cluster_address_is_one_line_and_status_2(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert main(["serve", "--cluster", address, "--port", "0"]) == 2
    assert time.monotonic() - started < 10
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("chromastream: error:"), err
    assert address.split(":")[0] in err[0] or "ray://" in err[0]


def test_an_address_that_answers_but_is_no_ray_head_gives_up_in_time(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections, never speaks gRPC
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        config = tmp_path / "serve.yaml"
        port = listener.getsockname()[1]
        config.write_text(f"cluster: {{address: '127.0.0.1:{port}', connect_timeout_s: 2}}\n")
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "chromastream.stream.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2 and time.monotonic() - started < 25
    # Ray's core prints its own connection warnings first; the last line is the one that says what failed.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"chromastream: error: cannot join the Ray cluster at 127.0.0.1:{port}"), last
    assert "did not answer as a Ray head within 12 s" in last
    assert "Traceback" not in result.stderr


def test_without_ray_cluster_mode_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from chromastream.stream.cli import main\n"
        "sys.exit(main(['serve', '--cluster', '127.0.0.1:6379', '--port', '0']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "chromastream: error: serve --cluster needs Ray: pip install 'chromastream[cluster]'"
    ]


def test_only_the_cluster_modules_import_ray() -> None:
    """Single-machine ``serve`` never loads Ray: no other module imports it, and the command's modules
    load without it."""
    importers = set()
    for path in (REPO / "stream").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.name)
    assert importers == {"cluster.py", "cluster_actors.py"}
    code = (
        "import sys; import chromastream.stream.cli, chromastream.stream.server, "
        "chromastream.stream.workers, chromastream.stream.pipeline; "
        "print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------------------ a three-node cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    try:
        import ray.cluster_utils as ray_cluster_utils
    except ImportError:
        missing("ray is not installed (the cluster extra: pip install -e '.[cluster]')")
    node = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20}
    cluster = ray_cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            **node,
            "num_cpus": 0,  # the gateway's node: no worker lands here
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        import ray

        ray.shutdown()
        session = cluster.head_node.get_session_dir_path()
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)  # Ray's logs of this cluster


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspServer]:
    require_gstreamer()
    folder = tmp_path_factory.mktemp("cameras")
    server = RtspServer(free_port(), make_h264_clip(folder / "clip.mp4", width=96, height=64))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    ray_cluster: Any, cameras: RtspServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("gateway")
    streams = [{"id": f"cam{i}", "url": cameras.play_url} for i in range(1, 2 * PER_WORKER + 1)]
    config = {
        "cluster": {"address": ray_cluster.address, "cpus_per_worker": 1},
        "pipeline": {"detector_rate": 0},
        "streams": streams,
    }
    (folder / "serve.yaml").write_text(yaml.safe_dump(config))
    server = Served(folder, "--config", str(folder / "serve.yaml"))
    try:
        yield server
    finally:
        assert server.stop() == 0, server.stderr()
        assert "Traceback" not in server.stderr(), server.stderr()


def run(body: Any) -> None:
    asyncio.run(asyncio.wait_for(body(), timeout=60))


def worker_nodes(gateway: Served) -> dict[str, str]:
    """Worker actor name -> the id prefix of its node, as the gateway logs them."""
    return dict(re.findall(r"(chromastream-worker-\d+) running on node (\w+)", gateway.stderr()))


async def nodes_of_streams(session: ClientSession, base: str) -> dict[str, str]:
    """Stream -> the Ray node its worker runs on, as the API shows it."""
    return {i: s["node"] for i, s in (await streams_by_id(session, base)).items()}


def test_streams_run_on_the_worker_nodes_and_flow(ray_cluster: Any, gateway: Served) -> None:
    base = gateway.base
    head = ray_cluster.head_node.node_id
    placed = worker_nodes(gateway)
    assert len(placed) == 2 and not any(head.startswith(p) for p in placed.values()), gateway.stderr()
    assert "2 cluster workers (auto: one per 1 CPUs of each node (2 CPUs on 3 nodes" in gateway.stderr()

    async def body() -> None:
        async with ClientSession() as session:
            streams = await streams_by_id(session, base)
            owners = {i: s["worker"] for i, s in streams.items()}
            assert set(owners.values()) == set(placed)  # spread evenly: each worker has its share
            nodes = await nodes_of_streams(session, base)
            assert all(nodes[i].startswith(placed[w]) for i, w in owners.items()), (nodes, placed)
            assert sorted(owners.values()).count(next(iter(placed))) == PER_WORKER
            first = {i: s["frames_out"] for i, s in streams.items()}

            async def all_flowing() -> bool:
                now = await streams_by_id(session, base)
                return all(now[i]["frames_out"] >= first[i] + 5 for i in first)

            await until(all_flowing, 30, "frames on every stream")
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
            for stream_id, worker in owners.items():
                line = rf'^chromastream_frames_out_total\{{stream="{stream_id}",worker="{worker}"\}} (\S+)$'
                match = re.search(line, text, re.M)
                assert match and float(match.group(1)) > 0, stream_id
            assert len(re.findall(r'^chromastream_worker_up\{worker="[^"]+"\} 1\.0$', text, re.M)) == 2

            async with session.put(f"{base}/api/streams/cam1/hints", json=[RED, BLUE]) as r:
                assert r.status == 200
            event = await event_where(session, base, "cam1", lambda e: e["colorizer"]["hints"] == 2)
            assert event["stream"] == "cam1"

    run(body)


def test_a_viewer_gets_coloured_video_from_a_worker_node_through_the_gateway(gateway: Served) -> None:
    base = gateway.base

    async def body() -> None:
        async with ClientSession() as session:
            owner = (await streams_by_id(session, base))["cam2"]["worker"]
            started = time.monotonic()
            async with whep(session, base, "cam2") as viewer:
                await frames_at_least(viewer, 10)
                assert time.monotonic() - started < 20
                last = viewer.frames[-1]
                assert (last.width, last.height) == (96, 64)
                assert {m["stream"] for m in viewer.messages} == {"cam2"}
                u, v = chroma(last, (slice(None), slice(None)))
                assert abs(u) + abs(v) > 1.0, (u, v)  # the shipped model colours the grey camera
                assert (await streams_by_id(session, base))["cam2"]["viewers"] == 1
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                assert f'chromastream_webrtc_viewers{{stream="cam2",worker="{owner}"}} 1.0' in text
                async with session.delete(base + viewer.location) as r:
                    assert r.status == 200

    run(body)


def test_a_restarted_controller_keeps_every_assignment_and_hint(ray_cluster: Any, gateway: Served) -> None:
    import ray

    from chromastream.stream.cluster_actors import CONTROLLER_NAME, NAMESPACE

    base = gateway.base

    owners: dict[str, Any] = {}
    state: dict[str, Any] = {}

    async def before() -> None:
        async with ClientSession() as session:
            async with session.put(f"{base}/api/streams/cam2/hints", json=[RED]) as r:
                assert r.status == 200
                state["hints"] = (await r.json())["hints"]
            owners.update({i: s["worker"] for i, s in (await streams_by_id(session, base)).items()})

    run(before)
    ray.init(address=ray_cluster.address, namespace=NAMESPACE, configure_logging=False, log_to_driver=False)
    try:
        controller = ray.get_actor(CONTROLLER_NAME)
        ray.kill(controller, no_restart=False)
    finally:
        ray.shutdown()

    async def after() -> None:
        async with ClientSession() as session:
            # The restarted controller answers with what it kept: same owners, same hints.
            async def answered() -> dict[str, Any] | None:
                streams = await streams_by_id(session, base)
                return streams if all(s["state"] == "running" for s in streams.values()) else None

            streams = await until(answered, 20, "the stream list from the restarted controller")
            assert {i: s["worker"] for i, s in streams.items()} == owners
            async with session.get(f"{base}/api/streams/cam2/hints") as r:
                assert (await r.json())["hints"] == state["hints"]
            async with session.post(f"{base}/api/streams", json={"id": "late", "url": "synthetic:"}) as r:
                assert r.status == 201, await r.text()
            async with session.delete(f"{base}/api/streams/late") as r:
                assert r.status == 200

    run(after)


def test_the_page_through_the_gateway_plays_coloured_video_from_a_worker_node(
    gateway: Served, browser: Any
) -> None:
    """Headless Chromium opens the gateway's page; its video of cam2 comes from a worker node."""

    def js(expr: str) -> Any:
        return browser.execute_script(f"return window.chromastream.{expr}")

    def frames_decoded() -> int:
        return int(
            browser.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "window.chromastream.framesDecoded('cam2').then(done, () => done(0));"
            )
        )

    browser.get(gateway.base + "/")
    poll(lambda: "cam2" in (js("streams()") or []), what="stream card")
    poll(lambda: frames_decoded() > 10, timeout=30, what="frames decoded")
    assert js("videoSize('cam2')") == [96, 64]
    assert js("lastMetadata('cam2')")["stream"] == "cam2"
    samples = [js(f"sampleColour('cam2', {x}, {y}, 4)") for x in (0.25, 0.5, 0.75) for y in (0.3, 0.7)]
    colourfulness = max(max(rgb) - min(rgb) for rgb in samples)
    assert colourfulness > 20, samples  # the grey camera, coloured by the model on the worker node


def test_a_lost_node_hands_its_streams_to_the_survivors_within_15_s(
    ray_cluster: Any, gateway: Served
) -> None:
    """Runs last: it takes a worker node away."""
    base = gateway.base
    state: dict[str, Any] = {}

    async def prepare() -> None:
        async with ClientSession() as session:
            async with session.put(f"{base}/api/streams/cam1/hints", json=[RED, BLUE, RED]) as r:
                assert r.status == 200
            await event_where(session, base, "cam1", lambda e: e["colorizer"]["hints"] == 3)
            streams = await streams_by_id(session, base)
            state["owners"] = {i: s["worker"] for i, s in streams.items()}
            state["node"] = streams["cam1"]["node"]

    run(prepare)
    victim = state["owners"]["cam1"]
    moved = sorted(i for i, w in state["owners"].items() if w == victim)
    node = next(n for n in ray_cluster.worker_nodes if n.node_id == state["node"])
    killed = time.monotonic()  # from the start: the node's processes end during the call
    ray_cluster.remove_node(node)

    async def failover() -> None:
        async with ClientSession() as session:

            async def back() -> bool:
                streams = await streams_by_id(session, base)
                return all(
                    streams[i]["worker"] not in (victim, None)
                    and streams[i]["state"] == "running"
                    and streams[i]["frames_out"] >= 3
                    for i in moved
                )

            await until(back, FAILOVER_S, f"frames of {moved} again from the surviving worker")
            state["took"] = time.monotonic() - killed
            streams = await streams_by_id(session, base)
            assert set(streams) == set(state["owners"])  # none lost
            async with session.get(f"{base}/api/streams/cam1/hints") as r:
                assert len((await r.json())["hints"]) == 3
            event = await event_where(session, base, "cam1", lambda e: True)
            assert event["colorizer"]["hints"] == 3  # the survivor colours with the same hints
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
            assert f'chromastream_worker_up{{worker="{victim}"}} 0.0' in text
            assert f"chromastream_cluster_failovers_total {float(len(moved))}" in text

    run(failover)
    assert state["took"] < FAILOVER_S
    assert re.search(rf"{victim} lost \(\w+\); its streams go to the other workers", gateway.stderr())
