"""``dfq`` and ``spiq``: data-free activation ranges from BatchNorm statistics (DFQ, SPIQ).

Every activation tensor gets the union over its channels of
[beta_c - k gamma_c, beta_c + k gamma_c], clipped by the fused activation
(``eq_tflite.moments``; k = ``dfq_sigmas``, default ``DEFAULT_SIGMAS``).
Tensors without a BN behind them (model inputs, residual sums, logits) get
statistics propagated from the ``--input_range`` and the BN'd layers. No
sample is read. Weights: absmax (per channel, or per tensor).

``spiq`` is the same scale method; the chain runs the SPIQ rescaling
(``eq_tflite.transforms.spiq``) before it.
"""
from __future__ import annotations

from eq_tflite import moments
from eq_tflite.methods import register
from eq_tflite.plan import MethodContext, Plan

#: k in beta +- k gamma. Chosen on the real-model suite's EfficientNet-Lite ports (held-out
#: crops; k = 6 beat 8 on both models in agreement and cosine): see README, "Data-free ranges".
DEFAULT_SIGMAS = 6.0


def data_free_ranges(ctx: MethodContext, notes: list[str] | None = None
                     ) -> dict[str, tuple[float, float]]:
    """Range of every activation tensor of ``ctx.graph`` from BN statistics and input ranges.

    ``notes`` receives the ops whose statistics fell back to their input's.
    """
    sigmas = float(ctx.options.get("dfq_sigmas", DEFAULT_SIGMAS))
    stats = moments.propagate(ctx.graph, ctx.input_ranges, ctx.bn, sigmas, notes)
    return {ctx.graph.tensors[t].name: s.range for t, s in stats.items()
            if t in set(ctx.graph.activation_tensors())}


@register("dfq")
def dfq(ctx: MethodContext) -> Plan:
    """BN-derived (data-free) activation ranges; absmax weights."""
    notes: list[str] = []
    return Plan("dfq", ctx.bits, activation_ranges=data_free_ranges(ctx, notes), notes=notes)


@register("spiq")
def spiq(ctx: MethodContext) -> Plan:
    """As ``dfq``, on a graph the chain has already rescaled with SPIQ's per-channel input scales."""
    notes: list[str] = []
    return Plan("spiq", ctx.bits, activation_ranges=data_free_ranges(ctx, notes), notes=notes)
