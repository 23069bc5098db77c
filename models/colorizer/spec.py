"""The colorizer's tensor contract, shared by the network, its export and every runtime backend.

Kept free of torch so that inference-only installs (ONNX Runtime) can import it.

Network inputs/outputs:
- ``L``      ``[B, 1, H, W]``  Lab lightness divided by ``L_SCALE`` (so in [0, 1]).
- ``hints``  ``[B, 3, H, W]``  hint a and b divided by ``AB_SCALE`` and already multiplied by the
  mask, then the mask itself (1 where the user gave a colour).
- ``state``  ``[B, STATE_CHANNELS, H / STATE_STRIDE, W / STATE_STRIDE]`` recurrent memory; zeros
  start a fresh sequence.
- ``ab``     ``[B, 2, H, W]``  predicted a and b divided by ``AB_SCALE``.
- ``state_out`` same shape as ``state``.
H and W must be multiples of ``SIZE_MULTIPLE`` (the encoder downsamples five times).
"""

from __future__ import annotations

from chromastream.kernels.lab_numpy import L_WHITE

#: ``L / L_SCALE`` is in [0, 1]. The kernels that build the network input take this scale as an argument
#: and default to the same Lab white, since they sit below the models and cannot import this module.
L_SCALE = L_WHITE
AB_SCALE = 110.0
SIZE_MULTIPLE = 32
STATE_CHANNELS = 64
STATE_STRIDE = 16
INPUT_NAMES = ("L", "hints", "state")
OUTPUT_NAMES = ("ab", "state_out")

# DAVIS sequences reserved for video evaluation, never trained on. They span a near-still camera
# (blackswan), fast vehicles (car-shadow), a moving person (dance-twirl) and water (kite-surf).
DAVIS_EVAL_SEQUENCES = ("blackswan", "car-shadow", "dance-twirl", "kite-surf")
