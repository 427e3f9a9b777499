"""The Python API: the whole pipeline as one call.

load (SavedModel / Keras / float .tflite -> float .tflite)
  -> convert (TFLite's own int8 model, calibrated on the same samples)
  -> collect + optimize (a method makes a Plan from the float graph)
  -> rewrite (the Plan is written onto TFLite's int8 model)
  -> verify (spec invariants, LiteRT run, agreement with float).
"""
from __future__ import annotations

import numbers
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


import numpy as np

from eq_tflite import isolation, methods, mixed, op_table, output_ranges, runtime
from eq_tflite.bn_stats import bn_stats_of
from eq_tflite.chain import build_chain, check_options, run_corrections, run_transforms
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.io import calibration as calib
from eq_tflite.io.calibration import load_data_for  # noqa: F401  (re-exported)
from eq_tflite.io.normalize import check_custom_ops
from eq_tflite.io.dynamic import at_input_size, size_note
from eq_tflite.io.model import TfliteModel
from eq_tflite.io.sources import ModelLike, float_model_of, signature_input_names, signature_output_names
from eq_tflite.op_table import ISLANDS
from eq_tflite.plan import MethodContext, Plan
from eq_tflite.quiet import quiet
from eq_tflite.rewrite.rewriter import RewriteLog, apply_plan
from eq_tflite.tflite_quantizer import calibrated, float_ops_left, from_ranges
from eq_tflite.verify import VerifyReport, verify

#: Default number of calibration samples per method: the specs' ``default_samples``
#: (EasyQuant: the paper's 50; Bit-Split: 256, measured better than 50 at W4A8 on both
#: examples, see BENCHMARKS.md); the others use every sample.
DEFAULT_SAMPLES = {name: spec.default_samples for name, spec in methods.specs().items()
                   if spec.default_samples is not None}
#: Samples kept back (beyond the calibration ones) for the agreement check.
MAX_HOLDOUT = 256


