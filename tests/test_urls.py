"""The one URL redaction: what is hidden, what is kept, and that it cannot be fooled by a malformed URL."""

from __future__ import annotations

import pytest

from chromastream.stream.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@10.0.0.7:554/s1?x=1", "rtsp://***@10.0.0.7:554/s1?x=1"),
        ("rtsp://admin@10.0.0.1/x", "rtsp://***@10.0.0.1/x"),
        ("rtsp://10.0.0.7/s1", "rtsp://10.0.0.7/s1"),
        ("rtsp://u:p@[::1]:8554/x", "rtsp://***@[::1]:8554/x"),
        ("rtsps://u:p%40ss@cam.local/live", "rtsps://***@cam.local/live"),
        # A password with an unescaped '@', '/', '?' or '#' is still hidden, all of it.
        ("rtsp://u:p@ss@host/x", "rtsp://***@host/x"),
        ("rtsp://u:pa/ss@host/x", "rtsp://***@host/x"),
        ("rtsp://u:pa?ss@host/x", "rtsp://***@host/x"),
        # Secrets in the query, whatever their case; other parameters and the fragment as written.
        (
            "rtsp://cam/live?channel=1&token=abc&Password=x&key=k#t",
            "rtsp://cam/live?channel=1&token=***&Password=***&key=***#t",
        ),
        ("rtsp://a:b@cam/live?token=abc", "rtsp://***@cam/live?token=***"),
        # Not URLs with an authority: unchanged.
        ("/videos/clip.mp4", "/videos/clip.mp4"),
        ("/videos/me@home.mp4", "/videos/me@home.mp4"),
        ("file:///videos/me@home.mp4", "file:///videos/me@home.mp4"),
        ("synthetic:?width=64&height=48", "synthetic:?width=64&height=48"),
        ("whip://cam1", "whip://cam1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # redacting twice changes nothing
