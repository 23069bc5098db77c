"""Live and file inputs of the pipeline, each a :class:`~chromastream.stream.frames.Source`.

* :class:`RtspSource`: a camera or media server over RTSP; reconnects with backoff, watchdog on stalls.
* :class:`FileSource`: a video file, paced like a camera (optionally looped) or as fast as consumed.
* :class:`SyntheticSource`: a moving test pattern, for tests and benchmarks without any file.

:func:`open_source` picks one from a URL, which is how configuration files and the command line name
inputs. WebRTC publishers (WHIP) are not opened from a URL: the server creates their source when a
publisher connects (:mod:`chromastream.stream.webrtc`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from urllib.request import url2pathname

from chromastream.stream.frames import Source
from chromastream.stream.sources._common import InvalidSourceError, RetryRecord, SourceError, SourceStats
from chromastream.stream.sources.file import FileSource
from chromastream.stream.sources.rtsp import Backoff, RtspSource, check_rtsp_url, is_connection_error
from chromastream.stream.sources.synthetic import PATTERNS, SyntheticSource
from chromastream.stream.urls import redact_url

__all__ = [
    "SUPPORTED",
    "Backoff",
    "FileSource",
    "InvalidSourceError",
    "RetryRecord",
    "RtspSource",
    "SourceError",
    "SourceStats",
    "SyntheticSource",
    "check_rtsp_url",
    "is_connection_error",
    "open_source",
]

#: What :func:`open_source` accepts, as shown in its error messages.
SUPPORTED = (
    "rtsp://[user:pass@]host[:port]/path",
    "rtsps://[user:pass@]host[:port]/path",
    "file:///path/to/video.mp4",
    "a file path",
    "synthetic:?width=640&height=480&fps=25&pattern=moving",
)

_SYNTHETIC_PARAMS = {"width": int, "height": int, "fps": float, "pattern": str}


def open_source(stream_id: str, url: str, **options: Any) -> Source:
    """The source named by ``url``; ``options`` go to its constructor (e.g. ``loop=True`` for a file).

    Raises :class:`InvalidSourceError` for a malformed URL, an unsupported scheme or an option that the
    chosen kind of source does not take, and :class:`~chromastream.stream.errors.InputError` for a missing
    file.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidSourceError(f"empty source URL; supported: {', '.join(SUPPORTED)}")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme in ("rtsp", "rtsps"):
        return _build(RtspSource, stream_id, url, options)
    if scheme == "synthetic":
        return _build(SyntheticSource, stream_id, None, {**_synthetic_params(url), **options})
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidSourceError(f"file URL with a remote host: {url} (use file:///absolute/path)")
        if not parts.path:
            raise InvalidSourceError(f"file URL without a path: {url}")
        return _build(FileSource, stream_id, Path(url2pathname(parts.path)), options)
    if (
        scheme
        and len(scheme) > 1
        and "/" not in scheme
        and "\\" not in scheme
        and url[len(scheme) :][:3] == "://"
    ):
        raise InvalidSourceError(
            f"unsupported source {redact_url(url)}: scheme {scheme}:// is not supported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    return _build(FileSource, stream_id, Path(url), options)


def _build(kind: Any, stream_id: str, target: object, options: dict[str, Any]) -> Source:
    accepted = set(inspect.signature(kind).parameters) - {"stream_id", "url", "path"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidSourceError(
            f"{kind.__name__} does not take option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    source: Source = kind(stream_id, **options) if target is None else kind(stream_id, target, **options)
    return source


def _synthetic_params(url: str) -> dict[str, Any]:
    rest = url.partition(":")[2]
    path, _, query = rest.partition("?")
    if path.strip("/"):
        raise InvalidSourceError(
            f"unexpected {path!r} in {url}; expected synthetic:?width=..&height=..&fps=.."
        )
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        convert = _SYNTHETIC_PARAMS.get(key)
        if convert is None:
            raise InvalidSourceError(
                f"unknown synthetic parameter {key!r} in {url}; known: {', '.join(_SYNTHETIC_PARAMS)}"
            )
        try:
            params[key] = convert(value)
        except ValueError:
            raise InvalidSourceError(
                f"synthetic parameter {key}={value!r} is not a valid {convert.__name__}"
            ) from None
    if "pattern" in params and params["pattern"] not in PATTERNS:
        raise InvalidSourceError(
            f"unknown synthetic pattern {params['pattern']!r}; expected one of {PATTERNS}"
        )
    return params
