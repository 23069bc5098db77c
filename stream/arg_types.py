"""Command-line value types: parse a number and check its range, with a message that says which.

argparse prints an ``ArgumentTypeError``'s text after the option's name, so a user sees
``--port: must be in 0..65535, got 70000`` rather than a traceback or a bare "invalid value".
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An int in ``lo..hi`` (``hi`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if hi is None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if hi is not None and not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {value}")
        return value

    return parse


def number(
    lo: float, hi: float | None = None, *, above: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite float in ``lo..hi``, or strictly above ``lo`` when ``above`` (``hi`` None: no upper bound);
    ``unit`` is named in the message."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        low_ok = value > lo if above else value >= lo
        if not (math.isfinite(value) and low_ok and (hi is None or value <= hi)):
            if hi is not None:
                raise argparse.ArgumentTypeError(f"must be in {lo:g}..{hi:g}{suffix}, got {text}")
            bound = "more than" if above else "at least"
            raise argparse.ArgumentTypeError(f"must be {bound} {lo:g}{suffix}, got {text}")
        return value

    return parse
