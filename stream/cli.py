"""The ``chromastream`` command.

Each subcommand registers itself with :func:`build_parser` through one ``_add_<name>`` function that
sets ``handler``; :func:`main` parses, configures logging, runs the handler and is the only place where
exceptions become messages and exit statuses. Library code raises; a user sees one line
``chromastream: error: ...`` and a non-zero status, never a traceback, for anything that is the input's or
the environment's fault.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromastream import __version__
from chromastream.errors import ChromastreamError
from chromastream.models.colorizer.hints import load_hints_file
from chromastream.models.runtime.registry import BACKENDS
from chromastream.models.runtime.session import MAX_SIZE, MIN_SIZE
from chromastream.stream.arg_types import number, whole_number
from chromastream.stream.detect_cli import add_detect
from chromastream.stream.errors import UsageError
from chromastream.stream.export_cli import add_export
from chromastream.stream.formats import FORMATS_HELP

if TYPE_CHECKING:
    from chromastream.stream.config import ServeConfig
    from chromastream.stream.server import StreamsAPI

PROG = "chromastream"
DEMO_OUTPUT = "chromastream-demo.mp4"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
#: Seconds from SIGINT/SIGTERM to the forced end of ``serve``'s process when its orderly shutdown (itself
#: bounded, see ``chromastream.stream.server.SHUTDOWN_STEP_S``) or a thread that never finishes keeps it
#: alive.
SERVE_EXIT_GRACE_S = 25.0

logger = logging.getLogger("chromastream.stream.cli")
#: Libraries that log routine steps at INFO (aioice and aiortc: about nine lines per WebRTC viewer);
#: they are held at WARNING unless ``--verbose``.
CHATTY_LIBRARIES = ("aioice", "aiortc")

Handler = Callable[[argparse.Namespace], int]


def demo_clip() -> Path:
    """The bundled grey CCTV clip (see NOTICE for its source and licence)."""
    return Path(str(resources.files("chromastream.stream") / "assets" / "demo_cctv.mp4"))


_COLORIZE_EPILOG = f"""\
forms:
  {PROG} colorize photo.jpg photo-colour.png       one picture (any size; output keeps its resolution)
  {PROG} colorize scans/ scans-colour/             every picture in a folder, each on its own
  {PROG} colorize --sequence frames/ out/          numbered frames as one clip (PNG outputs)
  {PROG} colorize film.mp4 film-colour.mp4         a video: H.264 out, same timing, audio copied
  {PROG} colorize --demo [OUTPUT]                  the bundled CCTV clip -> {DEMO_OUTPUT}

{FORMATS_HELP}
The output's brightness is the input's own; the model only adds colour. Colour inputs are colorized
from their luminance.

