"""Google's MediaPipe float models, copied as shipped from the ``mediapipe==0.10.14`` wheel.

The wheel is read as a zip (mediapipe need not be importable). Each model's
input normalization is read from the wheel's MediaPipe graph (``.binarypb``)
when the graph states it: the ``ImageToTensorCalculator`` options carry
``output_tensor_width/height`` and ``output_tensor_float_range {min max}``.
Only ``selfie_segmentation_cpu.binarypb`` does; the face, palm and hand
graphs that set these options are subgraphs compiled into the wheel's
binary, so for those the values of MediaPipe's published graph text are
used, and the manifest says which source each value came from.
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL_GLOB = "mediapipe-0.10.14-*.whl"


@dataclass(frozen=True)
class MediaPipeModel:
    name: str
    member: str                # .tflite path inside the wheel
    graph: str | None          # .binarypb that configures its ImageToTensorCalculator, if shipped
    float_range: tuple[float, float]  # used when the graph is not shipped / says nothing
    kind: str                  # detector | segmentation | landmarks


MODELS = {
    "face_detection_short_range": MediaPipeModel(
        "face_detection_short_range", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        None, (-1.0, 1.0), "detector"),
    "selfie_segmentation": MediaPipeModel(
        "selfie_segmentation", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "mediapipe/modules/selfie_segmentation/selfie_segmentation_cpu.binarypb", (0.0, 1.0), "segmentation"),
    "palm_detection_lite": MediaPipeModel(
        "palm_detection_lite", "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
        None, (0.0, 1.0), "detector"),
    "hand_landmark_lite": MediaPipeModel(
        "hand_landmark_lite", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
        None, (0.0, 1.0), "landmarks"),
}


def find_wheel(search: list[Path]) -> Path:
    """The mediapipe 0.10.14 wheel in one of ``search`` (one-line error with the pip line if absent)."""
    for d in search:
        hits = sorted(Path(d).glob(WHEEL_GLOB)) if Path(d).is_dir() else []
        if hits:
            return hits[-1]
    raise FileNotFoundError("no mediapipe-0.10.14 wheel found in "
                            f"{', '.join(map(str, search))}: pip download mediapipe==0.10.14 --no-deps -d <dir> "
                            "and pass --wheel_dir <dir>")


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return result, i


def _fields(b: bytes) -> list[tuple[int, int, object]] | None:
    """(field, wire type, value) of one protobuf message, or None if ``b`` does not parse as one."""
    out, i = [], 0
    try:
        while i < len(b):
            key, i = _varint(b, i)
            field, wire = key >> 3, key & 7
            if field == 0:
                return None
            if wire == 0:
                v, i = _varint(b, i)
            elif wire == 1:
                v, i = b[i:i + 8], i + 8
            elif wire == 5:
                v, i = struct.unpack("<f", b[i:i + 4])[0], i + 4
            elif wire == 2:
                n, i = _varint(b, i)
                v, i = b[i:i + n], i + n
            else:
                return None
            out.append((field, wire, v))
        return out if i == len(b) else None
    except (IndexError, struct.error):
        return None


def image_to_tensor_options(graph: bytes) -> list[dict]:
    """Every ImageToTensorCalculatorOptions found in a graph: width, height, float range.

    The options message is recognised by shape, not by extension number:
    fields 1 and 2 varints (width, height) and field 4 a message of two floats.
    """
    found: list[dict] = []

    def visit(b: bytes, depth: int) -> None:
        fields = _fields(b)
        if fields is None or depth > 12:
            return
        by = {f: v for f, w, v in fields}
        rng = _fields(by[4]) if isinstance(by.get(4), bytes) else None
        if isinstance(by.get(1), int) and isinstance(by.get(2), int) and rng \
                and [f for f, _, _ in rng] == [1, 2] and all(w == 5 for _, w, _ in rng):
            found.append({"width": by[1], "height": by[2], "float_range": [rng[0][2], rng[1][2]]})
            return
        for _, w, v in fields:
            if w == 2 and v:
                visit(v, depth + 1)

    visit(graph, 0)
    return found


def extract(model: MediaPipeModel, wheel: Path, dest: Path) -> dict:
    """Copies the model's .tflite out of the wheel to ``dest``; returns its normalization record."""
    with zipfile.ZipFile(wheel) as z:
        dest.write_bytes(z.read(model.member))
        options = image_to_tensor_options(z.read(model.graph)) if model.graph else []
    lo, hi = model.float_range
    source = "MediaPipe's published graph (this graph is compiled into the wheel's binary)"
    if options:
        # selfie_segmentation's graph has two: general (256x256) and landscape (256x144); ours is the first.
        lo, hi = options[0]["float_range"]
        source = f"{model.graph} (ImageToTensorCalculator output_tensor_float_range)"
    # x = pixels/255 * (hi - lo) + lo  ==  (pixels/255 - mean) / std
    std = 1.0 / (hi - lo)
    return {"float_range": [lo, hi], "mean": -lo * std, "std": std, "normalization_source": source,
            "kind": model.kind, "wheel_member": model.member}
