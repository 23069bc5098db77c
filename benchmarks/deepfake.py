"""Deepfake detector benchmark (docs/ARCHITECTURE.md, Measures): ROC AUC, accuracy at the operating threshold,
log-loss and ECE of the project's detector beside the MesoNet baseline (Meso4_DF), on exactly the same face
crops in the same run, plus what detection costs per sampled frame.

Sets:

* ``dfdc``: the DFDC samples of ``shared/data/faces/dfdc/labels.csv``. Each video is sampled like
  ``chromastream detect`` does (``--rate`` per second, at most ``--frames`` frames); the faces YuNet finds
  in each sampled frame go to both models, each through its own face tracks, and each model's video
  score is its most suspicious track (trimmed mean over the whole clip). The two labelled still frames are
  one-frame clips. Every real DFDC video must end below the ``fake`` decision (real or uncertain): the
  report says whether it does.
* ``dfdc_frames``: the same sampled frames scored one by one (the most suspicious face of each frame),
  a larger but correlated sample.
* ``images``: fully synthetic StyleGAN faces (fake) against the held-out real faces (real): the
  evaluation half of the identity split the detector's training uses
  (``chromastream.models.detector.data.split_of``; where that module is absent, ``sha1(file name) % 100 < 15``
  is held out). One face per picture; tight crops are retried on a mirrored-border canvas, as the training
  data are.

MesoNet gets its native 256 px input cut from the same detected face box (same alignment and margin);
its operating threshold is 0.5 (no uncertain band). Cost: median and p95 per sampled frame with one
face, YuNet + crop + classifier beside YuNet alone, with 2 threads, on one DFDC frame.

    python -m benchmarks.deepfake              # full run -> benchmarks/results/deepfake.json
    python -m benchmarks.deepfake --smoke --out-dir /tmp/df   # seconds; not a figure to quote
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import (
    BenchmarkError,
    add_output_args,
    fail,
    file_sha256,
    machine_line,
    machine_tags,
    now_iso,
    num,
    percentiles_ms,
    run_and_write,
)

if TYPE_CHECKING:
    from chromastream.models.detector.detector import FaceClassifier, FaceFinder
    from chromastream.models.detector.faces import Face
    from chromastream.models.detector.mesonet import MesoNet

U8 = npt.NDArray[np.uint8]

NAME = "deepfake"
THREADS = 2
MESONET_WEIGHTS = "Meso4_DF.h5"
MESONET_THRESHOLD = 0.5
DEFAULT_RATE = 2.0
DEFAULT_FRAMES = 16
TIMING_REPS = 40
TIMING_FRAME = "notebook_samples/lynaeydofd_fr0.jpg"
FALLBACK_HOLDOUT_PERCENT = 15
SHEET_THUMB = 96


@dataclass(frozen=True)
class MesoAsClassifier:
    """MesoNet behind the detector's classifier interface, so it goes through the same crops, tracks
    and aggregation as the project's model."""

    net: MesoNet
    info: Any

    def probabilities(self, crops: Sequence[U8]) -> npt.NDArray[np.float64]:
        return self.net.fake_probability(crops)


@dataclass(frozen=True)
class MesoInfo:
    version: str
    input_size: int = 256
    temperature: float = 1.0
    threshold: float = MESONET_THRESHOLD
    uncertain_band: float = 0.0


@dataclass
class Models:
    """Everything one run uses; built once (model loading is not part of any timed figure)."""

    faces: FaceFinder
    ours: FaceClassifier
    meso: MesoAsClassifier
    ours_path: Path | None


def load_models(classifier: FaceClassifier | None = None) -> Models:
    import cv2

    from chromastream.models.detector import DetectorError
    from chromastream.models.detector.faces import FaceDetector
    from chromastream.models.detector.mesonet import MesoNet, default_weights_path

    cv2.setNumThreads(THREADS)
    path: Path | None = None
    try:
        if classifier is None:
            from chromastream.models.detector.classifier_runtime import DeepfakeClassifier

            loaded = DeepfakeClassifier(threads=THREADS)
            path = loaded.model_path
            classifier = loaded
        faces = FaceDetector()
        meso_path = default_weights_path(MESONET_WEIGHTS)
        net = MesoNet(meso_path, threads=THREADS)
    except (DetectorError, ModuleNotFoundError) as exc:
        raise BenchmarkError(f"cannot load the detector: {exc}") from exc
    return Models(faces, classifier, MesoAsClassifier(net, MesoInfo(version=net.name)), path)


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    path: Path
    relative: str
    fake: bool


