"""The conversion chain: weight-editing transforms -> one scale method -> corrections.

* Transforms (before scale selection, on the float model): SPIQ rescaling,
  cross-layer equalization, bias absorption (``eq_tflite.transforms``).
* One scale method: ``minmax``, ``kl``, ``easyquant`` (need data), ``dfq``,
  ``spiq`` (data-free; ``eq_tflite.methods``).
* Corrections (after it): bias correction, empirical or data-free
  (``eq_tflite.corrections``).

Defaults (``build_chain``): without calibration data the chain is DFQ's
(CLE, absorption, BN-derived ranges, data-free bias correction); with data it
is EasyQuant alone. ``--method dfq`` means DFQ's whole pipeline unless a flag
turns a step off; every step can be added to any method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from eq_tflite.bn_stats import BnStats
from eq_tflite.corrections import bias_correction
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.plan import Plan
from eq_tflite.transforms import FloatState, add_missing_biases
from eq_tflite.transforms import bias_absorption, cle, spiq
from eq_tflite.transforms.chains import RELU6_POLICIES

DATA_FREE_METHODS = ("dfq", "spiq")
DATA_METHODS = ("minmax", "kl", "easyquant", "bitsplit")
DEFAULT_WITH_DATA = "easyquant"
DEFAULT_WITHOUT_DATA = "dfq"
#: CLE's RELU6 policy (see eq_tflite.transforms.chains); chosen on the evidence in README.
DEFAULT_RELU6 = "skip"
_BC_MODES = bias_correction.MODES  # (build_chain's argument of the same name shadows the module)


@dataclass(frozen=True)
class Chain:
    """Which steps run, in chain order."""

    method: str
    cross_layer_equalization: bool = False
    bias_absorption: bool = False
    spiq: bool = False
    bias_correction: str = "off"
    per_tensor_weights: bool = False

    @property
    def data_free(self) -> bool:
        """True when no step needs calibration data."""
        return self.method in DATA_FREE_METHODS and self.bias_correction != "empirical"

    @property
    def needs_bn(self) -> bool:
        return (self.bias_absorption or self.spiq or self.method in DATA_FREE_METHODS
                or self.bias_correction == "data_free")


def build_chain(method: str | None, has_data: bool, *, cross_layer_equalization: bool | None = None,
                bias_absorption: bool | None = None, bias_correction: str | None = None,
                per_tensor_weights: bool = False) -> Chain:
    """The chain for these options (None = the default described in the module doc)."""
    if method is None:
        method = DEFAULT_WITH_DATA if has_data else DEFAULT_WITHOUT_DATA
    if not has_data and method in DATA_METHODS:
        raise EqTfliteError(f"method {method} needs --calibration_data; without data use "
                            f"--method {' or '.join(DATA_FREE_METHODS)}")
    dfq = method == "dfq"
    cle_on = dfq if cross_layer_equalization is None else bool(cross_layer_equalization)
    absorb = cle_on and dfq if bias_absorption is None else bool(bias_absorption)
    bc = ("data_free" if dfq else "off") if bias_correction is None else bias_correction
    if bc not in _BC_MODES:
        raise EqTfliteError(f"--bias_correction must be one of {', '.join(_BC_MODES)}, got {bc!r}")
    if bc == "empirical" and not has_data:
        raise EqTfliteError("--bias_correction empirical needs --calibration_data "
                            "(data_free needs none)")
    return Chain(method, cle_on, absorb, method == "spiq", bc, bool(per_tensor_weights))



@dataclass
class Prepared:
    """The float model after the transforms, and what they did."""

    float_model: bytes
    graph: Graph
    bn: BnStats | None
    edits: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_transforms(float_model: bytes, graph: Graph, chain: Chain, bn: BnStats | None,
                   bn_note: str, input_ranges: Mapping[str, tuple[float, float]],
                   options: Mapping[str, Any]) -> Prepared:
    """Applies the chain's transforms; returns the edited float model and its graph."""
    from eq_tflite.methods.dfq import DEFAULT_SIGMAS
    from eq_tflite.rewrite.float_model import write_float_graph

    relu6 = options.get("cle_relu6", DEFAULT_RELU6)
    if relu6 not in RELU6_POLICIES:
        raise EqTfliteError(f"--cle_relu6 must be one of {', '.join(RELU6_POLICIES)}, got {relu6!r}")
    sigmas = float(options.get("dfq_sigmas", DEFAULT_SIGMAS))
    state = FloatState.of(graph, bn)
    if chain.needs_bn:
        state.notes.append(bn_note)
    if chain.bias_correction != "off" or chain.bias_absorption:
        add_missing_biases(state)
    if chain.cross_layer_equalization:
        cle.equalize(state, relu6)
    if chain.bias_absorption:
        if bn is None:
            state.notes.append("bias absorption skipped: it needs BatchNorm statistics "
                               "(the float function is unchanged without it)")
        else:
            bias_absorption.absorb(state, relu6, padded=bool(options.get("absorb_padded", False)))
    if chain.spiq:
        spiq.rescale(state, input_ranges, sigmas, relu6)
    if bn is None and chain.method in DATA_FREE_METHODS:
        state.notes.append("data-free ranges: no BatchNorm statistics, so every range is "
                           "propagated from --input_range through the weights (inputs assumed "
                           "independent); expect wider ranges than with BN")
    if bn is None and chain.bias_correction == "data_free":
        state.notes.append("data-free bias correction: E[x] propagated from --input_range "
                           "through the weights (no BatchNorm statistics)")
    changed = bool(state.edited) or any(
        a.activation != b.activation for a, b in zip(state.graph.ops, graph.ops))
    if not changed:
        return Prepared(float_model, graph, state.bn, {}, state.steps, state.notes)
    edited_model = write_float_graph(float_model, state.graph)
    edited_graph = Graph.from_tflite(edited_model)
    edits = {name: edited_graph.tensors[edited_graph.by_name[name]].data for name in state.edited}
    return Prepared(edited_model, edited_graph, state.bn, edits, state.steps, state.notes)