def split_calibration(total: int, requested: int | None, default: int | None) -> tuple[int, bool]:
    """Number of calibration samples, and whether the check runs on them too.

    The summary's agreement check must be on samples the method did not see: a
    method fitted on 64 faces scored 84% on them and 75% on others (Bit-Split).
    So when the default count would leave fewer than ``clamp(total // 8, 4, 32)``
    samples over, the last ones are held back from calibration instead. Only an
    explicit count that takes every sample (or fewer than 8 samples in all)
    makes the check run on the calibration samples, and the summary says so.
    """
    if requested is not None:
        n = min(requested, total)
        return n, n >= total
    n = min(default if default is not None else total, total)
    if total < 8:
        return n, n >= total
    keep = min(max(total // 8, 4), 32)
    return min(n, total - keep), False



@dataclass
class Conversion:
    """Everything one conversion produced (``model`` is the file to ship).

    ``tflite_int8`` is TFLite's own calibrated int8 model, or, for a data-free
    conversion, the int8 structure built from the plan's ranges.
    ``float_model`` is the user's float model (before any transform).
    """

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
    load_notes: list[str] = field(default_factory=list)  # what loading the file as shipped changed
    weight_bytes: int = 0      # the weighted ops' weights in the file (INT4 packed: half)
    int8_weight_bytes: int = 0  # the same weights in the int8 container
    budget: "mixed.BudgetChoice | None" = None  # the weight-size search (``weight_size``)
    layer_names: dict[int, str] = field(default_factory=dict)  # weighted op index -> Keras name


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


def parse_input_ranges(ranges: Any, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """{input name: (lo, hi)} from ``(lo, hi)``, a list of them (one per input, in order),
    ``"LO,HI"`` strings, or a mapping; one range applies to every input."""
    if ranges is None:
        return {}
    if isinstance(ranges, Mapping):
        items = [ranges[n] if n in ranges else None for n in names]
        if None in items:
            raise EqTfliteError(f"--input_range: no range for input "
                                f"{names[items.index(None)]!r}")
    else:
        seq = [ranges] if isinstance(ranges, str) or (
            len(ranges) == 2 and all(isinstance(v, (int, float)) for v in ranges)) else list(ranges)
        if len(seq) == 1:
            seq = seq * len(names)
        if len(seq) != len(names):
            raise EqTfliteError(f"--input_range given {len(seq)} times, but the model has "
                                f"{len(names)} inputs: give one LO,HI per input (or one for all)")
        items = seq
    return {name: output_ranges.parse_lo_hi(item, "--input_range") for name, item in zip(names, items)}


def convert_model(model: ModelLike, calibration_data: Any = None, *, bits: int = 7,
                  weight_bits: int | None = None, activation_bits: int | None = None,
                  activation_range: str = "strict", method: str | None = None,
                  method_options: Mapping[str, Any] | None = None,
                  num_calibration_samples: int | None = None, allow_float: bool = False,
                  int8_io: bool = False, image_size: tuple[int, int] | None = None,
                  mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                  progress: bool = False, seed: int = 0,
                  cross_layer_equalization: bool | None = None,
                  bias_absorption: bool | None = None, bias_correction: str | None = None,
                  per_tensor_weights: bool = False, input_range: Any = None,
                  pack_int4: bool = False, layer_bits: Sequence[str] | None = None,
                  keep_8bit: Sequence[str] | str | None = None,
                  weight_size: float | None = None,
                  weight_size_ratio: float | None = None, output_range: Any = None,
                  budget_sensitivity: str = "output") -> Conversion:
    """Runs the whole pipeline and returns every artifact (see :class:`Conversion`).

    ``method`` None: ``easyquant`` with calibration data, the data-free DFQ
    chain without (which needs ``input_range``). ``cross_layer_equalization``,
    ``bias_absorption``, ``bias_correction`` ("off", "empirical", "data_free")
    and ``per_tensor_weights`` add chain steps to any method (see
    ``eq_tflite.chain``); None keeps the method's default. ``pack_int4``
    (weights of at most 4 bits) stores CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED weights as packed INT4; verify checks that the file holds
    the resolved integers and gives the same outputs as its int8-container form.

    Mixed precision (``eq_tflite.mixed``): ``layer_bits`` (``"REGEX=W"`` or
    ``"REGEX=W/A"`` strings, matched against Keras layer names), ``keep_8bit``
    (``"input,first,last"`` or a list of them), and a weight budget,
    ``weight_size`` (KiB) or ``weight_size_ratio`` (of the int8 weights),
    whose search lowers layers to 4 bits stored as packed INT4.
    ``budget_sensitivity`` ("output", "output_gptq" or "layer") is what the
    search ranks layers by (``mixed.output_sensitivity``, nearest or GPTQ
    rounding / ``mixed.sensitivity``).

    ``output_range`` (``"NAME=LO,HI"`` strings or ``{name: (lo, hi)}``) sets the
    range a model output is quantized over (``eq_tflite.output_ranges``).
    """
    check_arguments(model, calibration_data, num_calibration_samples)
    widths = resolve_bits(bits, weight_bits, activation_bits, activation_range)
    layer_specs = mixed.parse_layer_bits(layer_bits)
    keep = mixed.parse_keep_8bit(keep_8bit)
    mixed.check_budget(weight_size, weight_size_ratio, budget_sensitivity)
    out_ranges = output_ranges.parse(output_range)
    budget_asked = weight_size is not None or weight_size_ratio is not None
    if pack_int4 and widths.weights > 4 and not layer_specs and not budget_asked:
        raise EqTfliteError(f"pack_int4 needs weights of at most 4 bits, got {widths.weights}")
    has_data = calibration_data is not None
    size_notes: list[str] = []
    chain = build_chain(method, has_data, cross_layer_equalization=cross_layer_equalization,
                        bias_absorption=bias_absorption, bias_correction=bias_correction,
                        per_tensor_weights=per_tensor_weights)
    check_options(chain.method, method_options or {})
    options = dict(method_options or {}, seed=seed)
    # In the CLI's child (a run_isolated child without TensorFlow), TensorFlow's stages run in
    # one worker child that ends after TFLite's int8 conversion: its ~1 GB never sits in this
    # process through the method stage (issue 18: peak RSS).
    with isolation.separate_stages(isolation.in_child() and "tensorflow" not in sys.modules) \
            as tf_stages:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        load_notes: list[str] = []
        float_model = float_model_of(model, load_notes)
        handle = TfliteModel(float_model, "the float model")  # one parse for the load stage's readers
        kept_custom = check_custom_ops(handle, allow_float)
        if kept_custom:
            load_notes.append(f"custom ops kept in float (--allow_float): {', '.join(kept_custom)}")
        graph = Graph.from_tflite(handle)
        specs = calib.input_specs(graph, signature_input_names(handle))
        ranges = parse_input_ranges(input_range, [s.name for s in specs])
        out_groups = output_ranges.resolve_names(graph, out_ranges, signature_output_names(handle))
        if not has_data and not ranges:
            raise EqTfliteError("a data-free conversion needs the input's real range: pass "
                                "--input_range LO,HI (e.g. --input_range 0,1), or --calibration_data")
        _check_ops(graph, chain.method)
        bn, bn_note = bn_stats_of(model, graph) if chain.needs_bn else (None, "")
        timings["load"] = time.perf_counter() - t0

        if has_data:
            data = calib.load_calibration(calibration_data, specs, image_size=image_size, mean=mean,
                                          std=std, seed=seed)
            total = calib.num_samples(data)
            n, holdout_is_cal = split_calibration(total, num_calibration_samples,
                                                  DEFAULT_SAMPLES.get(chain.method))
            cal = calib.take(data, 0, n)
            holdout = cal if holdout_is_cal else calib.take(data, n, n + MAX_HOLDOUT)
            if not ranges:  # data-free steps in a calibrated run: the data gives the input range
                ranges = {k: (float(v.min()), float(v.max())) for k, v in cal.items()}
            if any(s.dynamic for s in specs):  # calibrate at the data's size (io.dynamic)
                float_model = at_input_size(float_model, [data[s.name].shape[1:] for s in specs])
                graph = Graph.from_tflite(float_model)
                size_notes.append(size_note({s.alias: (s.signature, data[s.name].shape[1:])
                                             for s in specs if s.dynamic}))
        else:
            n, cal, holdout, holdout_is_cal = 0, {}, None, False

        t0 = time.perf_counter()
        prepared = run_transforms(float_model, graph, chain, bn, bn_note, ranges, options)
        timings["transforms"] = time.perf_counter() - t0

        int8 = None
        if has_data:
            t0 = time.perf_counter()
            with quiet():
                int8 = calibrated(prepared.float_model, cal, [s.name for s in specs],
                                  allow_float=allow_float, int8_io=int8_io)
            timings["tflite_int8"] = time.perf_counter() - t0
            if tf_stages is not None:
                tf_stages.close()  # TensorFlow's memory goes now (a data-free run keeps it)

        t0 = time.perf_counter()
        widths, budget = mixed_widths(prepared.graph, widths, layer_specs, keep, cal, weight_size,
                                      weight_size_ratio, seed, prepared.float_model, budget_sensitivity)
        if budget is not None and budget.low:
            pack_int4 = True  # the budget counts 4-bit layers packed: that is where the bytes go
        if pack_int4 and not any(widths.weights_of(prepared.graph.tensors[op.weight_input].name) <= 4
                                 for op in prepared.graph.weighted_ops()):
            raise EqTfliteError(f"pack_int4 needs weights of at most 4 bits, got {widths.weights}")
        timings["widths"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ctx = MethodContext(prepared.graph, prepared.float_model, cal, widths, options,
                            progress=progress, bn=prepared.bn, input_ranges=ranges)
        plan = methods.get(chain.method)(ctx)
        plan.method = chain.method
        plan.notes[:0] = size_notes + mixed.describe(prepared.graph, widths) + (
            [] if budget is None else [budget_note(budget)])
        timings["method"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        plan = run_corrections(plan, prepared, chain, cal, ranges, options, progress)
        output_ranges.apply(prepared.graph, plan, out_groups)
        timings["corrections"] = time.perf_counter() - t0

        if int8 is None:  # data-free: the int8 structure from the plan's own ranges
            t0 = time.perf_counter()
            with quiet():
                int8 = from_ranges(prepared.float_model, prepared.graph, plan.activation_ranges,
                                   allow_float=allow_float, int8_io=int8_io)
            timings["int8_structure"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        int8_model = int8.to_bytes()  # TFLite's own model, kept before the rewrite edits the handle
        rewritten, log = apply_plan(int8, prepared.graph, plan, float_model, pack_int4=pack_int4)
        out, int4_tensors = rewritten.to_bytes(), log.int4_tensors
        timings["rewrite"] = time.perf_counter() - t0

        islands = sorted(set(float_ops_left(rewritten)) & ISLANDS)
        if islands and not allow_float:
            plan.notes.append(f"kept in float as TFLite's own int8 conversion does: {', '.join(islands)} "
                              "(float islands of standard layers, simulated in float)")

        plan.notes += fixed_range_notes(log.resolved, widths.activations)

        t0 = time.perf_counter()
        run_inputs = None if has_data else constant_inputs(graph, ranges)
        report = verify(out, float_model=float_model if has_data else None, samples=holdout,
                        bits=widths, written=log, run_inputs=run_inputs)
        timings["verify"] = time.perf_counter() - t0
        if not report.ok:
            raise EqTfliteError("the rewritten model failed verification\n" + report.summary())
        return Conversion(out, int8_model, float_model, plan, log, report, n, holdout_is_cal, timings,
                          int4_tensors, load_notes, mixed.weight_bytes(prepared.graph, widths, pack_int4),
                          mixed.weight_bytes(prepared.graph), budget, mixed.layer_names(prepared.graph))


def mixed_widths(graph: Graph, widths: BitWidths, specs: Sequence[mixed.LayerSpec],
                 keep: Sequence[str], cal: Mapping[str, np.ndarray], weight_size: float | None,
                 weight_size_ratio: float | None, seed: int = 0, float_model: bytes | None = None,
                 measure: str = "output") -> tuple[BitWidths, "mixed.BudgetChoice | None"]:
    """The per-layer widths: overrides first, then the budget search over the other layers.

    The search ranks layers by their cost at the model outputs when it can run
    the float model (``mixed.output_sensitivity``); without data, or when
    LiteRT cannot run the float model (a custom op kept in float), by the
    layer's own cosine (``mixed.sensitivity``), and says so in the summary.
    """
    widths = mixed.overrides(graph, widths, specs, keep)
    budget = mixed.budget_bytes(graph, weight_size, weight_size_ratio)
    if budget is None:
        return widths, None
    sens = None
    if measure.startswith("output") and cal and float_model is not None:
        try:
            sens = mixed.output_sensitivity(graph, float_model, cal,
                                            rounding="gptq" if measure == "output_gptq" else "nearest")
        except (runtime.LiteRTError, mixed.NoFloatWeights):
            sens = None  # LiteRT cannot run the float model: rank by layer cosine
    if sens is None:
        sens = mixed.sensitivity(graph, cal, (mixed.LOW_BITS, widths.weights), seed=seed)
    choice = mixed.search_budget(graph, widths, sens, budget)
    return mixed.apply_choice(graph, widths, choice), choice


def budget_note(choice: "mixed.BudgetChoice") -> str:
    """One summary line on the weight-size search."""
    return (f"weight budget {choice.budget / 1024:.1f} KiB ({choice.budget / choice.int8_bytes:.2f} "
            f"of int8): {len(choice.low)} layers at {mixed.LOW_BITS} bits (packed INT4), weights "
            f"{choice.bytes / 1024:.1f} KiB ({choice.bytes / choice.int8_bytes:.2f} of int8), "
            f"predicted {choice.measure} loss {choice.loss:.4g}")


def fixed_range_notes(resolved: Any, activation_bits: int) -> list[str]:
    """Summary lines on fixed-range outputs (softmax, logistic, tanh) meeting tied tensors."""
    notes = []
    if resolved is None:
        return notes
    if resolved.requantized:
        notes.append(f"{len(resolved.requantized)} fixed-range outputs requantized into a "
                     f"concatenation's {activation_bits}-bit scale, as TFLite does (e.g. "
                     f"{resolved.requantized[0]})")
    if resolved.pinned and activation_bits < 8:
        notes.append(f"{len(resolved.pinned)} tensors tied to a fixed-range output keep its 8-bit "
                     f"parameters (the int8 spec fixes them at any width; e.g. {resolved.pinned[0]})")
    return notes


def check_arguments(model: Any, calibration_data: Any, num_calibration_samples: Any) -> None:
    """Refuses arguments of the wrong type before anything is loaded (one line naming each)."""
    if model is None or isinstance(model, (numbers.Number, list, tuple, dict, np.ndarray)):
        raise EqTfliteError(f"model must be a path, float .tflite bytes or a Keras model, "
                            f"got {_kind(model)}")
    if calibration_data is not None and not isinstance(
            calibration_data, (str, os.PathLike, np.ndarray, Mapping)):
        hint = ("; stack the samples into one array first (np.stack)"
                if isinstance(calibration_data, (list, tuple)) or hasattr(calibration_data, "__next__")
                else "")
        raise EqTfliteError("calibration_data must be a path (.npy, .npz or an image directory), "
                            f"a numpy array or a dict of arrays, got {_kind(calibration_data)}{hint}")
    if isinstance(calibration_data, Mapping):
        for key, value in calibration_data.items():
            if not isinstance(value, np.ndarray):
                raise EqTfliteError(f"calibration_data[{key!r}] must be a numpy array, "
                                    f"got {_kind(value)}")
    if num_calibration_samples is not None and (
            isinstance(num_calibration_samples, bool)
            or not isinstance(num_calibration_samples, numbers.Integral)
            or num_calibration_samples <= 0):
        raise EqTfliteError("num_calibration_samples must be a positive integer, "
                            f"got {num_calibration_samples!r}")


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def constant_inputs(graph: Graph, ranges: Mapping[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """Three constant samples per input (lo, middle, hi of its range): the data-free run check."""
    out = {}
    for t in graph.inputs:
        name = graph.tensors[t].name
        lo, hi = ranges[name]
        shape = graph.tensors[t].shape[1:]
        out[name] = np.stack([np.full(shape, v, np.float32) for v in (lo, (lo + hi) / 2, hi)])
    return out


def quantize(model_or_path: ModelLike, calibration_data: Any = None, *, bits: int = 7,
             method: str | None = None, **kwargs: Any) -> bytes:
    """Quantizes a model to a fully-integer .tflite with b-bit values; returns its bytes.

    Args:
      model_or_path: SavedModel directory, ``.keras``/``.h5`` file, float
        ``.tflite`` path or bytes, or an in-memory Keras model.
      calibration_data: ``.npy``/``.npz`` path, image directory, an array
        (single input), a mapping input name -> array, or None: the data-free
        DFQ chain, which needs ``input_range=(lo, hi)``; no random data is used.
      bits: weight and activation bit width (2..8); ``weight_bits`` /
        ``activation_bits`` keyword arguments override each.
      method: scale method, one of ``eq_tflite.methods.available()``; None:
        ``easyquant`` with data, ``dfq`` without.
      **kwargs: any other :func:`convert_model` argument.

    Raises:
      EqTfliteError: with a one-line reason, for bad models, data or options.
    """
    return convert_model(model_or_path, calibration_data, bits=bits, method=method, **kwargs).model


def _check_ops(graph: Graph, method: str) -> None:
    """Refuses, before any conversion runs, ops the chosen method cannot simulate (by name)."""
    missing = op_table.unsupported({op.type for op in graph.ops},
                                   {op.activation for op in graph.ops})
    if missing and methods.spec(method).simulates:
        raise EqTfliteError(f"--method {method} cannot simulate these ops of the float model: "
                            f"{', '.join(missing)}; --method minmax can convert them "
                            "(with --allow_float if they have no int8 kernel)")
