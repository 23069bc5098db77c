"""What the fuzz tests share: how many examples they run, a time bound per example, and input strategies.

Two hypothesis profiles: ``chromastream`` (the default: a few dozen examples per property, so each test
takes seconds and the suite stays fast) and ``chromastream-long`` (``CHROMASTREAM_FUZZ=long``: many
times more, for a deliberate fuzzing session). Example deadlines are off because a shared two-core machine
makes timings noisy; :func:`bounded` catches a real hang instead, and fails the example that hung.
"""

from __future__ import annotations

import contextlib
import os
import signal
import string
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG = os.environ.get("CHROMASTREAM_FUZZ", "").strip().lower() == "long"
#: Examples in the long profile per example in the default one.
LONG_FACTOR = 25

settings.register_profile(
    "chromastream",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("chromastream-long", parent=settings.get_profile("chromastream"))
PROFILE = "chromastream-long" if LONG else "chromastream"

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int) -> Callable[[F], F]:
    """Hypothesis settings for one property: ``examples`` by default, ``LONG_FACTOR`` times more when long."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * (LONG_FACTOR if LONG else 1))


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
