"""What a test does when a tool or data set it needs is missing: skip on a developer's machine, fail under
``CI=true``, where ``make test`` installs everything and a skip would hide a hole in the setup."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)
