"""The Python API: the whole pipeline as one call.

load (SavedModel / Keras / float .tflite -> float .tflite)
  -> convert (TFLite's own int8 model, calibrated on the same samples)
  -> collect + optimize (a method makes a Plan from the float graph)
  -> rewrite (the Plan is written onto TFLite's int8 model)
  -> verify (spec invariants, LiteRT run, agreement with float).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


from eq_tflite import methods
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.io import calibration as calib
from eq_tflite.io import flatbuffer as fb
from eq_tflite.io.calibration import load_data_for  # noqa: F401  (re-exported)
from eq_tflite.io.sources import ModelLike, float_model_of, signature_input_names
from eq_tflite.io.tflite_int8 import tflite_int8
from eq_tflite.plan import MethodContext, Plan
from eq_tflite.quiet import quiet
from eq_tflite.rewrite.rewriter import RewriteLog, apply_plan, pack_int4_weights
from eq_tflite.verify import VerifyReport, verify

DEFAULT_METHOD = "easyquant"
#: Default number of calibration samples per method (EasyQuant: the paper's 50;
#: Bit-Split: 256, measured better than 50 at W4A8 on both examples, see BENCHMARKS.md).
DEFAULT_SAMPLES = {"easyquant": 50, "bitsplit": 256}
#: Samples kept back (beyond the calibration ones) for the agreement check.
MAX_HOLDOUT = 256



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
    int4_tensors: int = 0  # weight tensors stored as packed INT4 (``pack_int4``)


def resolve_bits(bits: int = 7, weight_bits: int | None = None,
                 activation_bits: int | None = None, activation_range: str = "strict") -> BitWidths:
    """``bits`` sets both widths; the other two override one each (2..8).

    ``activation_range``: ``"strict"`` (b-bit levels are the working range) or
    ``"container"`` (b-bit step, 8-bit range); see ``eq_tflite.grid``.
    """
    try:
        return BitWidths(weight_bits if weight_bits is not None else bits,
                         activation_bits if activation_bits is not None else bits,
                         activation_range)
    except ValueError as err:
        raise EqTfliteError(str(err)) from None


def convert_model(model: ModelLike, calibration_data: Any = None, *, bits: int = 7,
                  weight_bits: int | None = None, activation_bits: int | None = None,
                  activation_range: str = "strict", method: str = DEFAULT_METHOD, method_options: Mapping[str, Any] | None = None,
                  num_calibration_samples: int | None = None, allow_float: bool = False,
                  int8_io: bool = False, image_size: tuple[int, int] | None = None,
                  mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                  progress: bool = False, seed: int = 0, pack_int4: bool = False) -> Conversion:
    """Runs the whole pipeline and returns every artifact (see :class:`Conversion`).

    ``pack_int4`` (weights of at most 4 bits) stores CONV_2D, DEPTHWISE_CONV_2D
    and FULLY_CONNECTED weights as packed INT4; verify checks that the file
    holds the resolved integers and gives the same outputs as its
    int8-container form.
    """
    widths = resolve_bits(bits, weight_bits, activation_bits, activation_range)
    if pack_int4 and widths.weights > 4:
        raise EqTfliteError(f"pack_int4 needs weights of at most 4 bits, got {widths.weights}")
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
    int4_tensors = 0
    if pack_int4:  # verify checks the packed file against its int8-container twin
        out, int4_tensors = pack_int4_weights(out)
    timings["rewrite"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = verify(out, float_model=float_model, samples=holdout, bits=widths, written=log)
    timings["verify"] = time.perf_counter() - t0
    if not report.ok:
        raise EqTfliteError("the rewritten model failed verification:\n" + report.summary())
    return Conversion(out, int8_model, float_model, plan, log, report, n, holdout_is_cal, timings,
                      int4_tensors)


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


def _get_method(name: str):
    try:
        return methods.get(name)
    except ValueError as err:
        raise EqTfliteError(str(err)) from None
