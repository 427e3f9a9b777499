"""Natural photos from installed packages, split by photo into calibration and evaluation crops.

Sources (nothing is downloaded):

* scikit-image's bundled sample photos (colour photos, plus ``camera`` as grey);
* scikit-learn's ``load_sample_images`` (``china``, ``flower``);
* Debian's ``mate-backgrounds`` nature photos (``/usr/share/backgrounds/mate/nature``).
  The other backgrounds under ``/usr/share/backgrounds`` (all of gnome-backgrounds,
  mate's ``abstract`` and ``desktop``) are renderings, paintings or logos, not
  photos, and are skipped.

Calibration and evaluation samples come from *different* photos (a seeded
split of the photo list), so a method cannot score itself on the images it was
calibrated on. Each sample is a seeded random square crop (side 35-100% of the
photo's short side), randomly flipped left-right, resized to the model's input
size; the same crop boxes are used for every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: Longest side kept in memory (crops are at most a few hundred pixels).
MAX_SIDE = 1024
DEBIAN_PHOTOS = Path("/usr/share/backgrounds/mate/nature")
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "camera"]


@dataclass
class Photo:
    name: str
    load: Callable[[], np.ndarray]  # HxWx3 uint8


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def _load_file(p: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    from PIL import Image
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def _shrink(img: np.ndarray) -> np.ndarray:
    from PIL import Image
    h, w = img.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return img
    s = MAX_SIDE / max(h, w)
    return np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.BILINEAR))


def photos() -> tuple[list[Photo], list[str]]:
    """Every available photo, and the pip/apt lines for the sources that are missing."""
    found: list[Photo] = []
    missing: list[str] = []
    try:
        import skimage.data as skd
        for n in SKIMAGE_PHOTOS:
            # stereo_motorcycle returns (left, right, disparity): the left view only
            load = (lambda: _rgb(skd.stereo_motorcycle()[0])) if n == "stereo_motorcycle" \
                else (lambda n=n: _rgb(getattr(skd, n)()))
            found.append(Photo(f"skimage/{n}", load))
    except ImportError:
        missing.append("pip install scikit-image")
    try:
        from sklearn.datasets import load_sample_images
        for n in ("china", "flower"):
            found.append(Photo(f"sklearn/{n}", lambda n=n: _rgb(
                load_sample_images().images[["china", "flower"].index(n)])))
    except ImportError:
        missing.append("pip install scikit-learn")
    debian = sorted(DEBIAN_PHOTOS.glob("*.jpg"))
    if not debian:
        missing.append("apt-get install mate-backgrounds")

    for p in debian:
        found.append(Photo(f"mate-backgrounds/{p.stem}", lambda p=p: _load_file(p)))
    return found, missing


@dataclass
class Split:
    calibration: list[str]
    evaluation: list[str]


def split_photos(names: list[str], n_calibration_photos: int, seed: int) -> Split:
    """Seeded split of the photo names; the two sides share no photo."""
    order = np.random.default_rng(seed).permutation(len(names))
    cal = sorted(names[i] for i in order[:n_calibration_photos])
    return Split(cal, sorted(n for n in names if n not in cal))


def crop_boxes(images: dict[str, np.ndarray], names: list[str], count: int, seed: int) -> list[dict]:
    """``count`` seeded crops spread evenly over ``names``: photo, box (x, y, side), flip."""
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(count):
        name = names[i % len(names)]
        h, w = images[name].shape[:2]
        side = int(round(min(h, w) * rng.uniform(0.35, 1.0)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        boxes.append({"photo": name, "box": [x, y, side], "flip": bool(rng.random() < 0.5)})
    return boxes


def render(images: dict[str, np.ndarray], boxes: list[dict], size: tuple[int, int]) -> np.ndarray:
    """The crops as uint8 NxHxWx3 at ``size`` (H, W)."""
    from PIL import Image
    out = np.empty((len(boxes), size[0], size[1], 3), np.uint8)
    for i, b in enumerate(boxes):
        x, y, s = b["box"]
        im = Image.fromarray(images[b["photo"]][y:y + s, x:x + s]).resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im)
        if "face" in b:
            a = _paste_face(a, images["skimage/lfw_subset"], b["face"])
        out[i] = a[:, ::-1] if b["flip"] else a
    return out


def normalize(pixels: np.ndarray, mean: float | list, std: float | list) -> np.ndarray:
    """float32 ``(pixels / 255 - mean) / std``."""
    x = pixels.astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


# --- People: what MediaPipe's face, selfie, palm and hand models are made for -------------------
#
# On the general photos (landscapes, a cat, a rocket) these models see no face, person or hand, so
# their outputs sit near "nothing here" and output cosine/IoU mostly measure noise around it. Their
# samples therefore come three quarters from photos of people, split by photo like the rest:
#
# * calibration: OpenCV's sample photos ``messi5`` and ``basketball1`` (Debian ``opencv-doc``),
#   LFW faces 0-49;
# * evaluation: scikit-image's ``astronaut`` and ``camera``, OpenCV's ``basketball2``, LFW faces 50-99.
#
# The LFW faces (scikit-image's ``lfw_subset``, 25x25 grey, tightly cropped) are pasted at 35-80% of
# the sample's side onto a crop of a general photo from the same side of the split, so a face
# detector sees a face at selfie distance with a background, as in use.
OPENCV_PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
PEOPLE_CALIBRATION = ["opencv/messi5.jpg", "opencv/basketball1.png"]
PEOPLE_EVALUATION = ["skimage/astronaut", "skimage/camera", "opencv/basketball2.png"]
LFW_FACES = {"calibration": range(0, 50), "evaluation": range(50, 100)}
PEOPLE_SHARE = 0.75


def people_photos() -> tuple[list[Photo], list[str]]:
    """The photos of people (and the LFW face sheet), and the install lines for missing sources."""
    found: list[Photo] = []
    missing: list[str] = []

    for name in (*PEOPLE_CALIBRATION, *PEOPLE_EVALUATION):
        if name.startswith("opencv/"):
            p = OPENCV_PHOTOS / name.split("/", 1)[1]
            if not p.exists():
                if "apt-get install opencv-doc" not in missing:
                    missing.append("apt-get install opencv-doc")
                continue
            found.append(Photo(name, lambda p=p: _load_file(p)))
    try:
        import skimage.data as skd
        # the 100 faces as a 10x10 sheet of 25x25 tiles (face i at row i // 10, column i % 10)
        found.append(Photo("skimage/lfw_subset", lambda: _rgb((skd.lfw_subset()[:100].reshape(10, 10, 25, 25)
                                                                .transpose(0, 2, 1, 3).reshape(250, 250)
                                                                * 255).round().astype(np.uint8))))
    except ImportError:
        missing.append("pip install scikit-image")
    return found, missing


def people_boxes(images: dict[str, np.ndarray], general: list[str], side: str, count: int,
                 seed: int) -> list[dict]:
    """``count`` seeded samples for a people model: 3/4 people (photo crops or a pasted LFW face), 1/4 general."""
    rng = np.random.default_rng(seed)
    photos = PEOPLE_CALIBRATION if side == "calibration" else PEOPLE_EVALUATION
    faces = list(LFW_FACES[side])
    n_people = int(round(count * PEOPLE_SHARE))
    boxes = crop_boxes(images, general, count, seed + 7)  # backgrounds and the general share
    for i in range(n_people):
        k = i % (len(photos) + 1)
        if k < len(photos):
            boxes[i] = crop_boxes(images, [photos[k]], 1, int(rng.integers(1 << 31)))[0]
        else:
            boxes[i]["face"] = {"index": faces[int(rng.integers(len(faces)))],
                                "scale": float(rng.uniform(0.35, 0.8)),
                                "at": [float(rng.random()), float(rng.random())]}
    order = rng.permutation(count)
    return [boxes[j] for j in order]


def _paste_face(a: np.ndarray, sheet: np.ndarray, face: dict) -> np.ndarray:
    from PIL import Image
    h, w = a.shape[:2]
    s = max(1, int(round(min(h, w) * face["scale"])))
    i = face["index"]
    r, c = divmod(i, 10)
    f = np.asarray(Image.fromarray(sheet[r * 25:(r + 1) * 25, c * 25:(c + 1) * 25]).resize((s, s), Image.BILINEAR))
    y, x = int(face["at"][1] * (h - s)), int(face["at"][0] * (w - s))
    a = a.copy()
    a[y:y + s, x:x + s] = f
    return a
