"""On-disk cache of built TensorRT engines and the builder's timing cache.

An engine is only valid for the exact network, optimization profile, precision, GPU model and TensorRT version
it was built with, and building one takes minutes, so it is built once and kept. The cache key holds all of
them (Savant's ``nvinfer`` engine naming does the same): the SHA-256 of the ONNX file, the profile's
min/opt/max shapes, the precision, the GPU name and compute capability, and the TensorRT version. Anything
else changing — a new model file, a different profile in the config, a driver upgrade that brings a new
TensorRT, another GPU in the machine — yields a new key and a new build instead of a wrong engine.

The timing cache (per GPU and TensorRT version, shared by every model) records kernel timings measured
while building, so the next build of any model on that GPU skips most of its measurements.

Pure Python: tested on every machine, used by :mod:`chromastream.models.runtime.tensorrt_backend` where
TensorRT is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from chromastream.models.runtime.base import BackendError, ModelInfo


class EngineCacheError(BackendError):
    """The cache folder cannot be created or written."""


@dataclass(frozen=True)
class ProfileShapes:
    """The range of shapes one TensorRT optimization profile accepts (docs/ARCHITECTURE.md, Contracts: dynamic
    batch and resolution). Heights and widths are the network's working size (multiples of the model's
    ``size_multiple``); the engine is tuned for ``opt`` and accepts anything from ``min`` to ``max``."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    min_hw: tuple[int, int] = (64, 64)
    """Smallest working (height, width)."""
    opt_hw: tuple[int, int] = (256, 448)
    """The shape to tune for: a 16:9 stream at the default 256 working size."""
    max_hw: tuple[int, int] = (512, 1024)
    """Largest working (height, width)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min <= opt <= max batch, got {self.batches}")
        for i in (0, 1):
            if not self.min_hw[i] <= self.opt_hw[i] <= self.max_hw[i]:
                raise ValueError(
                    f"need min <= opt <= max working size, got {self.min_hw, self.opt_hw, self.max_hw}"
                )

    @property
    def batches(self) -> tuple[int, int, int]:
        return (self.min_batch, self.opt_batch, self.max_batch)

    def input_shapes(self, info: ModelInfo) -> dict[str, tuple[tuple[int, ...], ...]]:
        """``{input name: (min, opt, max)}`` for ``L``, ``hints`` and ``state``."""
        sizes = (self.min_hw, self.opt_hw, self.max_hw)
        for h, w in sizes:
            if h % info.size_multiple or w % info.size_multiple:
                raise ValueError(f"working size {h}x{w} is not a multiple of {info.size_multiple}")
        pairs = list(zip(self.batches, sizes, strict=True))
        return {
            "L": tuple((b, 1, h, w) for b, (h, w) in pairs),
            "hints": tuple((b, 3, h, w) for b, (h, w) in pairs),
            "state": tuple(info.state_shape(b, h, w) for b, (h, w) in pairs),
        }

    def accepts(self, batch: int, height: int, width: int) -> bool:
        return (
            self.min_batch <= batch <= self.max_batch
            and self.min_hw[0] <= height <= self.max_hw[0]
            and self.min_hw[1] <= width <= self.max_hw[1]
        )


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two equal keys can share one engine file."""

    onnx_sha256: str
    profile: ProfileShapes
    precision: str
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "digest": self.digest()}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``CHROMASTREAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/chromastream/engines`` (``~/.cache/...``)."""
    override = os.environ.get("CHROMASTREAM_ENGINE_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chromastream" / "engines"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write beside the target and rename: a reader never sees half an engine, and two processes
    building the same key at once leave one whole file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Engines as ``<digest>.engine`` with a ``<digest>.json`` describing the key beside each."""

    def __init__(self, root: Path | None = None):
        self.root = root or default_cache_dir()

    def _ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineCacheError(f"cannot create the engine cache {self.root}: {exc.strerror}") from exc

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest()}.engine"

    def load(self, key: EngineKey) -> bytes | None:
        """The engine built for ``key``, or None when there is none yet."""
        try:
            return self.engine_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def store(self, key: EngineKey, engine: bytes) -> Path:
        self._ensure()
        path = self.engine_path(key)
        try:
            _atomic_write(path, engine)
            description = json.dumps(key.describe(), indent=2, sort_keys=True) + "\n"
            _atomic_write(path.with_suffix(".json"), description.encode("utf-8"))
        except OSError as exc:
            raise EngineCacheError(f"cannot write {path}: {exc.strerror}") from exc
        return path

    def timing_cache_path(self, gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> Path:
        tag = hashlib.sha256(f"{gpu_name}|{compute_capability}|{trt_version}".encode()).hexdigest()[:16]
        return self.root / f"timing-{tag}.cache"

    def load_timing_cache(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    def store_timing_cache(self, path: Path, data: bytes) -> None:
        self._ensure()
        try:
            _atomic_write(path, data)
        except OSError as exc:
            raise EngineCacheError(f"cannot write {path}: {exc.strerror}") from exc
