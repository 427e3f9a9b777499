"""The Python API: the whole pipeline as one call.

load (SavedModel / Keras / float .tflite -> float .tflite)
  -> convert (TFLite's own int8 model, calibrated on the same samples)
  -> collect + optimize (a method makes a Plan from the float graph)
  -> rewrite (the Plan is written onto TFLite's int8 model)
  -> verify (spec invariants, LiteRT run, agreement with float).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


from eq_tflite import methods
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.io import calibration as calib
from eq_tflite.io import flatbuffer as fb
from eq_tflite.io.sources import load_float_model
from eq_tflite.io.tflite_int8 import tflite_int8
from eq_tflite.plan import MethodContext, Plan
from eq_tflite.quiet import quiet
from eq_tflite.rewrite.rewriter import RewriteLog, apply_plan
from eq_tflite.verify import VerifyReport, verify

DEFAULT_METHOD = "easyquant"
#: Default number of calibration samples per method (EasyQuant: the paper's 50).
DEFAULT_SAMPLES = {"easyquant": 50}
#: Samples kept back (beyond the calibration ones) for the agreement check.
MAX_HOLDOUT = 256

ModelLike = Any  # str | os.PathLike | bytes (float .tflite) | keras.Model


@dataclass
class Conversion:
    """Everything one conversion produced (``model`` is the file to ship)."""

    model: bytes
    tflite_int8: bytes
    float_model: bytes
    plan: Plan
    rewrite_log: RewriteLog
    report: VerifyReport
    num_calibration: int
    holdout_is_calibration: bool
    timings: dict[str, float] = field(default_factory=dict)


def resolve_bits(bits: int = 7, weight_bits: int | None = None,
                 activation_bits: int | None = None) -> BitWidths:
    """``bits`` sets both widths; the other two override one each (2..8)."""
    try:
        return BitWidths(weight_bits if weight_bits is not None else bits,
                         activation_bits if activation_bits is not None else bits)
    except ValueError as err:
        raise EqTfliteError(str(err)) from None


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


def convert_model(model: ModelLike, calibration_data: Any = None, *, bits: int = 7,
                  weight_bits: int | None = None, activation_bits: int | None = None,
                  method: str = DEFAULT_METHOD, method_options: Mapping[str, Any] | None = None,
                  num_calibration_samples: int | None = None, allow_float: bool = False,
                  int8_io: bool = False, image_size: tuple[int, int] | None = None,
                  mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                  progress: bool = False, seed: int = 0) -> Conversion:
    """Runs the whole pipeline and returns every artifact (see :class:`Conversion`)."""
    widths = resolve_bits(bits, weight_bits, activation_bits)
    method_fn = _get_method(method)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    float_model = float_model_of(model)
    graph = Graph.from_tflite(float_model)
    timings["load"] = time.perf_counter() - t0

    specs = calib.input_specs(graph, signature_input_names(float_model))
    data = calib.load_calibration(calibration_data, specs, image_size=image_size, mean=mean,
                                  std=std, seed=seed)
    total = calib.num_samples(data)
    n = num_calibration_samples or DEFAULT_SAMPLES.get(method, total)
    if n <= 0:
        raise EqTfliteError(f"num_calibration_samples must be positive, got {n}")
    n = min(n, total)
    cal = calib.take(data, 0, n)
    holdout_is_cal = n >= total
    holdout = cal if holdout_is_cal else calib.take(data, n, n + MAX_HOLDOUT)

    t0 = time.perf_counter()
    with quiet():
        int8_model = tflite_int8(float_model, cal, [s.name for s in specs],
                                 allow_float=allow_float, int8_io=int8_io)
    timings["tflite_int8"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ctx = MethodContext(graph, float_model, cal, widths, dict(method_options or {}, seed=seed),
                        progress=progress)
    plan = method_fn(ctx)
    timings["method"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out, log = apply_plan(int8_model, graph, plan, float_model)
    timings["rewrite"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = verify(out, float_model=float_model, samples=holdout, bits=widths)
    timings["verify"] = time.perf_counter() - t0
    if not report.ok:
        raise EqTfliteError("the rewritten model failed verification:\n" + report.summary())
    return Conversion(out, int8_model, float_model, plan, log, report, n, holdout_is_cal, timings)


def quantize(model_or_path: ModelLike, calibration_data: Any = None, *, bits: int = 7,
             method: str = DEFAULT_METHOD, **kwargs: Any) -> bytes:
    """Quantizes a model to a fully-integer .tflite with b-bit values; returns its bytes.

    Args:
      model_or_path: SavedModel directory, ``.keras``/``.h5`` file, float
        ``.tflite`` path or bytes, or an in-memory Keras model.
      calibration_data: ``.npy``/``.npz`` path, image directory, an array
        (single input), a mapping input name -> array, or None (random data,
        with a loud warning).
      bits: weight and activation bit width (2..8); ``weight_bits`` /
        ``activation_bits`` keyword arguments override each.
      method: scale method, one of ``eq_tflite.methods.available()``.
      **kwargs: any other :func:`convert_model` argument.

    Raises:
      EqTfliteError: with a one-line reason, for bad models, data or options.
    """
    return convert_model(model_or_path, calibration_data, bits=bits, method=method, **kwargs).model


def load_data_for(float_src: str | None, data_path: str | None) -> tuple[bytes | None, dict | None]:
    """Float model bytes and validated samples for ``verify`` / tools (either may be None)."""
    if float_src is None:
        if data_path is not None:
            raise EqTfliteError("--data needs --float_model (to know the inputs)")
        return None, None
    float_model = float_model_of(float_src)
    if data_path is None:
        return float_model, None
    graph = Graph.from_tflite(float_model)
    specs = calib.input_specs(graph, signature_input_names(float_model))
    return float_model, calib.load_calibration(data_path, specs)


def _get_method(name: str):
    try:
        return methods.get(name)
    except ValueError as err:
        raise EqTfliteError(str(err)) from None
