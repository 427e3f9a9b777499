"""``minmax``: TFLite's own statistic, absolute min/max over all samples."""
from __future__ import annotations

from eq_tflite.collect import collect_minmax
from eq_tflite.methods import method
from eq_tflite.plan import MethodContext, Plan


@method("minmax")
def minmax(ctx: MethodContext) -> Plan:
    """Activation ranges = min/max over the calibration set; weights = absmax."""
    stats = collect_minmax(ctx.graph, ctx.float_model, ctx.calibration, ctx.progress)
    return Plan("minmax", ctx.bits, activation_ranges=stats.ranges_by_name(ctx.graph))
