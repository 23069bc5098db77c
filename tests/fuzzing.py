"""What the fuzz tests share: how many examples they run, a time bound per example, and input strategies.

Two hypothesis profiles: ``chromastream`` (the default: a few dozen examples per property, so each test
takes seconds and the suite stays fast; under ``CI=true`` the examples are the same every run, as
hypothesis's own CI profile has it) and ``chromastream-long`` (``CHROMASTREAM_FUZZ=long``: many times
more, for a deliberate fuzzing session). Example deadlines are off because a shared two-core machine
makes timings noisy; :func:`bounded` catches a real hang instead, and fails the example that hung.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import string
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chromastream.stream.config import ServeConfig

LONG = os.environ.get("CHROMASTREAM_FUZZ", "").strip().lower() == "long"
#: Examples in the long profile per example in the default one.
LONG_FACTOR = 25

settings.register_profile(
    "chromastream",
    settings.default,  # hypothesis's own choice: its "ci" profile (derandomized, no database) under CI=true
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# A long session is for finding new inputs, so it never replays CI's fixed ones.
settings.register_profile("chromastream-long", settings.get_profile("chromastream"), derandomize=False)
PROFILE = "chromastream-long" if LONG else "chromastream"

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int) -> Callable[[F], F]:
    """Hypothesis settings for one property: ``examples`` by default, ``LONG_FACTOR`` times more when long."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * (LONG_FACTOR if LONG else 1))


def unlimited_requests() -> dict[str, Any]:
    """Config data that turns the per-client request-rate limit off, where the config has one.

    A fuzz run sends requests far faster than any person does; with the limit on, most would be answered
    429 before they reached the parsers under test.
    """
    has_limits = "limits" in {f.name for f in dataclasses.fields(ServeConfig)}
    return {"limits": {"requests_per_s": None}} if has_limits else {}


class Hang(AssertionError):
    """An example ran past its time bound."""


@contextlib.contextmanager
def bounded(seconds: float, what: str = "the parser") -> Iterator[None]:
    """Fail with :class:`Hang` if the block runs longer than ``seconds`` (SIGALRM: main thread, POSIX).

    The test's own time limit (pytest-timeout's alarm) is put back afterwards, less the time spent here.
    """

    def expired(signum: int, frame: Any) -> None:
        raise Hang(f"{what} took more than {seconds} s on this input")

    previous = signal.signal(signal.SIGALRM, expired)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # pytest-timeout's own alarm, if it set one
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


# ------------------------------------------------------------------------------------------ strategies

#: Integers past every range the package checks, up to beyond what a float holds (JSON and YAML allow any).
huge_integers = st.integers(min_value=-(10**400), max_value=10**400)
numbers = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
    huge_integers,
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))


