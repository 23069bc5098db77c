"""Export the trained deepfake classifier to ONNX, with its calibration in the file's metadata.

``python -m chromastream.models.detector.export --run runs/detector --output models/weights/detector.onnx``
takes ``<run>/best.pt`` (EMA weights) and ``<run>/calibration.json`` (temperature, threshold, uncertain band).
The graph is the raw network: input ``faces [N, 3, S, S]`` float RGB in 0..1 (``pixel / 255``, an eye-aligned
``crop_face(..., margin=0.25)``), output ``logit [N]``. The calibrated probability is ``sigmoid(logit /
temperature)``; runtimes read the temperature and the operating point from the metadata, so a recalibration
never needs a new graph and never hard-codes numbers in code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from chromastream.models.detector.classifier import INPUT_SIZE, NORMALIZATION, DeepfakeNet, build_classifier
from chromastream.models.detector.data import INPUT_MARGIN
from chromastream.models.shared_data import shared_root

INPUT_NAME = "faces"
OUTPUT_NAME = "logit"


def detector_metadata(
    version: str, input_size: int, temperature: float, threshold: float, uncertain_band: float
) -> dict[str, str]:
    return {
        "chromastream.kind": "deepfake-classifier",
        "chromastream.version": version,
        "chromastream.input_size": str(input_size),
        "chromastream.normalization": NORMALIZATION,
        "chromastream.crop_margin": str(INPUT_MARGIN),
        "chromastream.temperature": repr(float(temperature)),
        "chromastream.threshold": repr(float(threshold)),
        "chromastream.uncertain_band": repr(float(uncertain_band)),
    }


def export_onnx(model: DeepfakeNet, path: Path, metadata: dict[str, str], size: int = INPUT_SIZE) -> None:
    """Write ``model`` to ``path`` (dynamic batch, fixed crop side), atomically, with ``metadata``."""
    import onnx

    model = model.eval().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (torch.rand(2, 3, size, size),),
        str(tmp),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def measure_latency(model_path: Path, shared: Path, repeats: int = 100) -> dict[str, object]:
    """Per-frame cost of the shipped path on one thread: YuNet on a grey CCTV frame (768×432) with one
    real face pasted in, the aligned crop, and the classifier; medians and p95 in milliseconds. The
    face is pasted so every frame costs a classification (the clip itself shows no frontal face)."""
    import time

    import cv2
    import numpy as np

    from chromastream.models.detector.classifier_runtime import DeepfakeClassifier
    from chromastream.models.detector.faces import FaceDetector, crop_face

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    clip = sorted((shared / "data" / "video" / "cctv").glob("*.mp4"))[0]
    face_file = sorted((shared / "data" / "faces" / "real").glob("*.jpg"))[1]
    face = cv2.imread(str(face_file), cv2.IMREAD_GRAYSCALE)
    if face is None:
        raise OSError(f"cannot read {face_file}")
    cap = cv2.VideoCapture(str(clip))
    frames: list[np.ndarray] = []
    while len(frames) < 20:
        ok, frame = cap.read()
        if not ok:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        grey[100 : 100 + face.shape[0], 300 : 300 + face.shape[1]] = face
        frames.append(grey)
    cap.release()
    if not frames:
        raise OSError(f"cannot decode {clip}")
    classifier, detector = DeepfakeClassifier(model_path), FaceDetector()
    size = classifier.info.input_size

    def timed(fn: Callable[[int], object]) -> list[float]:
        for i in range(5):
            fn(i)
        out = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t0) * 1000)
        return [round(float(np.percentile(out, 50)), 2), round(float(np.percentile(out, 95)), 2)]

    found = detector.detect(frames[0])
    crop = crop_face(frames[0], found[0], size)

    def whole(i: int) -> None:
        f = frames[i % len(frames)]
        classifier.probabilities([crop_face(f, x, size) for x in detector.detect(f)])

    small = FaceDetector(max_side=320)
    return {
        "frame": [int(frames[0].shape[1]), int(frames[0].shape[0])],
        "yunet_max_side": detector.max_side,
        "threads": 1,
        "faces_per_frame": len(found),
        "yunet_ms_p50_p95": timed(lambda i: detector.detect(frames[i % len(frames)])),
        "crop_ms_p50_p95": timed(lambda i: crop_face(frames[i % len(frames)], found[0], size)),
        "classifier_ms_p50_p95": timed(lambda i: classifier.probabilities([crop])),
        "per_frame_ms_p50_p95": timed(whole),
        "yunet_max_side_320_ms_p50_p95": timed(lambda i: small.detect(frames[i % len(frames)])),
        "yunet_max_side_320_faces": len(small.detect(frames[0])),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/detector"), help="training run folder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: <run>/best.pt")
    parser.add_argument("--calibration", type=Path, default=None, help="default: <run>/calibration.json")
    parser.add_argument("--output", type=Path, default=Path("models/weights/detector.onnx"))
    parser.add_argument("--version", default=None, help="version string stored in the file")
    parser.add_argument("--latency", type=Path, default=None, help="also time YuNet + classifier; JSON here")
    parser.add_argument("--shared", type=Path, default=shared_root(), help="shared data (for --latency)")
    args = parser.parse_args(argv)
    ckpt_path = args.checkpoint or args.run / "best.pt"
    calib_path = args.calibration or args.run / "calibration.json"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    calib = json.loads(calib_path.read_text())
    size = int(ckpt["args"]["size"])
    model = build_classifier(None)
    model.load_state_dict(ckpt["ema"])
    digest = hashlib.sha256(ckpt_path.read_bytes()).hexdigest()[:8]
    version = args.version or f"sbi-mnv2-{size}-{ckpt['step']}-{digest}"
    meta = detector_metadata(version, size, calib["temperature"], calib["threshold"], calib["uncertain_band"])
    export_onnx(model, args.output, meta, size)
    print(json.dumps({"output": str(args.output), "bytes": args.output.stat().st_size, **meta}, indent=1))
    if args.latency is not None:
        timing = measure_latency(args.output, args.shared)
        args.latency.parent.mkdir(parents=True, exist_ok=True)
        args.latency.write_text(
            json.dumps({"model": meta["chromastream.version"], **timing}, indent=1) + "\n"
        )
        print(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