A folder goes on past a picture that cannot be read: one damaged scan should not cost the good ones.
Every good picture is written, each failure is named with its reason, a last line counts what was
written, failed and skipped (entries that are not pictures), and the exit status is 1 if any failed."""


def _add_colorize(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "colorize",
        help="colorize a picture, a folder of pictures, a frame sequence or a video file",
        description="Colorize grey pictures and videos, keeping the input's resolution and luminance.",
        epilog=_COLORIZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", metavar="INPUT", help="picture, folder or video to colorize")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", help="where to write the result")
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"colorize the bundled CCTV clip; the only path given is the output (default {DEMO_OUTPUT})",
    )
    parser.add_argument(
        "--sequence", action="store_true", help="treat a folder as the frames of one clip (memory carried)"
    )
    parser.add_argument(
        "--size",
        type=whole_number(MIN_SIZE, MAX_SIZE),
        default=256,
        metavar="N",
        help="short side of the network's working resolution (default 256); outputs keep full resolution",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="inference backend (default auto)"
    )
    parser.add_argument(
        "--model", type=Path, metavar="PATH", help="colorizer ONNX file (default: shipped model)"
    )
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="colorize every frame on its own (no temporal memory)",
    )
    parser.add_argument(
        "--hints", type=Path, metavar="FILE", help="JSON file of colour hints for every frame"
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="of a damaged or truncated video, keep what can be decoded (default: fail, write nothing)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no information lines")
    parser.set_defaults(handler=_run_colorize)


def _run_colorize(args: argparse.Namespace) -> int:
    # Heavy imports (PyAV, OpenCV, ONNX Runtime) only once a command actually needs them.
    from chromastream.stream.colorize_files import ColorizeOptions, run

    if args.demo:
        if args.output is not None:
            raise UsageError("--demo takes at most one path: the output")
        source = demo_clip()
        target = Path(args.input or DEMO_OUTPUT)
        if args.sequence:
            raise UsageError("--demo colorizes a video; --sequence does not apply")
    else:
        if args.input is None or args.output is None:
            raise UsageError("colorize needs INPUT and OUTPUT (or --demo [OUTPUT])")
        source, target = Path(args.input), Path(args.output)
    hints = tuple(load_hints_file(args.hints)) if args.hints is not None else ()
    options = ColorizeOptions(
        size=args.size,
        backend=args.backend,
        model=args.model,
        memory=args.memory,
        hints=hints,
        overwrite=args.overwrite,
        progress=False if args.quiet else None,
        allow_partial=args.allow_partial,
    )
    result = run(source, target, options, sequence=args.sequence)
    unit = {"image": "picture", "directory": "picture", "sequence": "frame", "video": "frame"}[
        result.kind.value
    ]
    timing = f"in {result.seconds:.1f} s, {result.rate:.1f}/s"
    if result.kind.value not in ("directory", "sequence"):
        logger.info("wrote %s (%s %s)", result.output, _counted(result.items, unit), timing)
        return 0
    # A folder keeps going past pictures that fail; one line counts everything, and any failure (each
    # one already logged with its reason) makes the status an error.
    failed = len(result.failed)
    names = ", ".join(f.path.name for f in result.failed[:5]) + (", ..." if failed > 5 else "")
    summary = (
        f"{result.output}: {_counted(result.items, unit)} written, "
        f"{failed} failed{f' ({names})' if failed else ''}, {result.skipped} skipped (not pictures)"
    )
    if failed:
        return _fail(summary)
    logger.info("%s %s", summary, timing)
    return 0


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


_SERVE_EPILOG = f"""\
forms:
  {PROG} serve                                   the bundled CCTV clip, looped as a live camera
  {PROG} serve --source rtsp://cam/stream1       one camera (ids cam1, cam2, ... in order)
  {PROG} serve --source clip.mp4                 a file, looped as a live camera
  {PROG} serve --config serve.yaml               streams and settings from a YAML file
  {PROG} serve --cluster auto --config serve.yaml   the streams on a Ray cluster's nodes (docs/SCALING.md)

