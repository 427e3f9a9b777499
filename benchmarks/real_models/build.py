"""Builds the real-model suite into a cache directory; skips what is already built.

    python -m benchmarks.real_models.build [--cache_dir DIR] [--models a,b] [--rebuild]

Layout of the cache, per model ``<name>/``: ``float.tflite`` (the float model
every configuration is scored against), ``calib.npy`` (64 samples),
``eval.npy`` (500 samples, from other photos), ``meta.json`` (input size,
normalization and where it came from, kind, sources). EfficientNet-Lite also
gets ``model.keras`` and ``saved_model/``. ``manifest.json`` at the top lists
which photos went to calibration and which to evaluation, and every crop.
Nothing is downloaded: missing packages are reported with the pip line to run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from benchmarks.real_models import default_cache_dir  # noqa: E402
from benchmarks.real_models import efficientnet_lite as effnet  # noqa: E402
from benchmarks.real_models import images  # noqa: E402
from benchmarks.real_models import mediapipe_models as mp  # noqa: E402

FLAGS = flags.FLAGS
ALL_MODELS = [*effnet.VARIANTS, *mp.MODELS]
flags.DEFINE_string("cache_dir", None, "Cache directory (default: $EQ_TFLITE_REAL_MODELS or "
                    "~/.cache/eq-tflite-real-models).")
flags.DEFINE_list("models", ALL_MODELS, "Models to build.")
flags.DEFINE_string("wheel_dir", None, "Directory holding the mediapipe-0.10.14 wheel (default: "
                    "search the cache dir, ./wheels, . and /work/pkgs, where this project's machines keep "
                    "downloaded wheels).")
flags.DEFINE_integer("num_calibration", 64, "Calibration samples per model.")
flags.DEFINE_integer("num_evaluation", 500, "Evaluation samples per model.")
flags.DEFINE_integer("calibration_photos", 6, "Photos reserved for calibration (the rest are evaluation).")
flags.DEFINE_integer("seed", 0, "Seed of the photo split and the crops.")
flags.DEFINE_bool("rebuild", False, "Rebuild even what is already in the cache.")

#: ImageNet classes a port must predict on whole sample photos (the port check).
PORT_CHECK = {"skimage/chelsea": range(281, 286), "skimage/coffee": (504, 967, 968)}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _input_size(tflite: bytes) -> tuple[int, int]:
    from eq_tflite.graph import Graph
    g = Graph.from_tflite(tflite)
    shape = list(g.tensors[g.inputs[0]].shape)
    return int(shape[1]), int(shape[2])


def _build_effnet(name: str, out: Path, photo_images: dict) -> dict:
    from eq_tflite import api
    from benchmarks.real_models.pth import load_state_dict
    variant = effnet.VARIANTS[name]
    pth = effnet.weights_path(variant)
    model = effnet.build_keras(load_state_dict(pth), variant)
    model.save(out / "model.keras")
    model.export(str(out / "saved_model"), verbose=False)
    float_tflite = api.float_model_of(str(out / "saved_model"))
    (out / "float.tflite").write_bytes(float_tflite)
    # Port check: whole photos (centre square) must get plausible ImageNet classes.
    check = {}
    for photo, ok in PORT_CHECK.items():
        img = photo_images[photo]
        side = min(img.shape[:2])
        box = [{"photo": photo, "box": [(img.shape[1] - side) // 2, (img.shape[0] - side) // 2, side],
                "flip": False}]
        x = images.normalize(images.render(photo_images, box, (variant.size,) * 2), effnet.MEAN, effnet.STD)
        logits = model.predict(x, verbose=0)[0]
        top = [int(i) for i in logits.argsort()[::-1][:3]]
        check[photo] = {"top3": top, "ok": top[0] in ok}
    if not all(c["ok"] for c in check.values()):
        raise ValueError(f"{name}: the port predicts implausible classes: {check}")
    return {"source": f"{variant.package} ({Path(pth).name}), ported to Keras", "kind": "classifier",
            "mean": effnet.MEAN, "std": effnet.STD, "float_range": [-127 / 128, 128 / 128],
            "normalization_source": "TF EfficientNet-Lite preprocessing (pixel - 127) / 128",
            "port_check": check}


def _build_mediapipe(name: str, out: Path) -> dict:
    search = [Path(FLAGS.wheel_dir)] if FLAGS.wheel_dir else \
        [out.parent, Path.cwd() / "wheels", Path.cwd(), Path("/work/pkgs")]
    wheel = mp.find_wheel(search)
    meta = mp.extract(mp.MODELS[name], wheel, out / "float.tflite")
    meta["source"] = f"{wheel.name}:{mp.MODELS[name].member} (as shipped)"
    return meta


def build(cache: Path) -> None:
    from eq_tflite.errors import EqTfliteError
    unknown = [m for m in FLAGS.models if m not in ALL_MODELS]
    if unknown:
        raise EqTfliteError(f"unknown model {unknown[0]!r} (known: {', '.join(ALL_MODELS)})")
    cache.mkdir(parents=True, exist_ok=True)
    if not FLAGS.rebuild and all((cache / m / "meta.json").exists() for m in FLAGS.models):
        _log(f"{', '.join(FLAGS.models)}: already built, nothing to do")
        return
    all_photos, missing = images.photos()
    names = [p.name for p in all_photos]  # the general photos, split as for the classifiers
    if any(m in mp.MODELS for m in FLAGS.models):
        people, missing_people = images.people_photos()
        all_photos, missing = all_photos + people, missing + missing_people
    if missing:
        raise EqTfliteError("missing image sources: " + "; ".join(missing))
    people_names = {*images.PEOPLE_CALIBRATION, *images.PEOPLE_EVALUATION, "skimage/lfw_subset"}
    split = images.split_photos(names, FLAGS.calibration_photos, FLAGS.seed)
    t0 = time.perf_counter()
    photo_images = {p.name: images._shrink(p.load()) for p in all_photos}
    _log(f"{len(names)} photos loaded in {time.perf_counter() - t0:.1f}s; calibration: {split.calibration}")
    cal_boxes = images.crop_boxes(photo_images, split.calibration, FLAGS.num_calibration, FLAGS.seed)
    eval_boxes = images.crop_boxes(photo_images, split.evaluation, FLAGS.num_evaluation, FLAGS.seed + 1)
    manifest = {"seed": FLAGS.seed, "calibration_photos": split.calibration,
                "evaluation_photos": split.evaluation, "calibration_crops": cal_boxes,
                "evaluation_crops": eval_boxes, "models": {}}
    manifest_path = cache / "manifest.json"
    if manifest_path.exists():
        manifest["models"] = json.loads(manifest_path.read_text()).get("models", {})
    for name in FLAGS.models:
        out = cache / name
        if (out / "meta.json").exists() and not FLAGS.rebuild:
            _log(f"{name}: already built, skipped")
            continue
        t0 = time.perf_counter()
        tmp = cache / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            try:
                meta = _build_effnet(name, tmp, photo_images) if name in effnet.VARIANTS \
                    else _build_mediapipe(name, tmp)
            except (ImportError, OSError, ValueError) as err:  # missing package/wheel, bad weights
                from eq_tflite.errors import EqTfliteError, first_line
                raise EqTfliteError(f"{name}: {first_line(err)}") from None
            size = _input_size((tmp / "float.tflite").read_bytes())
            parts = (("calib", cal_boxes), ("eval", eval_boxes))
            if name in mp.MODELS:  # people models: mostly photos of people (images.people_boxes)
                parts = tuple((part, images.people_boxes(
                    photo_images, [n for n in getattr(split, side) if n not in people_names], side,
                    len(boxes), FLAGS.seed + 11 * (side == "evaluation")))
                    for (part, boxes), side in zip(parts, ("calibration", "evaluation")))
                meta["samples"] = {"people_share": images.PEOPLE_SHARE, "calibration_people": images.PEOPLE_CALIBRATION,
                                   "evaluation_people": images.PEOPLE_EVALUATION,
                                   "lfw_faces": {k: [v.start, v.stop] for k, v in images.LFW_FACES.items()}}
                meta["crops"] = {part: boxes for part, boxes in parts}
            for part, boxes in parts:
                x = images.normalize(images.render(photo_images, boxes, size), meta["mean"], meta["std"])
                images_path = tmp / f"{part}.npy"
                np_save(images_path, x)
            meta.update(name=name, input_size=list(size), num_calibration=len(cal_boxes),
                        num_evaluation=len(eval_boxes), build_seconds=round(time.perf_counter() - t0, 1))
            _write_json(tmp / "meta.json", meta)
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest["models"][name] = meta
        _write_json(manifest_path, manifest)
        _log(f"{name}: built in {meta['build_seconds']}s ({size[0]}x{size[1]}, "
             f"range {meta['float_range']}, {meta['normalization_source']})")
    _write_json(manifest_path, manifest)


def np_save(path: Path, x) -> None:
    import numpy as np
    np.save(path, x)


def main(argv: list[str]) -> int:
    del argv
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    build(cache)
    _log(f"suite in {cache} ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
