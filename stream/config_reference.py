"""``docs/CONFIG.md``, the YAML reference of ``chromastream serve``, generated from the configuration tree.

The reference is generated rather than written by hand so it cannot drift from the code: each key's type
and default come from the dataclasses in :mod:`chromastream.stream.config` and its meaning from the
field's docstring, the one place a setting is explained. After changing a setting there, regenerate::

    python -m chromastream.stream.config_reference > docs/CONFIG.md

and the test suite fails while the committed file differs from what this prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from chromastream.models.colorizer.hints import Hint
from chromastream.stream.cli import SERVE_FLAGS
from chromastream.stream.config import ServeConfig

EXAMPLE = """\
host: 0.0.0.0                 # reachable from other machines
token: change-me              # then open the page once as http://HOST:8080/?token=change-me
pipeline:
  size: 256                   # more detail; needs more than two CPU cores for real time
webrtc:
  bitrate: 2500000
streams:
  - id: gate
    url: rtsp://viewer:secret@10.0.0.7:554/stream1
    transport: udp
    hints: [{x: 0.5, y: 0.2, rgb: "#3070c0"}]   # the gate is blue
    record: recordings/gate.mp4                  # relative to this file's folder
  - id: lobby
    url: videos/lobby.mp4     # a file loops by default; loop: false plays it once
"""


def sections(cls: type[Any] = ServeConfig, path: str = "") -> list[tuple[str, type[Any]]]:
    """Every dataclass of the tree with the key path it sits at: ``("", ServeConfig)``,
    ``("pipeline", PipelineConfig)``, ..., ``("streams[]", StreamConfig)`` for list entries. Hints are
    values with a format of their own (``StreamConfig.hints`` describes it), not a section."""
    found: list[tuple[str, type[Any]]] = [(path, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        key = f"{path}.{f.name}" if path else f.name
        if typing.get_origin(annotation) is tuple:
            annotation, key = typing.get_args(annotation)[0], f"{key}[]"
        optional = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, types.UnionType) and len(optional) == 1:
            annotation = optional[0]  # an optional section (``record``) is still a section
        if _is_section(annotation):
            found += sections(annotation, key)
    return found


def _is_section(annotation: Any) -> bool:
    return (
        isinstance(annotation, type)
        and dataclasses.is_dataclass(annotation)
        and annotation.__module__ == ServeConfig.__module__
    )


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Each field's docstring (the string right under it in the class body), as one paragraph."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    (body,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _markdown(text: str) -> str:
    """reStructuredText literals and cross-references (as the docstrings write them) as Markdown."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(inner) < len(typing.get_args(annotation))
        return " or ".join(_type(a) for a in inner) + (" or null" if nullable else "")
    names = {bool: "true/false", int: "integer", float: "number", str: "string", Path: "path"}
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        if inner is Hint:
            return "list of hints"
        if inner in names:
            return f"list of {names[inner]}s"
        return f"list of {inner.__name__.removesuffix('Config').lower()}s"
    if _is_section(annotation):
        return "section"
    return names[annotation]


def _default(f: dataclasses.Field[Any]) -> str:
    """The default as YAML, in backticks; words where there is no single value."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return "see below" if _is_section(type(value)) else f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[]" if not value else repr(list(value))
    return str(value)


def _anchor(path: str) -> str:
    """The id a Markdown renderer gives the heading of the section at ``path`` (GitHub's rule)."""
    return re.sub(r"[^a-z0-9_-]", "", path.lower())


def _table(path: str, cls: type[Any], paths: set[str]) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags = {key: flag for flag, key in SERVE_FLAGS.items()}
    rows = ["| key | type | default | flag | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        flag = flags.get(key, "")
        meaning = _markdown(docs[f.name]).replace("|", "\\|")
        section = next((p for p in (key, f"{key}[]") if p in paths), None)
        if section is not None:
            meaning += f" See [`{section}`](#{_anchor(section)}) below."
        rows.append(
            f"| `{f.name}` | {_type(hints[f.name])} | {_default(f)} | {f'`{flag}`' if flag else ''} "
            f"| {meaning} |"
        )
    return rows


def render() -> str:
    """The whole of ``docs/CONFIG.md``."""
    lines = [
        "# `chromastream serve` configuration",
        "",
        "<!-- Generated by `python -m chromastream.stream.config_reference > docs/CONFIG.md` from the",
        "     field docstrings in stream/config.py: edit those, then regenerate. -->",
        "",
        "`chromastream serve --config FILE` reads one YAML file. Every key may be left out and then takes",
        "its default, except a stream's `id` and `url`. The whole file is checked before anything starts:",
        "an unknown key or a wrong value stops the server with one line that names the key, such as",
        "`webrtc.bitrate: must be in 50000..100000000 bits per second, got 10`. Relative paths",
        "(`pipeline.model`, a stream's `record`) are taken relative to the file's folder, so the file means",
        "the same wherever the server is started from.",
        "",
        "Flags given beside `--config` override the file's values (the *flag* column), and each `--source`",
        "adds a stream (ids `cam1`, `cam2`, ...) after the file's. Streams can also be added while the",
        "server runs, with `POST /api/streams` and the same keys except `record` and `rtsp_push`.",
        "[serve.example.yaml](serve.example.yaml) lists every key with its default, ready to copy.",
        "",
        "## Example",
        "",
        "```yaml",
        *EXAMPLE.splitlines(),
        "```",
    ]
    tree = sections()
    paths = {path for path, _ in tree}
    for path, cls in tree:
        title = "Top level" if not path else f"`{path}`"
        description = _markdown(" ".join(inspect.cleandoc(cls.__doc__ or "").split()))
        if path.endswith("[]"):
            description = f"Each entry of `{path.removesuffix('[]')}`. {description}"
        lines += ["", f"## {title}", "", description, "", *_table(path, cls, paths)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
