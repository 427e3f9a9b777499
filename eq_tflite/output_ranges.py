"""``--output_range NAME=LO,HI``: the real range a model output is quantized over, set by the user.

Why: a detector's score output spans a long tail the application never reads
(BlazeFace's class logits reach -421 on photos, while MediaPipe clips them at
±100 and thresholds at 0 after the sigmoid). Its calibrated range puts one
8-bit step at about 1 logit, which alone drops the IoU of the anchors above
0.5 to 0.82 against float on the real-model suite; over [-20, 3.3] it stays
at 0.98. No statistic of the calibration data can know where the
application stops reading, so the user says it.

The range replaces the plan's range on the output and on every tensor tied to
it (a CONCATENATION of RESHAPEs shares one scale). Values beyond it saturate
in the int8 container: at 8 bits on the range's ends; below 8 bits they may
reach the container's headroom, which ``verify`` counts as outside the levels.
Outputs whose scale the spec fixes (softmax, logistic, tanh) are refused.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from eq_tflite.errors import EqTfliteError
from eq_tflite.graph import Graph
from eq_tflite.plan import Plan
from eq_tflite.resolve import fixed_output_params, tied_groups


def parse(spec: Any) -> dict[str, tuple[float, float]]:
    """{output name: (lo, hi)} from "NAME=LO,HI" strings (one or a list) or a mapping."""
    if spec is None:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else \
        (s.split("=", 1) if isinstance(s, str) and "=" in s else (s, None)
         for s in ([spec] if isinstance(spec, str) else spec))
    out: dict[str, tuple[float, float]] = {}
    for name, value in items:
        if value is None:
            raise EqTfliteError(f"--output_range must be NAME=LO,HI, got {name!r}")
        out[str(name)] = parse_lo_hi(value, f"--output_range {name}:")
    return out


def parse_lo_hi(item: Any, flag: str) -> tuple[float, float]:
    """``"LO,HI"`` or a pair -> (lo, hi), finite with lo < hi (``--input_range`` and ``--output_range``)."""
    try:
        lo, hi = (float(v) for v in (item.split(",") if isinstance(item, str) else item))
    except (TypeError, ValueError):
        raise EqTfliteError(f"{flag} must be LO,HI (two numbers), got {item!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise EqTfliteError(f"{flag} must have finite LO < HI, got {lo:g},{hi:g}")
    return lo, hi


def resolve_names(graph: Graph, ranges: Mapping[str, tuple[float, float]],
                  signature_names: Mapping[int, str]) -> dict[str, tuple[tuple[int, ...], tuple[float, float]]]:
    """{output name: (its tie group, (lo, hi))}; names are signature output or tensor names.

    Checked before any work is done, so a typo costs no calibration run.
    """
    by_name = {graph.tensors[t].name: t for t in graph.outputs}
    by_name.update({n: t for t, n in signature_names.items() if t in graph.outputs})
    groups, fixed = tied_groups(graph), fixed_output_params(graph)
    out = {}
    for name, rng in ranges.items():
        if name not in by_name:
            raise EqTfliteError(f"--output_range: the model has no output {name!r} "
                                f"(outputs: {', '.join(sorted(by_name))})")
        group = groups.get(by_name[name], (by_name[name],))
        if any(t in fixed for t in group):
            raise EqTfliteError(f"--output_range: output {name!r} has a scale fixed by the int8 spec "
                                "(softmax, logistic or tanh); it cannot take a range")
        out[name] = (group, rng)
    return out


def apply(graph: Graph, plan: Plan, resolved: Mapping[str, tuple[tuple[int, ...], tuple[float, float]]]) -> None:
    """Writes each output's range on its whole tie group in ``plan`` and notes it."""
    for name, (group, (lo, hi)) in resolved.items():
        for t in group:
            plan.activation_ranges[graph.tensors[t].name] = (lo, hi)
        plan.notes.append(f"output {name}: range [{lo:g}, {hi:g}] from --output_range "
                          f"({len(group)} tied tensor{'s' if len(group) > 1 else ''})")
