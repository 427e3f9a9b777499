"""Calibration data: .npy, .npz or an image directory (never random data).

Everything ends as {input tensor name: float32 array (N, *input_shape[1:])},
validated against the model: shape, dtype, NaN/Inf and emptiness each give one
clear error line.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.io.model import TfliteLike

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Samples drawn for the no-data fallback.


@dataclass(frozen=True)
class InputSpec:
    """One model input: tensor name, friendly (signature) name and shape with batch."""

    name: str
    alias: str
    shape: tuple[int, ...]
    #: the model's shape_signature: -1 marks a size the model leaves open (any size fits)
    signature: tuple[int, ...] | None = None

    @property
    def dynamic(self) -> bool:
        """True when a size beyond the batch is open (a fully convolutional model)."""
        return self.signature is not None and any(v < 0 for v in self.signature[1:])


def input_specs(graph: Any, signature_names: Mapping[int, str] | None = None) -> list[InputSpec]:
    """Input specs of a float ``Graph``; ``signature_names`` maps tensor index -> signature key."""
    names = signature_names or {}
    return [InputSpec(graph.tensors[i].name, names.get(i, graph.tensors[i].name), graph.tensors[i].shape,
                      graph.tensors[i].signature)
            for i in graph.inputs]


def load_calibration(source: str | os.PathLike | np.ndarray | Mapping[str, np.ndarray],
                     specs: Sequence[InputSpec], *, image_size: tuple[int, int] | None = None,
                     mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Loads and validates calibration data for ``specs`` (see module doc).

    ``source`` may be a path (.npy, .npz, image directory), an array (single
    input) or a mapping of input name -> array. There is no random-data
    fallback: a conversion without data is the data-free chain.
    """
    if source is None:
        raise EqTfliteError("no calibration data given")
    if isinstance(source, np.ndarray):
        arrays = _assign_single(source, specs, "calibration array")
    elif isinstance(source, Mapping):
        arrays = _assign_named(dict(source), specs, "calibration mapping")
    else:
        path = Path(source)
        if not path.exists():
            raise EqTfliteError(f"no such calibration data: {path}")
        if path.is_dir():
            arrays = _assign_single(_load_images(path, specs, image_size, mean, std), specs, str(path))
        elif path.suffix == ".npy":
            arrays = _assign_single(_load_npy(path), specs, str(path))
        elif path.suffix == ".npz":
            arrays = _assign_named(_load_npz(path), specs, str(path))
        else:
            raise EqTfliteError(f"unsupported calibration data {path}: give .npy, .npz or an image directory")
    return {spec.name: _validate(arrays[spec.name], spec) for spec in specs}


def take(data: Mapping[str, np.ndarray], start: int, stop: int | None) -> dict[str, np.ndarray]:
    """Samples [start:stop) of every input."""
    return {k: v[start:stop] for k, v in data.items()}


def num_samples(data: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(data.values())).shape[0])



def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False)
    except EqTfliteError:
        raise
    except Exception as err:  # numpy raises assorted errors on corrupt files
        raise EqTfliteError(f"cannot read {path} as .npy ({type(err).__name__}: {first_line(err, 120)})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of a .npz, each checked first; no pickles."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith(".npy")]
            for info in infos:
                with archive.open(info) as f:
                    _check_npy_header(f, info.file_size, f"{path} member {info.filename}")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except EqTfliteError:
        raise
    except Exception as err:  # zipfile, zlib and numpy raise assorted errors
        raise EqTfliteError(f"cannot read {path} as .npz ({type(err).__name__}: {first_line(err, 120)})") from None


def _check_npy_header(f: Any, size: int, what: str) -> None:
    """Refuses pickled (object) arrays and headers claiming more data than the file holds."""
    from numpy.lib import format as npy_format
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise EqTfliteError(f"cannot read {what}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise EqTfliteError(f"{what} holds Python objects (pickled data); give numeric arrays")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size:
        raise EqTfliteError(f"{what} claims shape {shape} ({need} bytes) but holds only {size} bytes "
                            "(truncated or corrupt)")


def _assign_single(array: np.ndarray, specs: Sequence[InputSpec], what: str) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        raise EqTfliteError(f"{what}: the model has {len(specs)} inputs "
                            f"({', '.join(s.alias for s in specs)}); give a .npz with one array per input")
    return {specs[0].name: array}


def _assign_named(arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], what: str) -> dict[str, np.ndarray]:
    if len(specs) == 1 and len(arrays) == 1:
        return {specs[0].name: next(iter(arrays.values()))}
    out = {}
    for spec in specs:
        for key in (spec.alias, spec.name):
            if key in arrays:
                out[spec.name] = arrays[key]
                break
        else:
            raise EqTfliteError(f"{what}: no array for input {spec.alias!r} "
                                f"(found {', '.join(sorted(arrays)) or 'nothing'})")
    return out