The YAML file sets everything these flags do and more (batching, queues, events, per-stream looping,
recording, RTSP push and hints): docs/CONFIG.md describes every key, and docs/serve.example.yaml lists
them all with their defaults, ready to copy. Flags given beside --config override the file's values;
--source streams are added to the file's. The viewer page is at the printed URL; with --token, open it
once as URL?token=TOKEN. Stop with Ctrl-C (or SIGTERM): viewers are disconnected and the pipeline is
stopped cleanly. A second signal, or a shutdown still running after {SERVE_EXIT_GRACE_S:g} s, ends
the process at once."""


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from chromastream.stream.config import BITRATE, KEYFRAME_INTERVAL, MAX_VIEWERS, WebRTCConfig
    from chromastream.stream.formats import DECODE_MODES

    webrtc = WebRTCConfig()

    parser = subparsers.add_parser(
        "serve",
        help="colorize live streams and serve them to browsers (WebRTC), with a REST API and metrics",
        description="Run the live pipeline and its web server: viewer page, REST API, WHEP/WHIP, /metrics.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML configuration (keys: docs/CONFIG.md)"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="URL",
        help="a stream to colorize (rtsp://..., a file, synthetic:); repeat for more; ids cam1, cam2, ...",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=whole_number(0, 65535), help="TCP port (default 8080; 0 picks a free one)"
    )
    parser.add_argument("--token", help="bearer token required by the API, signalling, page and metrics")
    parser.add_argument(
        "--size",
        type=whole_number(MIN_SIZE, MAX_SIZE),
        metavar="N",
        help="short side of the network's working resolution (default 192: real time on two CPU cores)",
    )
    parser.add_argument("--backend", choices=BACKENDS, help="inference backend (default auto)")
    parser.add_argument("--model", type=Path, metavar="PATH", help="colorizer ONNX file (default: shipped)")
    parser.add_argument(
        "--detector-rate",
        type=number(0, 120, unit="frames per second"),
        metavar="N",
        help="frames per second per stream sampled for the deepfake detector (default 2; 0 turns it off)",
    )
    parser.add_argument(
        "--max-viewers",
        type=whole_number(*MAX_VIEWERS),
        metavar="N",
        help=f"WebRTC viewers per stream (default {webrtc.max_viewers})",
    )
    parser.add_argument(
        "--bitrate",
        type=whole_number(*BITRATE),
        metavar="BPS",
        help=f"bits per second of each stream's WebRTC encoder (default {webrtc.bitrate})",
    )
    parser.add_argument(
        "--keyframe-interval",
        type=whole_number(*KEYFRAME_INTERVAL),
        metavar="N",
        help=f"frames between keyframes: how soon a viewer that lost packets recovers "
        f"(default {webrtc.keyframe_interval})",
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        help="where cameras and files decode: auto (NVDEC when a CUDA device is visible), software, or "
        "nvdec (software with one warning where NVDEC cannot be used); default auto",
    )
    parser.add_argument(
        "--workers",
        type=_worker_setting,
        metavar="N",
        help="processes serving the streams, each owning its share end to end: a number, or auto "
        "(default: one per GPU, else one per two cores); 1 serves everything from this process",
    )
    parser.add_argument(
        "--metadata-sink",
        metavar="URL",
        help="publish stream status, verdicts and per-second summaries to an MQTT broker: "
        "mqtt://[user:pass@]host[:port][/prefix][?frames=1] (topics: docs/MQTT.md)",
    )
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run the streams on a Ray cluster (pip install 'chromastream[cluster]'): auto, or the head's "
        "HOST:PORT; this process stays the one gateway (docs/SCALING.md)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.set_defaults(handler=_run_serve)


def _worker_setting(text: str) -> int | str:
    from chromastream.stream.config import WORKERS

    if text == "auto":
        return text
    try:
        return whole_number(*WORKERS)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or auto)") from None


#: Each ``serve`` flag that sets a key of the config tree, and that key (``docs/CONFIG.md`` shows them
#: side by side). The flag's value replaces the file's.
SERVE_FLAGS = {
    "--host": "host",
    "--port": "port",
    "--token": "token",
    "--size": "pipeline.size",
    "--backend": "pipeline.backend",
    "--model": "pipeline.model",
    "--detector-rate": "pipeline.detector_rate",
    "--max-viewers": "webrtc.max_viewers",
    "--bitrate": "webrtc.bitrate",
    "--keyframe-interval": "webrtc.keyframe_interval",
    "--decode": "sources.decode",
    "--workers": "workers",
    "--metadata-sink": "metadata_sink",
    "--cluster": "cluster.address",
}


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    """The file's config (or the defaults) with the flags laid over it."""
    import dataclasses

    from chromastream.stream.config import ServeConfig, StreamConfig, load_config

    config = load_config(args.config) if args.config is not None else ServeConfig()
    if args.source:
        config = dataclasses.replace(
            config,
            streams=config.streams
            + tuple(StreamConfig(id=f"cam{i}", url=url) for i, url in enumerate(args.source, start=1)),
        )
    elif args.config is None:
        demo = StreamConfig(id="demo", url=str(demo_clip()))  # a file: it loops, paced like a camera
        config = dataclasses.replace(config, streams=(demo,))
    sections: dict[str, dict[str, Any]] = {}
    for flag, key in SERVE_FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            section, _, name = key.rpartition(".")
            sections.setdefault(section, {})[name] = value
    top = sections.pop("", {})
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **top)


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from chromastream.stream.workers import WorkerPool, visible_gpus, worker_count

    config = _serve_config(args)
    if config.cluster.address is not None:
        return _run_cluster_gateway(config)
    count, why = worker_count(config.workers, len(config.streams))
    pool = None
    if count > 1:
        logger.info("%d worker processes (%s)", count, why)
        pool = WorkerPool(config, count, gpus=visible_gpus())
    elif config.workers != 1:
        logger.info("serving from this process (%s)", why)
    asyncio.run(_serve_until_signalled(config, pool))
    return 0