def run_corrections(plan: Plan, prepared: Prepared, chain: Chain,
                    calibration: Mapping[str, np.ndarray] | None,
                    input_ranges: Mapping[str, tuple[float, float]],
                    options: Mapping[str, Any], progress: bool = False) -> Plan:
    """Completes ``plan`` with the chain: transform edits, per-tensor weights, bias correction."""
    from eq_tflite.methods.dfq import DEFAULT_SIGMAS

    plan.float_weights = {**prepared.edits, **plan.float_weights}
    plan.per_tensor_weights = chain.per_tensor_weights
    plan.steps = list(prepared.steps) + [chain.method]
    plan.notes = list(prepared.notes) + list(plan.notes)
    if chain.per_tensor_weights:
        plan.notes.append("per-tensor weights: one step per weight tensor (the largest "
                          "per-channel step), written as a single scale")
    if chain.bias_correction != "off":
        graph = prepared.graph
        if chain.bias_correction == "empirical":
            means = bias_correction.empirical_means(graph, prepared.float_model, calibration or {},
                                                    progress)
        else:
            sigmas = float(options.get("dfq_sigmas", DEFAULT_SIGMAS))
            means = bias_correction.data_free_means(graph, input_ranges, prepared.bn, sigmas)
        corrected, no_bias = bias_correction.correct_biases(graph, plan, means)
        plan.float_weights.update(corrected)
        plan.steps.append(f"bias_correction:{chain.bias_correction}")
        skipped = len(graph.weighted_ops()) - len(corrected) - no_bias
        plan.notes.append(f"bias correction ({chain.bias_correction.replace('_', '-')}): "
                          f"{len(corrected)} biases corrected"
                          + (f", {no_bias} ops without a bias left as they are" if no_bias else "")
                          + (f", {skipped} ops left uncorrected (their input has no BatchNorm "
                             "statistics, only a range)" if skipped else ""))
    return plan
