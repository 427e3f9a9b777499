"""``dfq`` and ``spiq``: data-free activation ranges from BatchNorm statistics (DFQ, SPIQ).

Every activation tensor gets the union over its channels of
[beta_c - k gamma_c, beta_c + k gamma_c], clipped by the fused activation
(``eq_tflite.moments``; k = ``dfq_sigmas``, a chain option: ``eq_tflite.chain``).
Tensors without a BN behind them (model inputs, residual sums, logits) get
statistics propagated from the ``--input_range`` and the BN'd layers. No
sample is read. Weights: absmax (per channel, or per tensor).

The two names are two chains around this one scale step (the spec's ``chain``):
``dfq`` is DFQ's whole pipeline (cross-layer equalization, bias absorption,
these ranges, data-free bias correction), ``spiq`` runs SPIQ's per-channel
input rescaling (``eq_tflite.transforms.spiq``) before it. Any step can be
turned off or added with the chain's flags.
"""
from __future__ import annotations

from eq_tflite import moments
from eq_tflite.chain import ChainOptions
from eq_tflite.methods import method
from eq_tflite.plan import MethodContext, Plan


def data_free_ranges(ctx: MethodContext, notes: list[str] | None = None
                     ) -> dict[str, tuple[float, float]]:
    """Range of every activation tensor of ``ctx.graph`` from BN statistics and input ranges.

    ``notes`` receives the ops whose statistics fell back to their input's.
    """
    sigmas = ChainOptions.parse(ctx.options).dfq_sigmas
    stats = moments.propagate(ctx.graph, ctx.input_ranges, ctx.bn, sigmas, notes)
    activations = set(ctx.graph.activation_tensors())
    return {ctx.graph.tensors[t].name: s.range for t, s in stats.items() if t in activations}


@method("dfq", needs_data=False, summary="DFQ's data-free chain: CLE, bias absorption, "
        "BN-derived ranges, data-free bias correction",
        chain={"cross_layer_equalization": True, "bias_absorption": True,
               "bias_correction": "data_free"})
@method("spiq", needs_data=False, summary="SPIQ's per-channel input rescaling, then BN-derived "
        "ranges", chain={"spiq": True})
def data_free(ctx: MethodContext) -> Plan:
    """BN-derived (data-free) activation ranges; absmax weights."""
    notes: list[str] = []
    return Plan("data_free", ctx.bits, activation_ranges=data_free_ranges(ctx, notes), notes=notes)