def _run_cluster_gateway(config: ServeConfig) -> int:
    """``serve --cluster``: join the Ray cluster, then serve with the streams on its worker actors."""
    import asyncio

    from chromastream.stream.cluster import ClusterPool, connect, disconnect

    connect(config.cluster)
    try:
        asyncio.run(_serve_until_signalled(config, ClusterPool(config)))
    finally:
        disconnect()
    return 0


async def _serve_until_signalled(config: ServeConfig, streams: StreamsAPI | None = None) -> None:
    """Run the server until SIGINT/SIGTERM, which starts its orderly shutdown and arms a
    :class:`_ExitDeadline`; a second signal ends the process at once.

    The handler is a plain signal handler rather than the event loop's: Python runs it in the main thread
    even while the loop is busy, so a stop is never lost behind whatever holds the loop.
    """
    import asyncio

    from chromastream.stream.server import serve

    def announce(url: str) -> None:
        print(f"chromastream: viewer at {url}", flush=True)

    if threading.current_thread() is not threading.main_thread():  # embedded: the loop's own handlers
        await serve(config, announce=announce, streams=streams)
        return
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    deadline = _ExitDeadline(SERVE_EXIT_GRACE_S)

    def on_signal(signum: int, frame: object) -> None:
        deadline.arm(signal.Signals(signum).name)
        with contextlib.suppress(RuntimeError):  # the loop is closed: it has stopped already
            loop.call_soon_threadsafe(stop.set)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        await serve(config, announce=announce, stop=stop, handle_signals=False, streams=streams)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _ExitDeadline:
    """Ends the process ``grace`` seconds after the first stop signal, if it is still running then.

    The orderly shutdown is bounded, but the process only exits once every non-daemon thread has finished
    (executor threads among them), and a thread stuck in a blocking call never does. A timer thread (a
    daemon: it never keeps the process alive) ends it with a message instead of letting it hang until
    someone sends SIGKILL. A second signal ends it at once.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._timer: threading.Timer | None = None

    def arm(self, signal_name: str) -> None:
        if self._timer is not None:
            _exit_now(f"{signal_name} again: stopped without finishing the shutdown")
        message = f"the shutdown did not finish within {self.grace:g} s; stopped without it"
        self._timer = threading.Timer(self.grace, _exit_now, args=(message,))
        self._timer.daemon = True
        self._timer.start()


def _exit_now(message: str) -> None:
    """End the process from any thread, skipping clean-up that may be what hangs (the CLI's last resort)."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Real-time colorization of grey video: files, streams and pictures.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_colorize(subparsers)
    _add_serve(subparsers)
    add_detect(subparsers)
    add_export(subparsers)
    for subparser in subparsers.choices.values():
        # Also accepted after the command; SUPPRESS keeps a subcommand from resetting the global flag.
        subparser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
        )
    return parser


_VERBOSE_HELP = (
    "debug lines, the INFO lines of the WebRTC libraries and ONNX Runtime's warnings (all hidden by default)"
)


@contextmanager
def _logging(quiet: bool, verbose: bool = False) -> Iterator[None]:
    """Information lines on stderr for the duration of one command (removed after, for in-process use).

    ``verbose`` adds this package's debug lines and lets the chatty libraries (:data:`CHATTY_LIBRARIES`)
    speak at INFO; it also turns ONNX Runtime's warnings on, which follow this package's level when a
    session starts (:func:`chromastream.models.runtime.onnxruntime_backend.ort_log_severity`).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    previous = {name: logging.getLogger(name).level for name in ("", "chromastream", *CHATTY_LIBRARIES)}
    root.addHandler(handler)
    root.setLevel(min(previous[""], logging.INFO) if previous[""] else logging.INFO)
    logging.getLogger("chromastream").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, systemd) arrived: raised in the main thread so it unwinds
    exactly like Ctrl-C, through every ``finally`` and ``except BaseException`` that removes a temporary
    file; otherwise the process would die on the spot and leave its hidden ``.part`` files behind."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` for the duration of one command (the previous handler after).

    ``serve`` installs its own handler for a clean shutdown (:func:`_serve_until_signalled`), which
    takes precedence while it runs. Only the main thread may set handlers; elsewhere (an embedding
    program) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    with _logging(getattr(args, "quiet", False), args.verbose), _sigterm_unwinds():
        try:
            return handler(args)
        except UsageError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except ChromastreamError as exc:
            return _fail(str(exc))
        except Terminated:
            print(f"{PROG}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
