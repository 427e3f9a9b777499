"""Stage 2 (convert): TFLite's own int8 model of a float .tflite, made by TFLite's quantizer.

Two ways in, one quantizer:

* :func:`calibrated`: exactly what ``TFLiteConverter`` does with a
  representative dataset (TFLite's calibrator records every tensor's min/max,
  then the MLIR quantizer), but started from a float .tflite so every source
  format takes the same path;
* :func:`from_ranges` (the data-free path): the plan's ranges are written as
  those min/max, so the quantizer builds the same int8 structure with no
  sample ever run.

The float model is checked and re-encoded by the FlatBuffer builder first, and
TensorFlow's calibrator and quantizer always run in a child process
(:func:`eq_tflite.isolation.run_isolated`): they trust the model, and a crash
there becomes an EqTfliteError instead of killing the caller. Both return the
int8 model as a :class:`~eq_tflite.io.model.TfliteModel`, parsed and checked
once, which the rewriter then edits.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from eq_tflite.errors import EqTfliteError, UnsupportedOpsError, first_line
from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb
from eq_tflite.io.model import TfliteLike, TfliteModel
from eq_tflite.isolation import run_isolated, worker_active
from eq_tflite.op_table import ISLANDS


def calibrated(float_model: bytes, calibration: Mapping[str, np.ndarray], input_names: Sequence[str],
               *, allow_float: bool = False, int8_io: bool = False) -> TfliteModel:
    """TFLite's int8 model calibrated on ``calibration``.

    ``allow_float`` keeps ops without int8 kernels in float (with
    QUANTIZE/DEQUANTIZE around them) instead of failing. ``int8_io`` makes the
    model's inputs and outputs int8 instead of float32.
    """
    canonical = fb.canonical_bytes(float_model, "the float model")
    if not worker_active():  # else the stage worker imports it (never this process)
        import tensorflow  # noqa: F401 - imported once here, inherited by the forked child
    model = run_isolated(_calibrate_and_quantize, canonical, dict(calibration), list(input_names),
                         int8_io, what="TFLite's int8 conversion")
    return _int8_model(model, allow_float)


def from_ranges(float_model: bytes, graph: Graph, ranges: Mapping[str, tuple[float, float]],
                *, allow_float: bool = False, int8_io: bool = False) -> TfliteModel:
    """The int8 model TFLite's quantizer makes when tensors carry ``ranges`` as min/max."""
    model = fb.parse_model(float_model)
    sg = model.subgraphs[0]
    missing = []
    for i in graph.activation_tensors():
        name = graph.tensors[i].name
        if name not in ranges:
            missing.append(name)
            continue
        lo, hi = ranges[name]
        q = fb.schema.QuantizationParametersT()
        q.min, q.max = [min(float(lo), 0.0)], [max(float(hi), 0.0)]
        sg.tensors[i].quantization = q
    if missing:
        raise EqTfliteError(f"the data-free plan has no range for {len(missing)} tensors "
                            f"(first: {missing[0]})")
    if not worker_active():  # else the stage worker imports it (never this process)
        import tensorflow  # noqa: F401 - imported once here, inherited by the forked child
    out = run_isolated(_quantize, fb.serialize_model(model), int8_io,
                       what="TFLite's int8 quantization")
    return _int8_model(out, allow_float)


def _int8_model(data: bytes, allow_float: bool) -> TfliteModel:
    """The quantizer's output as a handle; UnsupportedOpsError for ops it left in float."""
    model = TfliteModel(data, "TFLite's int8 model")
    float_ops = [op for op in float_ops_left(model) if op not in ISLANDS]
    if float_ops and not allow_float:  # ISLANDS stay float as in TFLite's own conversion
        raise UnsupportedOpsError(float_ops)
    return model


def _calibrate_and_quantize(float_model: bytes, calibration: Mapping[str, np.ndarray],
                            input_names: Sequence[str], int8_io: bool) -> bytes:
    from tensorflow.lite.python.optimize import calibrator

    n = int(next(iter(calibration.values())).shape[0])

    def samples():
        for i in range(n):
            yield [calibration[name][i:i + 1] for name in input_names]

    try:
        with_intermediates = calibrator.add_intermediate_tensors(float_model)
        calibrated = calibrator.Calibrator(with_intermediates).calibrate(samples)
    except Exception as err:
        raise EqTfliteError(f"TFLite calibration failed: {first_line(err)}") from None
    _check_ranges_finite(calibrated)
    return _quantize(calibrated, int8_io)


def _quantize(model_with_ranges: bytes, int8_io: bool) -> bytes:
    """TFLite's MLIR quantizer on a float model whose tensors carry min/max."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    try:
        # fully_quantize=True is what makes the MLIR quantizer emit int8 model
        # inputs/outputs; with float I/O it adds QUANTIZE/DEQUANTIZE at the edges
        # (identical to TFLiteConverter with a representative dataset).
        return bytes(tfl_convert.mlir_quantize(
            model_with_ranges, fully_quantize=int8_io,
            input_data_type=tf.int8 if int8_io else tf.float32,
            output_data_type=tf.int8 if int8_io else tf.float32))
    except Exception as err:
        raise EqTfliteError(f"TFLite int8 quantization failed: {first_line(err)}") from None


#: A calibrated bound this large means float32 arithmetic is about to overflow.
_OVERFLOW = 1e30


def _check_ranges_finite(calibrated: bytes) -> None:
    """Blames the data, not the ops, when calibration drove tensors to Inf/NaN.

    TFLite's calibrator then records Inf/NaN or huge bounds, and none at all
    for tensors that only saw Inf; the quantizer leaves those ops in float,
    which would otherwise read as "cannot quantize these ops".
    """
    model = fb.parse_model(calibrated, "the calibrated model")
    for t in model.subgraphs[0].tensors:
        q = t.quantization
        bounds = [np.asarray(v, np.float64) for v in ((q.min, q.max) if q is not None else ())
                  if v is not None and len(v)]
        if any(not np.all(np.isfinite(b)) or np.any(np.abs(b) > _OVERFLOW) for b in bounds):
            raise EqTfliteError(f"the calibration data drives the float model to Inf/NaN or near "
                                f"float32's limit (tensor {fb.tensor_name(t)!r}): check the data's "
                                "scale and preprocessing")


def float_ops_left(model: TfliteLike) -> list[str]:
    """Names of ops that the quantizer left in float (QUANTIZE/DEQUANTIZE excluded)."""
    model = TfliteModel.of(model).model
    sg = model.subgraphs[0]
    names = []
    for op in sg.operators:
        name = fb.op_name(model, op)
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [sg.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
        if any(fb.type_name(t.type) == "FLOAT32" and fb.buffer_array(model, t) is None for t in tensors):
            names.append(name)
    return names