def dfdc_items(shared: Path) -> list[Item]:
    root = shared / "data" / "faces" / "dfdc"
    labels = root / "labels.csv"
    if not labels.is_file():
        raise BenchmarkError(f"DFDC labels not found at {labels} (set CHROMASTREAM_SHARED)")
    with labels.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = [Item(root / r["path"], r["path"], r["label"].strip().upper() == "FAKE") for r in rows]
    missing = [i.relative for i in items if not i.path.is_file()]
    if missing:
        raise BenchmarkError(f"DFDC files listed in {labels} are missing: {', '.join(missing)}")
    return items


def held_out_real(shared: Path) -> tuple[list[Path], str]:
    """The held-out real faces and the rule that chose them."""
    folder = shared / "data" / "faces" / "real"
    if not folder.is_dir():
        raise BenchmarkError(f"real faces not found at {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    try:
        from chromastream.models.detector.data import split_of
    except ImportError:
        rule = f"sha1(file name) % 100 < {FALLBACK_HOLDOUT_PERCENT}"
        return [
            p
            for p in paths
            if int(hashlib.sha1(p.name.encode()).hexdigest(), 16) % 100 < FALLBACK_HOLDOUT_PERCENT
        ], rule
    return [p for p in paths if split_of(p) == "eval"], "chromastream.models.detector.data.split_of == 'eval'"


def gan_faces(shared: Path) -> list[Path]:
    folder = shared / "data" / "faces" / "gan"
    if not folder.is_dir():
        raise BenchmarkError(f"GAN faces not found at {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def read_rgb(path: Path) -> U8:
    from chromastream.stream.image_io import read_image

    pixels = read_image(path).pixels
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def detect_one(faces: FaceFinder, rgb: U8) -> Face | None:
    """The best face of a picture; tight crops that hide the face outline are retried with a mirrored
    border of a third of the size on each side (boxes mapped back to the picture)."""
    import cv2

    from chromastream.models.detector.faces import Face

    found = faces.detect(rgb)
    if found:
        return found[0]
    h, w = rgb.shape[:2]
    ph, pw = h // 3, w // 3
    padded = np.asarray(cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_REFLECT_101), dtype=np.uint8)
    found = faces.detect(padded)
    if not found:
        return None
    f = found[0]
    x0, y0, x1, y1 = f.box
    return Face(
        (x0 - pw, y0 - ph, x1 - pw, y1 - ph), f.score, tuple((x - pw, y - ph) for x, y in f.landmarks)
    )


# ----------------------------------------------------------------------------------------------- scoring


def _metrics(labels: list[int], scores: list[float], threshold: float) -> dict[str, Any] | None:
    from chromastream.models.detector.metrics import summary

    if not labels:
        return None
    return summary(labels, scores, threshold)


def _pair_metrics(
    labels: list[int], ours: list[float], meso: list[float], threshold: float
) -> dict[str, Any]:
    return {
        "ours": _metrics(labels, ours, threshold),
        "mesonet": _metrics(labels, meso, MESONET_THRESHOLD),
    }


def score_dfdc(
    models: Models, items: list[Item], rate: float, frames: int, sheet: list[tuple[U8, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-clip and per-frame results on DFDC for both models."""
    from chromastream.models.detector.detector import ClipVerdict, DeepfakeDetector
    from chromastream.models.detector.faces import crop_face
    from chromastream.stream.detect_cli import read_picture, sample_video
    from chromastream.stream.image_io import is_image_path

    info = models.ours.info
    window = max(8, frames)
    ours = DeepfakeDetector(models.ours, models.faces, window=window)
    meso = DeepfakeDetector(models.meso, models.faces, window=window)
    rows: list[dict[str, Any]] = []
    frame_labels: list[int] = []
    frame_ours: list[float] = []
    frame_meso: list[float] = []
    for item in items:
        ours.reset()
        meso.reset()
        clip_ours, clip_meso = ClipVerdict(ours), ClipVerdict(meso)
        picture = is_image_path(item.path)
        sampled = [read_picture(item.path)] if picture else list(sample_video(item.path, rate, frames))
        first_crop: U8 | None = None
        for frame in sampled:
            found = models.faces.detect(frame.rgb)
            clip_ours.add(ours.sample(frame.rgb, frame.pts, faces=found))
            clip_meso.add(meso.sample(frame.rgb, frame.pts, faces=found))
            if found and ours.last is not None and meso.last is not None:
                frame_labels.append(int(item.fake))
                frame_ours.append(float(ours.last.probabilities.max()))
                frame_meso.append(float(meso.last.probabilities.max()))
                if first_crop is None:
                    first_crop = crop_face(frame.rgb, found[0], SHEET_THUMB)
        p_ours, p_meso = clip_ours.probability, clip_meso.probability
        row: dict[str, Any] = {
            "path": item.relative,
            "kind": "image" if picture else "video",
            "truth": "fake" if item.fake else "real",
            "frames_sampled": clip_ours.frames_sampled,
            "frames_with_faces": clip_ours.frames_with_faces,
            "tracks": len(clip_ours.tracks),
            "ours": {"probability": p_ours, "label": clip_ours.label},
            "mesonet": {"probability": p_meso, "label": clip_meso.label},
        }
        if not item.fake:
            # A real video must not be called fake: below the fake decision, i.e. real or uncertain.
            row["real_ok"] = None if p_ours is None else bool(p_ours < info.threshold + info.uncertain_band)
        rows.append(row)
        if first_crop is not None:
            sheet.append((first_crop, f"{row['truth'][0].upper()} ours {_fmt(p_ours)} meso {_fmt(p_meso)}"))
    scored = [r for r in rows if r["ours"]["probability"] is not None]
    labels = [int(r["truth"] == "fake") for r in scored]
    real_checks = [r["real_ok"] for r in rows if "real_ok" in r]
    clips = {
        "n": len(rows),
        "no_face": [r["path"] for r in rows if r["ours"]["probability"] is None],
        "metrics": _pair_metrics(
            labels,
            [float(r["ours"]["probability"]) for r in scored],
            [float(r["mesonet"]["probability"]) for r in scored],
            float(info.threshold),
        ),
        "real_not_fake": all(c is True for c in real_checks) if real_checks else None,
        "items": rows,
    }
    per_frame = {
        "n": len(frame_labels),
        "metrics": _pair_metrics(frame_labels, frame_ours, frame_meso, float(info.threshold)),
    }
    return clips, per_frame


def score_images(
    models: Models, fakes: list[Path], reals: list[Path], sheet: list[tuple[U8, str]], sheet_each: int
) -> dict[str, Any]:
    """One face per picture, both models on crops from the same box."""
    import cv2

    from chromastream.models.detector.faces import crop_face

    size = int(models.ours.info.input_size)
    labels: list[int] = []
    ours_crops: list[U8] = []
    meso_crops: list[U8] = []
    names: list[str] = []
    no_face: list[str] = []
    for label, paths in ((1, fakes), (0, reals)):
        for path in paths:
            rgb = read_rgb(path)
            face = detect_one(models.faces, rgb)
            if face is None:
                no_face.append(path.name)
                continue
            labels.append(label)
            names.append(path.name)
            ours_crops.append(crop_face(rgb, face, size))
            meso_crops.append(crop_face(rgb, face, models.meso.info.input_size))
    ours = _batched(models.ours.probabilities, ours_crops)
    meso = _batched(models.meso.probabilities, meso_crops)
    for label in (1, 0):
        picks = [i for i, y in enumerate(labels) if y == label][:sheet_each]
        for i in picks:
            thumb = np.asarray(
                cv2.resize(meso_crops[i], (SHEET_THUMB, SHEET_THUMB), interpolation=cv2.INTER_AREA),
                dtype=np.uint8,
            )
            sheet.append((thumb, f"{'F' if label else 'R'} ours {_fmt(ours[i])} meso {_fmt(meso[i])}"))
    y = np.asarray(labels)
    return {
        "n_fake": int(y.sum()),
        "n_real": int(y.size - y.sum()),
        "no_face": no_face,
        "metrics": _pair_metrics(
            labels, [float(v) for v in ours], [float(v) for v in meso], float(models.ours.info.threshold)
        ),
        "mean_probability": {
            "ours": {"fake": _mean(ours[y == 1]), "real": _mean(ours[y == 0])},
            "mesonet": {"fake": _mean(meso[y == 1]), "real": _mean(meso[y == 0])},
        },
    }


def _batched(
    fn: Callable[[Sequence[U8]], npt.NDArray[np.float64]], crops: list[U8], batch: int = 32
) -> npt.NDArray[np.float64]:
    parts = [np.asarray(fn(crops[i : i + batch]), dtype=np.float64) for i in range(0, len(crops), batch)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def _mean(values: npt.NDArray[np.float64]) -> float | None:
    return float(values.mean()) if values.size else None


def _fmt(p: float | None) -> str:
    return "none" if p is None else f"{p:.2f}"


# ----------------------------------------------------------------------------------------------- cost


def measure_cost(models: Models, frame: U8, reps: int) -> dict[str, Any]:
    """Per sampled frame with one face: YuNet alone, YuNet + crop + classifier (the detector's sample),
    and MesoNet's classifier share for reference. Warm-up calls first; the median and tails are kept."""
    from chromastream.models.detector.detector import DeepfakeDetector
    from chromastream.models.detector.faces import crop_face

    faces = models.faces.detect(frame)
    if len(faces) != 1:
        raise BenchmarkError(f"the timing frame should hold exactly one face, YuNet found {len(faces)}")
    detector = DeepfakeDetector(models.ours, models.faces)
    meso_crop = crop_face(frame, faces[0], models.meso.info.input_size)

    def timed(fn: Callable[[], object]) -> list[float]:
        for _ in range(3):
            fn()
        out = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    yunet = timed(lambda: models.faces.detect(frame))
    full = timed(lambda: detector.sample(frame, 0))
    meso = timed(lambda: models.meso.probabilities([meso_crop]))
    return {
        "frame_size": [int(frame.shape[1]), int(frame.shape[0])],
        "faces": 1,
        "threads": THREADS,
        "reps": reps,
        "yunet_ms": percentiles_ms(yunet),
        "detector_ms": percentiles_ms(full),
        "mesonet_classifier_ms": percentiles_ms(meso),
    }


# ----------------------------------------------------------------------------------------------- sheet


def contact_sheet(cells: list[tuple[U8, str]], title: str, columns: int = 6) -> U8:
    import cv2

    cell_w, cell_h, gap, header = SHEET_THUMB + 48, SHEET_THUMB + 18, 6, 24
    rows = max(1, -(-len(cells) // columns))
    sheet = np.full((header + rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), 255, np.uint8)
    cv2.putText(sheet, title, (gap, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    for k, (thumb, caption) in enumerate(cells):
        r, c = divmod(k, columns)
        x, y = gap + c * (cell_w + gap), header + r * (cell_h + gap)
        sheet[y : y + SHEET_THUMB, x : x + SHEET_THUMB] = thumb[:SHEET_THUMB, :SHEET_THUMB]
        cv2.putText(
            sheet,
            caption,
            (x, y + SHEET_THUMB + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.36,
            (20, 20, 20),
            1,
            cv2.LINE_AA,
        )
    return sheet


# ----------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace, classifier: FaceClassifier | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    shared = args.shared
    items = dfdc_items(shared)
    fakes = gan_faces(shared)
    reals, rule = held_out_real(shared)
    if args.smoke:
        small = [i for i in items if "mesonet_fork_test_videos" in i.relative]
        items = small or items[:2]
        fakes, reals = fakes[:6], reals[:6]
    models = load_models(classifier)
    info = models.ours.info
    sheet: list[tuple[U8, str]] = []
    frames = 3 if args.smoke else args.frames
    dfdc, dfdc_frames = score_dfdc(models, items, args.rate, frames, sheet)
    images = score_images(models, fakes, reals, sheet, sheet_each=3 if args.smoke else 6)
    timing_path = shared / "data" / "faces" / "dfdc" / TIMING_FRAME
    cost = measure_cost(models, read_rgb(timing_path), 3 if args.smoke else args.timing_reps)
    cost["frame"] = TIMING_FRAME
    result: dict[str, Any] = {
        "benchmark": NAME,
        "date": now_iso(),
        "smoke": bool(args.smoke),
        "model": {
            "version": str(info.version),
            "path": str(models.ours_path) if models.ours_path else None,
            "sha256": file_sha256(models.ours_path)[:16] if models.ours_path else None,
            "backend": "onnxruntime",
            "input_size": int(info.input_size),
        },
        "operating_point": {
            "threshold": float(info.threshold),
            "uncertain_band": float(info.uncertain_band),
            "temperature": float(getattr(info, "temperature", 1.0)),
        },
        "baseline": {
            "name": "MesoNet Meso4 (Deepfakes-trained)",
            "version": models.meso.info.version,
            "sha256": file_sha256(models.meso.net.path)[:16],
            "threshold": MESONET_THRESHOLD,
            "input_size": models.meso.info.input_size,
        },
        "settings": {
            "rate": args.rate,
            "frames_per_video": frames,
            "aggregation": "per track trimmed mean over the clip; clip = most suspicious track",
            "real_split": rule,
            "threads": THREADS,
        },
        "sets": {"dfdc": dfdc, "dfdc_frames": dfdc_frames, "images": images},
        "cost": cost,
    }
    if args.sheet and sheet:
        import cv2

        out_dir: Path = args.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        name = "contact_deepfake.png"
        image = contact_sheet(sheet, f"{info.version} vs {models.meso.info.version}: P(fake) per face")
        cv2.imwrite(str(out_dir / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        result["contact_sheet"] = name
    result["machine"] = machine_tags()
    result["seconds"] = time.perf_counter() - started
    return result


def print_summary(result: dict[str, Any]) -> None:
    for line in summary_lines(result):
        print(line)


def summary_lines(result: dict[str, Any]) -> list[str]:
    op = result["operating_point"]
    lines = [
        f"detector {result['model']['version']} "
        f"(threshold {op['threshold']:.3f} ± {op['uncertain_band']:.3f}) "
        f"vs {result['baseline']['version']} (threshold {result['baseline']['threshold']})",
        "",
        f"{'set':<12} {'model':<8} {'n':>4} {'AUC':>6} {'acc':>6} {'logloss':>8} {'ECE':>6}",
    ]
    for name, data in result["sets"].items():
        for model in ("ours", "mesonet"):
            m = (data.get("metrics") or {}).get(model)
            if not m:
                continue
            lines.append(
                f"{name:<12} {model:<8} {m['n']:>4} {num(m['auc'], 3):>6} {num(m['accuracy'], 3):>6} "
                f"{num(m['log_loss'], 3):>8} {num(m['ece'], 3):>6}"
            )
    lines += ["", "DFDC per clip (P(fake), label):"]
    for row in result["sets"]["dfdc"]["items"]:
        check = ""
        if "real_ok" in row:
            check = "  real not called fake" if row["real_ok"] else "  REAL CALLED FAKE"
        lines.append(
            f"  {row['truth']:<5} {row['path']:<48} ours {num(row['ours']['probability'], 3)} "
            f"{row['ours']['label']:<9} meso {num(row['mesonet']['probability'], 3)} "
            f"{row['mesonet']['label']:<9}{check}"
        )
    cost = result["cost"]
    lines += [
        "",
        f"cost per sampled frame with one face ({cost['frame_size'][0]}x{cost['frame_size'][1]}, "
        f"{cost['threads']} threads): detector p50 {num(cost['detector_ms'].get('p50'), 1)} ms "
        f"p95 {num(cost['detector_ms'].get('p95'), 1)} ms; YuNet alone p50 "
        f"{num(cost['yunet_ms'].get('p50'), 1)} ms p95 {num(cost['yunet_ms'].get('p95'), 1)} ms",
    ]
    return lines


# ----------------------------------------------------------------------------------------------- report


def _cell(m: dict[str, Any] | None, key: str) -> str:
    return num((m or {}).get(key), 3)


def report_section(data: dict[str, Any]) -> list[str]:
    """The RESULTS.md section for ``deepfake.json`` (rendered by :mod:`benchmarks.report`)."""
    model = data.get("model") or {}
    base = data.get("baseline") or {}
    op = data.get("operating_point") or {}
    settings = data.get("settings") or {}
    lines = [
        "## Deepfake detector",
        "",
        f"Detector `{model.get('version', '?')}` (sha256 `{model.get('sha256', '?')}`), operating threshold "
        f"{num(op.get('threshold'), 3)} with uncertain band ± {num(op.get('uncertain_band'), 3)}; baseline "
        f"{base.get('name', '?')} (`{base.get('version', '?')}`, threshold {num(base.get('threshold'))}) on "
        f"the same face crops in the same run; run {data.get('date', '?')}.",
        "",
    ]
    if data.get("smoke"):
        lines += ["> Smoke run (`--smoke`): too short for a final figure.", ""]
    lines += [
        "Labels: 1 = fake. Accuracy at each model's own operating threshold; log-loss in nats (probabilities "
        "clipped at 1e-15); ECE over 15 equal-width bins. `dfdc` scores each clip (videos sampled at "
        f"{num(settings.get('rate'), 1)}/s, at most {settings.get('frames_per_video', '?')} frames; the "
        "clip's score is its most suspicious face track), `dfdc_frames` each sampled frame, `images` "
        f"StyleGAN faces against held-out real faces ({settings.get('real_split', '?')}).",
        "",
        "| set | n (fake/real) | model | ROC AUC ↑ | accuracy ↑ | log-loss ↓ | ECE ↓ |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in (data.get("sets") or {}).items():
        metrics = s.get("metrics") or {}
        for i, key in enumerate(("ours", "mesonet")):
            m = metrics.get(key)
            counts = f"{(m or {}).get('n_fake', '?')}/{(m or {}).get('n_real', '?')}" if i == 0 else ""
            lines.append(
                f"| {name if i == 0 else ''} | {counts} | {'detector' if key == 'ours' else 'MesoNet'} | "
                f"{_cell(m, 'auc')} | {_cell(m, 'accuracy')} | {_cell(m, 'log_loss')} | {_cell(m, 'ece')} |"
            )
    dfdc = (data.get("sets") or {}).get("dfdc") or {}
    lines += [
        "",
        "DFDC per clip (P(fake) and label):",
        "",
        "| clip | truth | frames (with face) | detector | MesoNet | real not called fake |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for row in dfdc.get("items") or []:
        ok = row.get("real_ok")
        mark = "" if "real_ok" not in row else ("n/a" if ok is None else ("**PASS**" if ok else "**FAIL**"))
        lines.append(
            f"| {Path(str(row.get('path'))).name} | {row.get('truth')} | {row.get('frames_sampled')} "
            f"({row.get('frames_with_faces')}) | {num(row['ours'].get('probability'), 3)} "
            f"{row['ours'].get('label')} | {num(row['mesonet'].get('probability'), 3)} "
            f"{row['mesonet'].get('label')} | {mark} |"
        )
    verdict = dfdc.get("real_not_fake")
    lines += [
        "",
        f"Every real DFDC clip below the fake decision: "
        f"{'n/a' if verdict is None else ('**PASS**' if verdict else '**FAIL**')}.",
    ]
    cost = data.get("cost") or {}
    if cost:
        size = cost.get("frame_size") or ["?", "?"]
        det, yunet = cost.get("detector_ms") or {}, cost.get("yunet_ms") or {}
        meso = cost.get("mesonet_classifier_ms") or {}
        lines += [
            "",
            f"Cost per sampled frame with one face ({size[0]}×{size[1]}, {cost.get('threads')} threads, "
            f"{cost.get('reps')} calls):",
            "",
            "| stage | p50 ms | p95 ms |",
            "| --- | ---: | ---: |",
            f"| YuNet alone (limit) | {num(yunet.get('p50'))} | {num(yunet.get('p95'))} |",
            f"| YuNet + crop + classifier (detector) | {num(det.get('p50'))} | {num(det.get('p95'))} |",
            f"| MesoNet classifier alone, one 256 px crop | {num(meso.get('p50'))} | "
            f"{num(meso.get('p95'))} |",
        ]
    if data.get("contact_sheet"):
        lines += ["", f"Faces with their scores: [contact sheet](results/{data['contact_sheet']})."]
    lines += ["", machine_line(data), ""]
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deepfake",
        description="Deepfake detector vs MesoNet: AUC, accuracy, log-loss, ECE, per-clip table, cost.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few inputs and calls: checks the harness only"
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="video samples per second")
    parser.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help="at most this many samples per video"
    )
    parser.add_argument("--timing-reps", type=int, default=TIMING_REPS, help="timed calls per stage")
    add_output_args(parser, "deepfake.json and its contact sheet")
    parser.add_argument("--no-sheet", dest="sheet", action="store_false", help="skip the contact sheet PNG")
    return parser


def main(argv: list[str] | None = None, classifier: FaceClassifier | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0 or args.frames < 1 or args.timing_reps < 1:
        return fail("--rate, --frames and --timing-reps must be positive")
    return run_and_write(NAME, args.out_dir, lambda: run(args, classifier), print_summary)


if __name__ == "__main__":
    sys.exit(main())
