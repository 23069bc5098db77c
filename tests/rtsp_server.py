"""A real RTSP server for the integration tests, built on GStreamer's ``gst-rtsp-server``.

Run it with Debian's ``/usr/bin/python3``: PyGObject (``python3-gi``) comes from the distribution and is
not installed in the project's virtualenv. It serves two mounts on ``127.0.0.1``:

* ``--play-mount`` (default ``/live``): an H.264 clip, looped forever, paced to its frame rate. Every
  client gets its own copy starting at the clip's first (key) frame, so a client that reconnects can
  decode at once. The clip is read once at start-up; looping re-sends the same access units with new
  timestamps, so the stream a client sees is seamless and never ends, like a camera's.
* ``--record-mount`` (default ``/push``): accepts an ``ANNOUNCE``/``RECORD`` push of any codec that
  ``decodebin`` can decode, reports each decoded frame on stdout and, with ``--record-out``, writes the
  frames to a Y4M file (raw I420: nothing is lost to a re-encode, and the file is valid after every frame
  because Y4M has no index to finalize; each RECORD session starts the file over).

Everything the tests need to know is printed on stdout as one JSON object per line: ``ready`` (with the
URLs), ``play_client`` when a player connects, ``record_start``, ``record_frame`` (size and count) and
``record_end``. Signals control it from outside: ``SIGUSR1`` holds the PLAY side (the RTSP session stays
up but no more video is sent, which is how a stalled camera looks), ``SIGUSR2`` resumes it, ``SIGTERM`` /
``SIGINT`` stop it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def read_clip(path: str) -> tuple[list[tuple[bytes, bool]], Gst.Caps, int]:
    """The clip's H.264 access units (byte-stream, each key frame carrying SPS/PPS), caps, frame ns."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! parsebin ! h264parse config-interval=-1 ! "
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, bool]] = []
    caps: Gst.Caps | None = None
    error = None
    while not sink.get_property("eos"):
        sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
        error = bus.pop_filtered(Gst.MessageType.ERROR)
        if error is not None:
            break
        if sample is None:
            continue
        caps = sample.get_caps()
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            units.append((bytes(info.data), not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)))
            buffer.unmap(info)
    pipeline.set_state(Gst.State.NULL)
    if error is not None or not units or caps is None:
        reason = error.parse_error()[0].message if error is not None else "no H.264 video found"
        raise SystemExit(f"rtsp_server: cannot read {path}: {reason}")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    frame_ns = int(Gst.SECOND * den / num) if ok and num > 0 else Gst.SECOND // 25
    return units, caps, frame_ns


class ClipPlayer:
    """Feeds every connected PLAY client's ``appsrc`` from one clock tick per frame.

    ``appsrc`` is live and timestamps on push, so pacing is this tick alone, not sink synchronization.
    """

    def __init__(self, units: list[tuple[bytes, bool]], caps: Gst.Caps, frame_ns: int) -> None:
        self.units = units
        self.caps = caps
        self.frame_ns = frame_ns
        self.clients: dict[Any, int] = {}  # appsrc -> index of the next access unit
        self.held = False
        GLib.timeout_add(max(1, frame_ns // Gst.MSECOND), self.tick)

    def attach(self, _factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        self.clients[appsrc] = 0
        media.connect("unprepared", lambda _media: self.clients.pop(appsrc, None))
        emit("play_client", clients=len(self.clients))

    def hold(self, held: bool) -> bool:
        self.held = held
        emit("play_held" if held else "play_resumed")
        return True

    def tick(self) -> bool:
        if not self.held:
            for appsrc, index in list(self.clients.items()):
                data, _key = self.units[index % len(self.units)]
                buffer = Gst.Buffer.new_wrapped(data)
                buffer.duration = self.frame_ns
                appsrc.emit("push-buffer", buffer)
                self.clients[appsrc] = index + 1
        return True


class Recorder:
    """Counts what a RECORD client pushes (decoded frames, their size) and reports it on stdout."""

    def __init__(self, out: str | None) -> None:
        self.out = out
        self.frames = 0

    def attach(self, _factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        self.frames = 0
        element = media.get_element()
        sink = element.get_by_name("count")
        sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.on_frame)
        if self.out:
            element.get_by_name("out").set_property("location", self.out)
        media.connect("unprepared", lambda _media: emit("record_end", frames=self.frames))
        emit("record_start")

    def on_frame(self, pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        self.frames += 1
        structure = pad.get_current_caps().get_structure(0)
        emit(
            "record_frame",
            frames=self.frames,
            width=structure.get_value("width"),
            height=structure.get_value("height"),
        )
        return Gst.PadProbeReturn.OK

    def launch(self) -> str:
        tail = "fakesink name=count sync=false async=false"
        if self.out:
            tail = (
                f"tee name=t t. ! queue ! {tail} "
                "t. ! queue ! y4menc ! filesink name=out sync=false async=false"
            )
        return f"( decodebin name=depay0 ! videoconvert ! video/x-raw,format=I420 ! {tail} )"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--clip", help="H.264 clip (mp4/mkv/...) to serve on the PLAY mount")
    parser.add_argument("--play-mount", default="/live")
    parser.add_argument("--record-mount", default="/push")
    parser.add_argument("--record-out", help="append frames received on the RECORD mount to this .y4m")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    if args.clip:
        player = ClipPlayer(*read_clip(args.clip))
        play = GstRtspServer.RTSPMediaFactory()
        play.set_launch(
            "( appsrc name=src is-live=true do-timestamp=true format=time ! "
            "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        play.set_shared(False)
        play.connect("media-configure", player.attach)
        mounts.add_factory(args.play_mount, play)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGUSR1, player.hold, True)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGUSR2, player.hold, False)

    recorder = Recorder(args.record_out)
    record = GstRtspServer.RTSPMediaFactory()
    record.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    record.set_launch(recorder.launch())
    record.set_latency(100)
    record.connect("media-configure", recorder.attach)
    mounts.add_factory(args.record_mount, record)

    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 2
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, loop.quit)
    base = f"rtsp://{args.host}:{args.port}"
    emit(
        "ready",
        port=args.port,
        play=f"{base}{args.play_mount}" if args.clip else None,
        record=f"{base}{args.record_mount}",
    )
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
