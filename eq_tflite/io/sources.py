"""Loads the user's model (SavedModel, Keras .keras/.h5, float .tflite) as a float .tflite."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eq_tflite.errors import EqTfliteError, first_line
from eq_tflite.io import flatbuffer as fb
from eq_tflite.quiet import quiet

#: Tensor types that mean "already quantized" in a .tflite given as the source.
_QUANTIZED_WEIGHT_TYPES = {"INT8", "UINT8", "INT4"}


def load_float_model(src: str | os.PathLike) -> bytes:
    """Returns float .tflite bytes for ``src``; EqTfliteError with one clear line otherwise."""
    path = Path(src)
    if not path.exists():
        raise EqTfliteError(f"no such model: {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise EqTfliteError(f"{path} is a directory without saved_model.pb (not a SavedModel)")
        return _convert(lambda tf: tf.lite.TFLiteConverter.from_saved_model(str(path)), path)
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return _convert(lambda tf: tf.lite.TFLiteConverter.from_keras_model(_load_keras(path)), path)
    if suffix == ".tflite":
        data = fb.read_file(path)
        _check_float_tflite(data, path)
        return data
    raise EqTfliteError(f"unsupported model {path}: give a SavedModel directory, a .keras/.h5 file "
                        "or a float .tflite")


def _load_keras(path: Path):
    import keras
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as err:
        raise EqTfliteError(f"cannot load Keras model {path}: {first_line(err)}") from None


def _convert(make_converter, path: Path) -> bytes:
    import tensorflow as tf
    try:
        converter = make_converter(tf)
        return bytes(converter.convert())
    except EqTfliteError:
        raise
    except Exception as err:
        raise EqTfliteError(f"cannot convert {path} to TFLite: {first_line(err)}") from None


def _check_float_tflite(data: bytes, path: Path) -> None:
    model = fb.parse_model(data, str(path))
    sg = model.subgraphs[0]
    for op in sg.operators:
        if fb.op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = sg.tensors[op.inputs[1]]
            if fb.type_name(w.type) in _QUANTIZED_WEIGHT_TYPES:
                raise EqTfliteError(f"{path} is already quantized; give the float model "
                                    "(SavedModel, Keras or float .tflite)")



#: A model as the API takes it: path, float .tflite bytes, or an in-memory Keras model.
ModelLike = Any


def float_model_of(model: ModelLike) -> bytes:
    """Float .tflite bytes of a path, float .tflite bytes, or an in-memory Keras model."""
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
        fb.parse_model(data, "the given model bytes")
        return data
    if isinstance(model, (str, os.PathLike)):
        with quiet():
            return load_float_model(model)
    import tensorflow as tf
    try:
        with quiet():
            return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    except Exception as err:
        raise EqTfliteError(f"cannot convert the given model to TFLite: {err}") from None


def signature_input_names(float_model: bytes) -> dict[int, str]:
    """Tensor index -> signature input name of the first signature."""
    model = fb.parse_model(float_model)
    if not model.signatureDefs:
        return {}
    return {int(m.tensorIndex): fb.text(m.name) for m in model.signatureDefs[0].inputs}
