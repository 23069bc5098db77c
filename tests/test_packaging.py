"""What ``pip install .`` puts on a user's machine: one top-level import name, with its data.

The repository keeps its rooms at the top (``stream/``, ``models/``, ``kernels/``); an installed copy must
not claim those generic names, or a user project with its own ``models`` package breaks on install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _clean_copy(target: Path) -> Path:
    """The files a fresh clone has (tracked and untracked-but-not-ignored, links kept as links), so the
    build sees no leftovers of earlier builds and writes none into the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, copy = REPO / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as ``pip install .`` lays it out (built from a fresh wheel, dependencies left out)."""
    work = tmp_path_factory.mktemp("install")
    checkout = _clean_copy(work / "checkout")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(checkout)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("chromastream-*.whl")
    target = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_installs_chromastream_as_the_only_top_level_name(installed: Path) -> None:
    top = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert top == {"chromastream"}
    entry_points = next(installed.glob("*.dist-info")).joinpath("entry_points.txt").read_text()
    assert "chromastream = chromastream.stream.cli:main" in entry_points


def test_installed_copy_carries_its_model_assets_and_page(installed: Path) -> None:
    package = installed / "chromastream"
    for relative in (
        "models/weights/colorizer.onnx",
        "models/weights/detector.onnx",
        "stream/assets/demo_cctv.mp4",
        "stream/web/index.html",
    ):
        assert (package / relative).is_file(), relative
    assert not (package / "stream").is_symlink()  # real folders, not links back into a checkout


def test_installed_copy_imports_and_claims_no_generic_names(installed: Path, tmp_path: Path) -> None:
    probe = """
import importlib.util, json, chromastream
from chromastream.stream import cli
from chromastream.models.runtime import registry
print(json.dumps({
    "file": chromastream.__file__,
    "model": str(registry.default_model_path()),
    "generic": [n for n in ("stream", "models", "kernels") if importlib.util.find_spec(n) is not None],
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(installed))
    assert found["model"].startswith(str(installed)) and Path(found["model"]).is_file()
    assert found["generic"] == []


def test_code_imports_the_rooms_only_through_the_package() -> None:
    """A bare ``import stream``/``models``/``kernels`` works in a checkout but not once installed, and it
    would load a second copy of each module beside ``chromastream.*``."""
    bare = re.compile(r"^\s*(from|import)\s+(stream|models|kernels)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("stream", "models", "kernels", "benchmarks", "tests")
        for path in (REPO / folder).rglob("*.py")
        if bare.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_code_and_docs_cite_only_the_repository() -> None:
    """Design references point to docs/ARCHITECTURE.md; a reader of a checkout or an installed copy never
    meets a citation of a document the repository does not hold."""
    outside = re.compile(r"\bGUIDE(\.md)?\s*§")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    offenders = [
        name
        for name in listed
        if name.endswith((".py", ".md", ".yaml", ".toml", ".js", ".html", ".css"))
        and (REPO / name).is_file()
        and outside.search((REPO / name).read_text(encoding="utf-8"))
    ]
    assert offenders == []
