"""``serve --cluster``: how fast streams come back when a node dies, and what the gateway costs a viewer.

A Ray cluster of three nodes on this machine (``ray.cluster_utils.Cluster``, every address 127.0.0.1): a
head with no CPU to give (the gateway's node) and two worker nodes of one CPU each, so one worker actor
runs on each. ``chromastream serve --cluster`` runs in a child process with synthetic camera streams and
``pipeline.backend: pass-through`` (the live path without the network, so two cores hold the cluster,
the viewers and the benchmark).

**Failover**, ``--kills`` times gracefully (``Cluster.remove_node``: the node's raylet gets SIGTERM and
every process on it ends, so Ray reports the worker's death at once), then ``--hard-kills`` times
outright (SIGKILL to every process of the node, found by Ray's node health checks, which the head here
runs every second with three misses allowed). Each time the node whose worker runs the streams is
removed, and the time is measured from the start of the removal until every one of its streams shows
frames again in the gateway's API, counted by the worker it moved to. A node is then added back and the
benchmark waits for its worker to start, so that the next kill again leaves a survivor (streams are not
moved back: the next kill takes the node they are on now).

**The gateway's cost**, in the same run: the same streams served by single-machine ``serve`` (one
process, ``--workers 1``) and by the cluster gateway. WHEP set-up time is from the viewer's POST of its
offer to its first frame's metadata message on the data channel (signalling through the gateway to the
worker actor, ICE and DTLS with the worker's node); frame latency is the pipeline's latency carried in
each frame's metadata (source -> frame published; media never passes through the gateway, so the gateway
adds nothing here by design, and the figure shows whether running as a Ray actor does).

    python -m benchmarks.cluster                 # about four minutes on two cores
    python -m benchmarks.cluster --quick         # smoke run: one kill, short windows

Writes ``cluster.json``; ``python -m benchmarks.report`` puts it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkError,
    add_output_args,
    load_average,
    machine_line,
    machine_tags,
    now_iso,
    num,
    run_and_write,
)
from benchmarks.serve_throughput import Tally, _skip_decoding, serving, viewer

CAMERA = "synthetic:?width=160&height=120&fps=15"
FAILOVER_TARGET_S = 15.0
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20}
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
"""The head's node health checks (Ray's defaults: 3000 ms, 5): how soon a node killed outright is
declared dead."""


@contextmanager
def ray_cluster() -> Iterator[Any]:
    """Three nodes on 127.0.0.1: a head without CPUs and two nodes of one CPU each."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep 127.0.0.1 (see stream.cluster)
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise BenchmarkError("this benchmark needs Ray: pip install 'chromastream[cluster]'") from None
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **NODE,
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": HEALTH_CHECK,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, **NODE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        session = cluster.head_node.get_session_dir_path()
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)  # Ray's logs of this cluster


def _config(streams: int, cluster: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "port": 0,
        "workers": 1,
        "pipeline": {"backend": "pass-through", "size": 64, "detector_rate": 0},
        "limits": {"requests_per_s": None},  # the benchmark polls the API 20 times a second
        "streams": [{"id": f"cam{i}", "url": CAMERA} for i in range(1, streams + 1)],
    }
    if cluster is not None:
        config["cluster"] = {"address": cluster, "cpus_per_worker": 1}
    return config