def json_values(keys: st.SearchStrategy[str] | None = None, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON document (NaN and huge integers included), objects keyed by ``keys`` or any text."""
    key_strategy = keys if keys is not None else st.text(max_size=12)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(key_strategy, inner, max_size=6),
        max_leaves=max_leaves,
    )


def keys_from(*names: str) -> st.SearchStrategy[str]:
    """Mostly the keys a parser knows, sometimes any other text (a typo, a key from elsewhere)."""
    return st.one_of(st.sampled_from(names), st.sampled_from(names), st.text(max_size=12))


HINT_KEYS = ("x", "y", "a", "b", "rgb", "radius", "hints")
hex_colours = st.builds(
    lambda digits, hash_: ("#" if hash_ else "") + digits,
    st.text(alphabet=string.hexdigits, min_size=0, max_size=8),
    st.booleans(),
)
hint_like = st.dictionaries(
    keys_from(*HINT_KEYS),
    st.one_of(numbers, hex_colours, st.lists(numbers, max_size=4), json_values(max_leaves=4)),
    max_size=6,
)


# ------------------------------------------------------------------------------------------ SDP offers

#: A browser-like WHEP offer (receive video, a data channel) and a WHIP offer (send video). Neither has
#: ICE candidates, and no mutation adds one, so the server never sends a connectivity check anywhere.
FINGERPRINT = "sha-256 " + ":".join(f"{i * 7 % 256:02X}" for i in range(32))
WHEP_OFFER = f"""v=0
o=- 4005599615 4005599615 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1
a=msid-semantic:WMS *
m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100
c=IN IP4 0.0.0.0
a=recvonly
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=mid:0
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=rtpmap:97 VP8/90000
a=rtcp-fb:97 nack
a=rtcp-fb:97 nack pli
a=rtpmap:98 rtx/90000
a=fmtp:98 apt=97
a=rtpmap:99 H264/90000
a=rtcp-fb:99 nack pli
a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:100 rtx/90000
a=fmtp:100 apt=99
a=ice-ufrag:496p
a=ice-pwd:Y0gbh418NJWgORBkypJeYM
a=fingerprint:{FINGERPRINT}
a=setup:actpass
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=mid:1
a=sctp-port:5000
a=max-message-size:262144
a=ice-ufrag:496p
a=ice-pwd:Y0gbh418NJWgORBkypJeYM
a=fingerprint:{FINGERPRINT}
a=setup:actpass
"""
WHIP_OFFER = f"""v=0
o=- 3912 3912 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic:WMS *
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=sendonly
a=mid:0
a=msid:obs video0
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=ssrc:1234 cname:obs
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=rtpmap:97 H264/90000
a=fmtp:97 packetization-mode=1;profile-level-id=42e01f
a=ice-ufrag:w1p0
a=ice-pwd:4Zk0bTAnNlmkFKzkhLLyDq
a=fingerprint:{FINGERPRINT}
a=setup:actpass
"""
SDP_LINES = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=video",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:96 H264/90000",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:x",
    "a=rtpmap:96",
    "a=fmtp:96 apt=",
    "a=fmtp:x",
    "a=rtcp-fb:96",
    "a=setup:active",
    "a=setup:bogus",
    "a=mid:",
    "a=group:BUNDLE 0 9",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=fingerprint:sha-256 zz",
    "a=fingerprint:",
    "a=sendrecv",
    "a=inactive",
    "a=sctp-port:abc",
    "a=max-message-size:-1",
    "c=IN IP6 ::1",
    "c=IN",
    "a=ssrc:1 cname:x",
    "a=ssrc:x",
    "a=ssrc-group:FID 1",
    "a=extmap:1 urn:x",
    "a=extmap:x",
    "a=msid:",
    "a=rtcp:x",
    "o=- 0 0 IN IP4 127.0.0.1",
    "o=",
    "t=x",
    "v=1",
    "v=0",
]
_index = st.integers(min_value=0, max_value=200)
sdp_edits = st.one_of(
    st.tuples(st.just("delete"), _index),
    st.tuples(st.just("duplicate"), _index),
    st.tuples(st.just("insert"), _index, st.sampled_from(SDP_LINES) | st.text(max_size=40)),
    st.tuples(st.just("replace"), _index, st.sampled_from(SDP_LINES) | st.text(max_size=40)),
    st.tuples(st.just("cut"), _index, st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("swap"), _index, _index),
)


def no_candidates(text: str) -> str:
    """Drop every line that could carry an ICE candidate: an offer under test names no address to check."""
    return "\n".join(line for line in text.split("\n") if "candidate" not in line.lower())


def edit_sdp(base: str, edits: list[tuple[Any, ...]], newline: str) -> str:
    lines = base.strip("\n").split("\n")
    for op, at, *rest in edits:
        i = at % max(len(lines), 1)
        if op == "delete" and lines:
            del lines[i]
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, rest[0])
        elif op == "replace" and lines:
            lines[i] = rest[0]
        elif op == "cut" and lines:
            lines[i] = lines[i][: rest[0]]
        elif op == "swap" and lines:
            j = rest[0] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
    return no_candidates("\n".join(lines)).replace("\n", newline) + newline


def offers(*bases: str) -> st.SearchStrategy[str]:
    """Offers a few edits away from a real one (most still parse, many then fail later) and any text."""
    edited = st.builds(
        edit_sdp, st.sampled_from(bases), st.lists(sdp_edits, max_size=3), st.sampled_from(["\r\n", "\n"])
    )
    return st.one_of(edited, edited, edited, st.text(max_size=300).map(no_candidates))
