"""The package's layers, read from the source: no import cycles, and no room importing from a room above it.

The rooms stack ``kernels`` < ``models`` < ``stream`` (``chromastream.errors`` below them all): a room may
import from the rooms below, never from one above, so the frame maths can be used and tested without the
networks, and the networks without the streaming server. ``benchmarks`` and ``tests`` sit outside and may
import anything. Every import counts, at module level or inside a function: a cycle that only closes
at call time still ties two modules together.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ClipSpec, make_clip

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("kernels", "models", "stream")
"""Lowest first."""


def _modules() -> dict[str, Path]:
    """Module name -> file for the package (through its room links) and for the benchmarks."""
    found: dict[str, Path] = {}
    for root in (REPO / "chromastream", REPO / "benchmarks"):
        for folder, _, files in os.walk(root, followlinks=True):
            for file in files:
                if file.endswith(".py"):
                    parts = Path(folder, file).relative_to(REPO).with_suffix("").parts
                    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = Path(folder, file)
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The modules of this repository that ``module`` imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:  # ``from pkg import module`` imports the module, else pkg itself
                submodule = f"{origin}.{alias.name}"
                targets.add(submodule if submodule in MODULES else origin)
    return {t for t in targets if t in MODULES}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycle(modules: set[str]) -> list[str] | None:
    """One import cycle among ``modules`` (as a path that returns to its start), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(GRAPH[module] & modules):
            found = visit(target, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(modules):
        found = visit(module, [])
        if found:
            return found
    return None


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "chromastream" and parts[1] in ROOMS else None


def test_the_graph_sees_every_room_and_function_level_imports() -> None:
    """Guards the checks below against passing on an empty graph."""
    assert {_room(m) for m in MODULES} >= set(ROOMS)
    assert "chromastream.models.runtime.registry" in GRAPH["chromastream.stream.cli"]
    # frame_ops imports the Triton kernels only inside functions (torch stays optional)
    assert "chromastream.kernels.triton_frames" in GRAPH["chromastream.kernels.frame_ops"]
    assert "benchmarks.common" in GRAPH["benchmarks.throughput"]


def test_no_import_cycle_in_the_package() -> None:
    assert _cycle({m for m in MODULES if m.startswith("chromastream")}) is None


def test_no_import_cycle_among_the_benchmarks() -> None:
    assert _cycle({m for m in MODULES if m.startswith("benchmarks")}) is None


def test_no_room_imports_from_a_room_above_it() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if (room := _room(module)) is not None
        for target in targets
        if (other := _room(target)) is not None and ROOMS.index(other) > ROOMS.index(room)
    )
    assert upward == []


def test_the_error_base_is_the_lowest_layer() -> None:
    assert {t for t in GRAPH["chromastream.errors"] if t.startswith("chromastream")} == set()


def test_the_core_install_decodes_without_torch(tmp_path: Path) -> None:
    """torch comes with the ``gpu`` and ``train`` extras only: the command line and the decoding module
    import, and a video decodes, in a process where ``import torch`` fails."""
    clip = make_clip(tmp_path / "in.mp4", ClipSpec(frames=5, width=64, height=48))
    probe = """
import sys
from pathlib import Path
sys.modules["torch"] = None  # any import of torch now raises ImportError
from chromastream.stream import cli, hw_decode
with hw_decode.open_video(Path(sys.argv[1]), hardware=False) as video:
    print(sum(1 for _ in video.frames()))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe, str(clip)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"
