"""``pipeline.backend: pass-through``: the live path without the network, to measure its limit.

Everything around the model still runs (decoding, scene cuts, the memory's inputs, batching, 4:2:0
post-processing, WebRTC and RTSP encoding) with the shipped model's shapes and scales, but the network
call returns zero ``ab`` (grey pictures) and hands the state back unchanged. What a server does with this
backend is the most it can do on the machine whatever the model costs: ``benchmarks.serve_throughput``
reports it beside the real model's figures.
"""

from __future__ import annotations

import numpy as np

from chromastream.models.runtime.base import F32, Backend, ModelInfo
from chromastream.stream.config import PipelineConfig

PASS_THROUGH = "pass-through"


class PassThroughBackend:
    """The model's :class:`ModelInfo` without its network."""

    name = PASS_THROUGH

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def run(self, L: F32, hints: F32, state: F32) -> tuple[F32, F32]:
        batch, _, height, width = L.shape
        return np.zeros((batch, 2, height, width), dtype=np.float32), state


def create_serve_backend(config: PipelineConfig) -> Backend:
    """The backend ``config`` names, ``pass-through`` included; the model file is read either way (for
    its shapes and scales), so a wrong ``model`` fails here as it would with the network."""
    from chromastream.models.runtime.registry import create_backend

    if config.backend != PASS_THROUGH:
        return create_backend(config.backend, config.model)
    return PassThroughBackend(create_backend("auto", config.model).info)
