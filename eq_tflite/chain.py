"""The conversion chain: weight-editing transforms -> one scale method -> corrections.

* Transforms (before scale selection, on the float model): SPIQ rescaling,
  cross-layer equalization, bias absorption (``eq_tflite.transforms``).
* One scale method (``eq_tflite.methods``: the registry says which need data).
* Corrections (after it): bias correction, empirical or data-free
  (``eq_tflite.corrections``).

Defaults (``build_chain``): without calibration data the chain is DFQ's
(CLE, absorption, BN-derived ranges, data-free bias correction); with data it
is EasyQuant alone. A method's spec turns steps on by default (``--method dfq``
is DFQ's whole pipeline unless a flag turns a step off); every step can be
added to any method. ``ChainOptions`` holds the data-free steps' options.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from eq_tflite import methods, options
from eq_tflite.bn_stats import BnStats
from eq_tflite.corrections import bias_correction
from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.options import option
from eq_tflite.plan import Plan
from eq_tflite.transforms import FloatState, add_missing_biases
from eq_tflite.transforms import bias_absorption, cle, spiq
from eq_tflite.transforms.layer_units import RELU6_POLICIES

DEFAULT_WITH_DATA = "easyquant"
DEFAULT_WITHOUT_DATA = "dfq"
_BC_MODES = bias_correction.MODES  # (build_chain's argument of the same name shadows the module)


@dataclass(frozen=True)
class ChainOptions:
    """Options of the data-free steps (keys as named; the CLI flags of the same names)."""

    #: Chosen on the real-model suite's EfficientNet-Lite ports (held-out crops; k = 6
    #: beat 8 on both models in agreement and cosine): see README, "Data-free ranges".
    dfq_sigmas: float = option(6.0, "k in the BatchNorm ranges beta +- k*gamma (dfq, spiq, "
                               "data-free bias correction)", check=lambda v: v > 0,
                               rule="must be > 0", key="dfq_sigmas")
    #: Chosen on the evidence in README (see eq_tflite.transforms.layer_units).
    cle_relu6: str = option("skip", "CLE/SPIQ/absorption: skip layer pairs with a fused RELU6 "
                            "between them, or treat it as RELU (the DFQ paper; changes the float "
                            "function above 6)", choices=RELU6_POLICIES, key="cle_relu6")
    absorb_padded: bool = option(False, "bias absorption also into consumers that zero-pad (the "
                                 "paper's approximation)", key="absorb_padded")

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> "ChainOptions":
        return options.parse(cls, "", values)


def option_owners() -> list[tuple[str, type, str]]:
    """(owner, options dataclass, key prefix) of the chain and of every method with options."""
    return [("chain", ChainOptions, "")] + [(s.name, s.options, s.prefix)
                                           for s in methods.specs().values() if s.options]


def option_readers() -> dict[str, set[str]]:
    """Every option key -> who reads it ("chain" and/or method names)."""
    readers: dict[str, set[str]] = {}
    for owner, cls, prefix in option_owners():
        for key in options.keys(cls, prefix):
            readers.setdefault(key, set()).add(owner)
    return readers


def check_options(method: str, values: Mapping[str, Any]) -> None:
    """Validates the options for this method's chain; refuses one that no step of it reads
    (it would be ignored silently)."""
    steps = {"chain", method, *methods.spec(method).reads}
    ChainOptions.parse(values)  # values checked now, not after a long calibration
    for name in steps - {"chain"}:
        spec = methods.spec(name)
        if spec.options is not None:
            options.parse(spec.options, spec.prefix, values)
    known = option_readers()
    for key in values:
        if key not in known:
            raise EqTfliteError(f"unknown option {key}; options: {', '.join(sorted(known))}")
        if not known[key] & steps:
            raise EqTfliteError(f"option {key} is read by {' and '.join(sorted(known[key]))}, "
                                f"not by --method {method}")


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
        return not methods.spec(self.method).needs_data and self.bias_correction != "empirical"

    @property
    def needs_bn(self) -> bool:
        return (self.bias_absorption or self.spiq or not methods.spec(self.method).needs_data
                or self.bias_correction == "data_free")


def build_chain(method: str | None, has_data: bool, *, cross_layer_equalization: bool | None = None,
                bias_absorption: bool | None = None, bias_correction: str | None = None,
                per_tensor_weights: bool = False) -> Chain:
    """The chain for these options (None = the default described in the module doc)."""
    if method is None:
        method = DEFAULT_WITH_DATA if has_data else DEFAULT_WITHOUT_DATA
    try:
        spec = methods.spec(method)
    except ValueError as err:
        raise EqTfliteError(str(err)) from None
    if not has_data and spec.needs_data:
        free = [s.name for s in methods.specs().values() if not s.needs_data]
        raise EqTfliteError(f"method {method} needs --calibration_data; without data use "
                            f"--method {' or '.join(free)}")
    on = spec.chain
    cle_on = (bool(on.get("cross_layer_equalization")) if cross_layer_equalization is None
              else bool(cross_layer_equalization))
    absorb = (cle_on and bool(on.get("bias_absorption")) if bias_absorption is None
              else bool(bias_absorption))
    bc = on.get("bias_correction", "off") if bias_correction is None else bias_correction
    if bc not in _BC_MODES:
        raise EqTfliteError(f"--bias_correction must be one of {', '.join(_BC_MODES)}, got {bc!r}")
    if bc == "empirical" and not has_data:
        raise EqTfliteError("--bias_correction empirical needs --calibration_data "
                            "(data_free needs none)")
    return Chain(method, cle_on, absorb, bool(on.get("spiq")), bc, bool(per_tensor_weights))



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
    from eq_tflite.rewrite.float_model import write_float_graph

    opts = ChainOptions.parse(options)
    relu6, sigmas = opts.cle_relu6, opts.dfq_sigmas
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
            bias_absorption.absorb(state, relu6, padded=opts.absorb_padded)
    if chain.spiq:
        spiq.rescale(state, input_ranges, sigmas, relu6)
    if bn is None and not methods.spec(chain.method).needs_data:
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
            sigmas = ChainOptions.parse(options).dfq_sigmas
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