async def _until(condition: Any, timeout: float, what: str, every: float = 0.05) -> float:
    """Poll ``condition`` until it is true; the seconds it took."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise BenchmarkError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def _streams(session: Any, base: str) -> dict[str, dict[str, Any]]:
    async with session.get(f"{base}/api/streams") as r:
        if r.status != 200:
            raise BenchmarkError(f"the stream list answered {r.status}: {await r.text()}")
        return {s["id"]: s for s in (await r.json())["streams"]}


async def _viewers(base: str, ids: list[str], rounds: int, seconds: float) -> dict[str, Any]:
    """WHEP set-up times (POST -> first frame's metadata) and the frame latency over ``seconds``."""
    from aiohttp import ClientSession

    setups: list[float] = []
    latencies: list[float] = []
    async with ClientSession() as session:
        for _ in range(rounds):
            for stream_id in ids:
                tally = Tally(recording=True)
                async with viewer(session, base, stream_id, tally):

                    async def first_frame(t: Tally = tally) -> bool:
                        return t.frames > 0

                    setups.append(await _until(first_frame, 20, f"first frame of {stream_id}", 0.005))
                    await asyncio.sleep(seconds)
                latencies += tally.latencies_ms
    return {"setup_ms": _summary([s * 1000 for s in setups]), "latency_ms": _summary(latencies)}


def _summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "p50": None, "p95": None}
    ordered = sorted(samples)
    return {
        "n": len(samples),
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


async def _failovers(cluster: Any, base: str, modes: list[str]) -> list[dict[str, Any]]:
    """One node kill per entry of ``modes`` (``graceful`` or ``hard``), each timed; a node is added back
    after each but the last."""
    from aiohttp import ClientSession

    results = []
    kills = len(modes)
    async with ClientSession() as session:
        for kill, mode in enumerate(modes):
            streams = await _streams(session, base)
            node_id = next(iter(streams.values()))["node"]
            victim = {i for i, s in streams.items() if s["node"] == node_id}
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            killed = time.monotonic()  # from the start: the node's processes end during the call
            cluster.remove_node(node, allow_graceful=mode == "graceful")

            async def back(victim: set[str] = victim, node_id: str = node_id) -> bool:
                now = await _streams(session, base)
                return all(
                    now[i]["node"] not in (node_id, None)
                    and now[i]["state"] == "running"
                    and now[i]["frames_out"] > 0
                    for i in victim
                )

            await _until(back, 60, f"kill {kill + 1}: streams flowing again")
            took = time.monotonic() - killed
            lost = set(streams) - set(await _streams(session, base))
            results.append(
                {
                    "kill": kill + 1,
                    "mode": mode,
                    "streams": len(victim),
                    "seconds": round(took, 3),
                    "lost": len(lost),
                }
            )
            print(f"kill {kill + 1} ({mode}): {len(victim)} streams back in {took:.2f} s", flush=True)
            if kill == kills - 1:
                break
            cluster.add_node(num_cpus=1, **NODE)  # blocks the loop for a second: Ray wants the main thread

            async def two_workers() -> bool:
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                up = [ln for ln in text.splitlines() if ln.startswith("chromastream_worker_up{")]
                return sum(1 for ln in up if ln.endswith(" 1.0")) >= 2

            await _until(two_workers, 120, "the re-added node's worker", 0.5)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = ["graceful"] if args.quick else ["graceful"] * args.kills + ["hard"] * args.hard_kills
    rounds, seconds = (1, 1.0) if args.quick else (3, 5.0)
    ids = [f"cam{i}" for i in range(1, args.streams + 1)]
    machine, started = machine_tags(), time.monotonic()  # the load average at the start
    with tempfile.TemporaryDirectory(prefix="chromastream-cluster-bench-") as tmp, _skip_decoding():
        folder = Path(tmp)
        (folder / "single").mkdir()
        with serving(_config(args.streams, None), folder / "single") as single:
            single_figures = asyncio.run(_viewers(single.base, ids, rounds, seconds))
        with ray_cluster() as cluster:
            (folder / "gateway").mkdir()
            with serving(_config(args.streams, cluster.address), folder / "gateway") as gateway:
                gateway_figures = asyncio.run(_viewers(gateway.base, ids, rounds, seconds))
                kill_rows = asyncio.run(_failovers(cluster, gateway.base, modes))
    failover = {}
    for mode in dict.fromkeys(modes):
        rows = [r for r in kill_rows if r["mode"] == mode]
        times = sorted(r["seconds"] for r in rows)
        failover[mode] = _summary(times) | {"max": times[-1], "lost": sum(r["lost"] for r in rows)}
    return {
        "date": now_iso(),
        "seconds": round(time.monotonic() - started, 1),
        "quick": bool(args.quick),
        "machine": machine,
        "loadavg_end": load_average(),
        "streams": args.streams,
        "camera": CAMERA,
        "backend": "pass-through",
        "nodes": {"head_cpus": 0, "workers": 2, "cpus_per_worker_node": 1},
        "health_check": HEALTH_CHECK,
        "failover_target_s": FAILOVER_TARGET_S,
        "kills": kill_rows,
        "failover_s": failover,
        "single": single_figures,
        "gateway": gateway_figures,
        "setup_added_ms_p50": _difference(gateway_figures, single_figures, "setup_ms"),
        "latency_added_ms_p50": _difference(gateway_figures, single_figures, "latency_ms"),
    }


def _difference(gateway: dict[str, Any], single: dict[str, Any], key: str) -> float | None:
    a, b = gateway[key]["p50"], single[key]["p50"]
    return None if a is None or b is None else round(a - b, 2)


def print_summary(result: dict[str, Any]) -> None:
    for mode, f in result["failover_s"].items():
        print(f"{mode} node kills ({f['n']}): p50 {f['p50']} s, p95 {f['p95']} s, lost {f['lost']}")
    for name in ("single", "gateway"):
        r = result[name]
        setup, latency = r["setup_ms"]["p50"], r["latency_ms"]["p50"]
        print(f"{name}: WHEP set-up p50 {setup} ms, frame latency p50 {latency} ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description="Failover time of serve --cluster over node kills, and the gateway's cost to viewers.",
    )
    parser.add_argument("--kills", type=int, default=10, help="graceful node kills to time (default 10)")
    parser.add_argument(
        "--hard-kills",
        type=int,
        default=10,
        help="node kills with SIGKILL, found by Ray's health checks (default 10)",
    )
    parser.add_argument("--streams", type=int, default=2, help="camera streams (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one kill, short windows")
    add_output_args(parser, "cluster.json", shared=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_and_write("cluster", args.out_dir, lambda: run(args), print_summary)


def report_section(data: dict[str, Any]) -> list[str]:
    """RESULTS.md: failover times, then single-machine serve against the cluster gateway."""
    lines = ["## Cluster (serve --cluster on Ray)", "", f"Run {data.get('date', '?')}.", ""]
    if data.get("quick"):
        lines += ["> Smoke run (`--quick`): too short for a final figure.", ""]
    target = data.get("failover_target_s")
    health = data.get("health_check") or {}
    lines += [
        "A Ray cluster of three nodes on one machine (127.0.0.1): a head without CPUs (the gateway) and two "
        f"nodes of one CPU, one worker actor each; {data.get('streams', '?')} synthetic cameras "
        f"(`{data.get('camera', '?')}`), backend {data.get('backend', '?')}. Failover: a node is removed "
        "and the time runs from the start of its removal until each of its streams shows frames again from "
        "the surviving worker in the gateway's API; a node is added back between kills. *graceful*: the "
        "node's raylet is stopped with SIGTERM and its processes end (Ray reports the actor's death at "
        "once); *hard*: every process of the node gets SIGKILL, and Ray's health checks declare the node "
        f"dead (here every {health.get('health_check_period_ms', '?')} ms, "
        f"{health.get('health_check_failure_threshold', '?')} misses).",
        "",
        "| kill | node kills | p50 s | p95 s | max s | streams lost | target p95 | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, f in (data.get("failover_s") or {}).items():
        ok = f.get("p95") is not None and target is not None and f["p95"] <= target and not f.get("lost")
        lines.append(
            f"| {mode} | {f.get('n', '–')} | {num(f.get('p50'))} | {num(f.get('p95'))} | "
            f"{num(f.get('max'))} | {f.get('lost', '–')} | ≤ {num(target, 0)} s, none lost | "
            f"{'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "WHEP set-up (POST of the offer to the first frame's metadata message) and frame latency (the "
        "pipeline's, in each frame's metadata) with single-machine `serve` and through the cluster "
        "gateway, in the same run:",
        "",
        "| server | set-up p50 ms | set-up p95 ms | latency p50 ms | latency p95 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("single", "serve (one process)"), ("gateway", "serve --cluster (gateway)")):
        r = data.get(name) or {}
        s, lat = r.get("setup_ms") or {}, r.get("latency_ms") or {}
        lines.append(
            f"| {label} | {num(s.get('p50'), 1)} | {num(s.get('p95'), 1)} | {num(lat.get('p50'), 1)} | "
            f"{num(lat.get('p95'), 1)} |"
        )
    end = "/".join(str(x) for x in data.get("loadavg_end") or []) or "?"
    lines += [
        "",
        f"Through the gateway the median set-up changes by {_signed(data.get('setup_added_ms_p50'))} ms "
        f"(one more hop for the offer and answer) and the median frame latency by "
        f"{_signed(data.get('latency_added_ms_p50'))} ms: media never passes through the gateway, so the "
        "latency differs only by where the streams ran (the single server ran both streams in one process, "
        "the cluster one per worker process).",
        "",
        machine_line(data) + f" Load at the end: {end}.",
        "",
    ]
    return lines


def _signed(x: Any) -> str:
    text = num(x, 1)
    return text if text == "–" or text.startswith("-") else f"+{text}"


if __name__ == "__main__":
    raise SystemExit(main())
