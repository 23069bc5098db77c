"""Command-line value types: good values pass, bad ones get a message naming the range."""

from __future__ import annotations

import argparse

import pytest

from chromastream.stream.arg_types import number, whole_number


def test_whole_number_ranges() -> None:
    port = whole_number(0, 65535)
    assert port("8080") == 8080
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be in 0\.\.65535, got 70000"):
        port("70000")
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number: '80a'"):
        port("80a")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        whole_number(1)("0")


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "121"])
def test_number_refuses_out_of_range_and_non_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be in 0\.\.120 frames per second"):
        number(0, 120, unit="frames per second")(text)


def test_number_strict_lower_bound() -> None:
    rate = number(0, above=True)
    assert rate("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be more than 0, got 0"):
        rate("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: 'fast'"):
        rate("fast")


def test_cli_reports_the_option_and_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    from chromastream.stream.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "70000"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--port" in err and "must be in 0..65535, got 70000" in err
