"""Loads the user's model (SavedModel, Keras .keras/.h5, float .tflite) as a float .tflite."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.io import codec as fb
from eq_tflite.io.file_safety import read_file
from eq_tflite.io.model import TfliteLike, TfliteModel
from eq_tflite.io.normalize import normalize_float_tflite
from eq_tflite.isolation import run_isolated
from eq_tflite.quiet import quiet

#: Tensor types that mean "already quantized" in a .tflite given as the source.
_QUANTIZED_WEIGHT_TYPES = {"INT8", "UINT8", "INT4"}


def load_float_model(src: str | os.PathLike, notes: list[str] | None = None) -> bytes:
    """Returns float .tflite bytes for ``src``; EqTfliteError with one clear line otherwise.

    A .tflite source is checked (``fb.parse_model``), normalized as shipped
    (``io.normalize``: float16 and sparse constants expanded, old operator
    codes filled in, known custom ops lowered; what changed is appended to
    ``notes``) and returned re-encoded by the FlatBuffer builder, so later
    native code never sees the file's own offsets. SavedModel and Keras
    sources are converted by TensorFlow in a child process (``run_isolated``)
    when TensorFlow is not yet loaded here (the CLI): a file that crashes
    TensorFlow then gives an error line.
    """
    path = Path(src)
    kind = source_kind(src)
    if kind in ("saved_model", "keras"):
        return _convert_isolated(kind, path)
    data, done = normalize_float_tflite(read_file(path, "model"), str(path))
    _check_float_tflite(data, path)
    if notes is not None and done.changed():
        notes.append(f"as shipped: {done.summary()}")
    return data


def source_kind(src: str | os.PathLike) -> str:
    """"saved_model", "keras" or "tflite" for a model path (nothing is read); EqTfliteError else."""
    if str(src) == "":
        raise EqTfliteError("empty model path")
    path = Path(src)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as err:
        raise EqTfliteError(f"cannot read model {str(path)[:120]}: {err.strerror}") from None
    if not exists:
        raise EqTfliteError(f"no such model: {path}")
    if is_dir:
        if not (path / "saved_model.pb").is_file():
            raise EqTfliteError(f"{path} is a directory without saved_model.pb (not a SavedModel)")
        return "saved_model"
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise EqTfliteError(f"unsupported model {path}: give a SavedModel directory, a .keras/.h5 file "
                        "or a float .tflite")


def _convert_isolated(kind: str, path: Path) -> bytes:
    if "tensorflow" in sys.modules:
        # TensorFlow already runs in this process (an API caller, a test): a forked
        # child can deadlock on the parent's TF thread pools, so convert here.
        return _convert(kind, path)
    data = run_isolated(_convert, kind, path, what=f"TensorFlow's conversion of {path}")
    fb.parse_model(data, f"the conversion of {path}")
    return data


def _load_keras(path: Path):
    import keras
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as err:
        raise EqTfliteError(f"cannot load Keras model {path}: {first_line(err)}") from None


def _convert(kind: str, path: Path) -> bytes:
    import tensorflow as tf
    try:
        if kind == "saved_model":
            converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(_load_keras(path))
        return bytes(converter.convert())
    except EqTfliteError:
        raise
    except Exception as err:
        raise EqTfliteError(f"cannot convert {path} to TFLite: {first_line(err)}") from None


def _check_float_tflite(data: bytes, path: Path) -> None:
    model = fb.parse_model(data, str(path))
    sg = model.subgraphs[0]
    # eq-tflite matches TFLite's int8 model to the float one by tensor name.
    names = [fb.tensor_name(t) for t in sg.tensors or []]
    if "" in names:
        raise EqTfliteError(f"{path}: tensor {names.index('')} has no name; eq-tflite matches "
                            "tensors by name")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EqTfliteError(f"{path}: several tensors are named {dup[:60]!r}; eq-tflite matches "
                            "tensors by name")
    for op in sg.operators or []:
        if fb.op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = sg.tensors[op.inputs[1]]
            if fb.type_name(w.type) in _QUANTIZED_WEIGHT_TYPES:
                raise EqTfliteError(f"{path} is already quantized; give the float model "
                                    "(SavedModel, Keras or float .tflite)")



#: A model as the API takes it: path, float .tflite bytes, or an in-memory Keras model.
ModelLike = Any


def float_model_of(model: ModelLike, notes: list[str] | None = None) -> bytes:
    """Float .tflite bytes of a path, float .tflite bytes, or an in-memory Keras model.

    .tflite paths and bytes are normalized as shipped (``io.normalize``); a
    line saying what changed is appended to ``notes``.
    """
    if isinstance(model, (bytes, bytearray)):
        data, done = normalize_float_tflite(bytes(model), "the given model bytes")
        if not done.changed():
            return bytes(model)
        if notes is not None:
            notes.append(f"as shipped: {done.summary()}")
        return data
    if isinstance(model, (str, os.PathLike)):
        with quiet():
            return load_float_model(model, notes)
    import tensorflow as tf
    try:
        with quiet():
            return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    except Exception as err:
        raise EqTfliteError(f"cannot convert the given model to TFLite: {err}") from None


def signature_output_names(float_model: TfliteLike) -> dict[int, str]:
    """Tensor index -> signature output name of the first signature."""
    model = TfliteModel.of(float_model).model
    if not model.signatureDefs:
        return {}
    return {int(m.tensorIndex): fb.text(m.name) for m in model.signatureDefs[0].outputs}


def signature_input_names(float_model: TfliteLike) -> dict[int, str]:
    """Tensor index -> signature input name of the first signature."""
    model = TfliteModel.of(float_model).model
    if not model.signatureDefs:
        return {}
    return {int(m.tensorIndex): fb.text(m.name) for m in model.signatureDefs[0].inputs}