def _validate(array: Any, spec: InputSpec) -> np.ndarray:
    array = np.asarray(array)
    want = tuple(spec.shape[1:])
    if spec.dynamic and array.ndim == len(spec.shape):  # open sizes take the data's own
        want = tuple(int(a) if s < 0 else w for a, s, w in
                     zip(array.shape[1:], spec.signature[1:], want))
    if array.dtype.kind != "f":
        raise EqTfliteError(f"calibration data for {spec.alias!r} has dtype {array.dtype}, but the "
                            "model takes float32: preprocess it exactly as the model expects")
    if array.ndim != len(want) + 1 or (want and tuple(array.shape[1:]) != want):
        expected = want if not spec.dynamic else \
            tuple("?" if s < 0 else w for s, w in zip(spec.signature[1:], want))
        raise EqTfliteError(f"calibration data for {spec.alias!r} has shape {array.shape}, expected "
                            f"(N, {', '.join(map(str, expected))})")
    if array.shape[0] == 0:
        raise EqTfliteError(f"calibration data for {spec.alias!r} is empty (0 samples)")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise EqTfliteError(f"calibration data for {spec.alias!r} contains {bad} NaN/Inf values")
    with np.errstate(over="ignore"):
        array32 = np.ascontiguousarray(array, dtype=np.float32)
    beyond = int(np.count_nonzero(~np.isfinite(array32)))
    if beyond:
        raise EqTfliteError(f"calibration data for {spec.alias!r} has {beyond} values beyond float32's "
                            f"range (|x| > {np.finfo(np.float32).max:.4g})")
    return array32


def _load_images(folder: Path, specs: Sequence[InputSpec], image_size: tuple[int, int] | None,
                 mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    shape = specs[0].shape
    if len(shape) != 4:
        raise EqTfliteError(f"an image directory needs a model with one NHWC input, got shape {shape}")
    height, width = image_size or (shape[1], shape[2])
    if height <= 0 or width <= 0:
        raise EqTfliteError(f"image size must be positive, got {height}x{width}")
    channels = shape[3]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise EqTfliteError(f"--{name} needs 1 or {channels} values, got {len(values)}")
    if any(v == 0 for v in std):
        raise EqTfliteError("--std values must be non-zero")
    if channels not in (1, 3):
        raise EqTfliteError(f"image calibration needs 1 or 3 input channels, the model has {channels}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EqTfliteError(f"calibration directory {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        try:
            with warnings.catch_warnings():
                # Pillow only warns between its pixel limit and twice that: refuse those too.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    im = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    images.append(np.asarray(im, np.float32).reshape(height, width, channels))
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise EqTfliteError(f"cannot decode image {f} ({type(err).__name__}: "
                                f"{first_line(err, 120)})") from None
        except Exception as err:  # decoders raise OSError, ValueError, SyntaxError, ...
            raise EqTfliteError(f"cannot decode image {f} ({type(err).__name__})") from None
    x = np.stack(images) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def load_data_for(float_src: str | None, data_path: str | None,
                  model: TfliteLike | None = None) -> tuple[bytes | None, dict | None]:
    """Float model bytes and validated samples for ``verify`` / tools (either may be None).

    Without a float model the samples are checked against ``model``'s own inputs
    (its bytes, or its handle: not parsed again).
    """
    from eq_tflite.graph import Graph
    from eq_tflite.io.sources import float_model_of, signature_input_names
    if float_src is None:
        if data_path is None:
            return None, None
        if model is None:
            raise EqTfliteError("--data needs --float_model (to know the inputs)")
        return None, load_calibration(data_path, input_specs(Graph.from_tflite(model)))
    float_model = float_model_of(float_src)
    if data_path is None:
        return float_model, None
    graph = Graph.from_tflite(float_model)
    return float_model, load_calibration(data_path, input_specs(graph, signature_input_names(float_model)))
