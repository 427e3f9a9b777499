"""The plan: what a method decides, as plain data. The rewriter applies it.

Contract (every method, present and future):

* A method is a function ``(ctx: MethodContext) -> Plan`` registered with
  ``eq_tflite.methods.method`` under its name (with its spec: data needs,
  options, chain defaults). It reads the float graph (BatchNorm
  folded, activations fused: the graph TFLite runs) and the calibration data.
  It never reads or writes FlatBuffer bytes.
* All keys are tensor *names* of the float graph (``Graph.tensors[i].name``);
  the rewriter maps them onto TFLite's int8 model.
* ``activation_ranges[name] = (lo, hi)``: the real range that maps onto the
  2^b activation levels of that tensor (``grid.activation_params``). Tensors
  left out keep the range TFLite's own calibration gave them. Tied tensors
  (pool, reshape, concat...) are merged by the rewriter; fixed-scale outputs
  (softmax, logistic, tanh) keep the spec's parameters.
* ``weight_scales[name]``: per-output-channel real step size of a weight
  tensor (float64 array, one per output channel). Left out: absmax / qmax.
* ``float_weights[name]``: replacement float values of a constant (weights or
  biases, same shape) for methods that edit the float model (DFQ cross-layer
  equalization, bias absorption/correction, SPIQ). Ranges in the same plan
  must describe the edited model.
* ``int_weights[name]``: integer weight values chosen directly (Bit-Split);
  must lie in the symmetric b-bit range and come with ``weight_scales``.
* ``layers``: optional per-layer report rows (dicts) for ``--report_dir``.
* ``steps``: the chain that made the plan, in order (``eq_tflite.chain``):
  weight-editing transforms (``cross_layer_equalization``, ``bias_absorption``,
  ``spiq``), the scale method, then corrections (``bias_correction:empirical``
  or ``bias_correction:data_free``). Transforms run before the method on the
  float model, so the method sees (and ``float_weights`` holds) the edited
  weights; corrections edit ``float_weights`` after it.
* ``notes``: one line per decision a user should know about (what a step did,
  which data-free step could not run and what was done instead).
* ``per_tensor_weights``: one weight step per tensor (the resolve stage takes
  the largest per-channel step; the rewriter writes a single scale).

Methods that need no data (``dfq``, ``spiq``) read ``MethodContext.bn``
(BatchNorm statistics, or None) and ``MethodContext.input_ranges``; their
``calibration`` is empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths


@dataclass
class Plan:
    """Quantization decisions keyed by float-graph tensor names (see module doc)."""

    method: str
    bits: BitWidths
    activation_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    float_weights: dict[str, np.ndarray] = field(default_factory=dict)
    int_weights: dict[str, np.ndarray] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_tensor_weights: bool = False


@dataclass
class MethodContext:
    """Everything a method may read."""

    graph: Graph
    float_model: bytes
    calibration: dict[str, np.ndarray]  # input tensor name -> (N, ...) float32
    bits: BitWidths
    options: dict[str, Any] = field(default_factory=dict)  # option keys (flag names) -> values
    progress: bool = True
    bn: Any = None                     # eq_tflite.bn_stats.BnStats or None
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


Method = Callable[[MethodContext], Plan]
