"""Per-layer report: how close each weighted layer's quantized output stays to float.

``score_plan`` scores any plan (minmax, kl, easyquant...) the same way: for
every weighted op, the mean over samples of the cosine between the float
model's layer output and the simulated deployed model's (``simulate``), both
after the fused activation and before the output is requantized, which is
EasyQuant's objective evaluated on the whole model instead of per layer.
``write_layer_report`` writes rows as Markdown, CSV and a PNG plot;
``write_conversion_report`` does it for an ``api.Conversion`` (``--report_dir``).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eq_tflite import simulate
from eq_tflite.metrics import sample_cosines
from eq_tflite.graph import Graph
from eq_tflite.plan import Plan

Rows = list[dict[str, Any]]
#: Tensor-name columns: in the CSV only (too wide for the Markdown tables).
_NAME_COLUMNS = ("weight", "input", "output")


def score_plan(graph: Graph, plan: Plan, inputs: Mapping[str, np.ndarray],
               batch_size: int = 64) -> Rows:
    """Per weighted op: mean per-sample cosine of the quantized vs the float layer output."""
    quant, weights = simulate.plan_quant_params(graph, plan)
    ops = graph.weighted_ops()
    sums = np.zeros(len(ops))
    n = next(iter(inputs.values())).shape[0]
    for s in range(0, n, batch_size):
        batch = {k: v[s:s + batch_size] for k, v in inputs.items()}
        fsim = simulate.Executor(graph, batch)
        qsim = simulate.Executor(graph, batch, quant, weights)
        k = 0
        for op in graph.ops:
            ref, out = fsim.step(op), qsim.step(op)
            if k < len(ops) and op is ops[k]:
                sums[k] += sample_cosines(ref, out).sum()
                k += 1
    return [{"op_index": op.index, "op_type": op.type,
             "weight_shape": "x".join(str(d) for d in graph.tensors[op.weight_input].shape),
             "output": graph.tensors[op.outputs[0]].name, "cosine": float(c / n)}
            for op, c in zip(ops, sums)]


def _by_method(plans_or_rows: Plan | Sequence[Plan] | Mapping[str, Rows]) -> dict[str, Rows]:
    if isinstance(plans_or_rows, Plan):
        return {plans_or_rows.method: plans_or_rows.layers}
    if isinstance(plans_or_rows, Mapping):
        return {k: list(v) for k, v in plans_or_rows.items()}
    return {p.method: p.layers for p in plans_or_rows}


def _cosine(row: Mapping[str, Any]) -> float | None:
    """The row's whole-model cosine, else EasyQuant's searched one."""
    return row.get("cosine", row.get("cos_eq"))


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.6f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _markdown(methods: dict[str, Rows]) -> str:
    lines = ["# Per-layer cosine (float vs quantized layer output)", "",
             "`cosine`: mean over samples of the cosine between the float model's layer output "
             "and the simulated deployed model's (after the fused activation, before "
             "requantization). EasyQuant's `cos_init` / `cos_eq`: its search objective on the "
             "sampled rows, with initial / chosen scales for that layer. Ratios: chosen / "
             "initial step size.", ""]
    if len(methods) > 1:
        names = list(methods)
        index = {r["op_index"]: r for rows in methods.values() for r in rows}
        lines += ["| op | type | weights | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for i in sorted(index):
            cells = []
            for name in names:
                row = next((r for r in methods[name] if r["op_index"] == i), {})
                c = _cosine(row)
                cells.append("" if c is None else f"{c:.6f}")
            r = index[i]
            lines.append(f"| {i} | {r['op_type']} | {r.get('weight_shape', '')} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    for name, rows in methods.items():
        if not rows:
            continue
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _NAME_COLUMNS]
        lines += [f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
        last = rows[-1]
        if "elapsed_s" in last:
            lines += ["", f"Total {name} time {last['elapsed_s']:.1f} s, peak RSS "
                          f"{max(r.get('peak_rss_mb', 0) for r in rows):.0f} MB."]
            lines += _time_by_type(rows)
        lines.append("")
    return "\n".join(lines)


def _time_by_type(rows: Rows) -> list[str]:
    """Markdown lines: a method's seconds per layer type (search, and simulation up to the layer)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        t = by.setdefault(r["op_type"], [0, 0.0, 0.0])
        t[0] += 1
        t[1] += r.get("seconds", 0.0)
        t[2] += r.get("simulate_s", 0.0)
    out = ["", "| layer type | layers | search s | simulation s |", "|---|---|---|---|"]
    out += [f"| {k} | {n} | {a:.1f} | {b:.1f} |" for k, (n, a, b) in sorted(by.items())]
    return out


def _csv(methods: dict[str, Rows]) -> str:
    keys = list(dict.fromkeys(k for rows in methods.values() for r in rows for k in r))
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, ["method"] + keys)
    writer.writeheader()
    for name, rows in methods.items():
        for r in rows:
            writer.writerow({"method": name, **r})
    return f.getvalue()


def _plot(methods: dict[str, Rows]) -> bytes:
    """The PNG plot's bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op_index"]: r["op_type"] for rows in methods.values() for r in rows}.items())
    pos = {i: k for k, (i, _) in enumerate(ops)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(ops) + 2), 4.5))
    for name, rows in methods.items():
        series = [("", _cosine, "-o")]
        if any("cos_init" in r for r in rows) and not any("cosine" in r for r in rows):
            series.append((" (initial scales)", lambda r: r.get("cos_init"), "--x"))
        for suffix, get, style in series:
            pts = [(pos[r["op_index"]], get(r)) for r in rows if get(r) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, np.maximum(1.0 - np.asarray(y), 1e-9), style, label=name + suffix,
                        markersize=4)
    ax.set_yscale("log")
    ax.set_ylabel("1 - cosine (lower is better)")
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels([f"{i}:{t.replace('DEPTHWISE_CONV_2D', 'DW').replace('_2D', '')}"
                        for i, t in ops], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("weighted op (index:type)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def write_conversion_report(conversion: Any, out_dir: str | Path,
                            inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Per-layer report of an ``api.Conversion`` (``--report_dir``).

    Rows are the method's own (``plan.layers``, EasyQuant's search numbers)
    and, when ``inputs`` (e.g. the calibration samples) are given, every
    weighted op's ``score_plan`` cosine, so any method can be reported.
    A summary of the conversion's timings and verification follows the tables.
    """
    plan = conversion.plan
    rows = list(plan.layers)
    if inputs is not None:
        searched = {r["op_index"]: r for r in rows}
        graph = Graph.from_tflite(conversion.float_model)
        rows = [{**searched.get(r["op_index"], {}), **r} for r in score_plan(graph, plan, inputs)]
    widths = _width_rows(conversion)
    if widths:  # mixed precision: every layer's Keras name and widths
        rows = [{**r, **widths.get(r["op_index"], {})} for r in rows] if rows \
            else list(widths.values())
    rep = conversion.report
    summary = ["", "## Conversion", "",
               f"Method {plan.method}, {plan.bits.label}, "
               f"{conversion.num_calibration} calibration samples.",
               *([f"Chain: {' -> '.join(plan.steps)}."] if plan.steps else []),
               *[f"- {note}" for note in plan.notes], *([""] if plan.notes else []),
               "Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in conversion.timings.items()) + "."]
    if rep.cosine is not None:
        summary.append(f"Output vs float on {rep.samples} samples: cosine {rep.cosine:.6f}, "
                       f"top-1 agreement {100 * rep.agreement:.2f}%.")
    if rep.levels is not None:
        name, worst = rep.levels.worst()
        summary.append(f"Held-back activation values outside the {rep.levels.label} levels: "
                       f"{100 * rep.levels.share:.3f}% overall; worst tensor `{name}` "
                       f"{100 * worst:.2f}%.")
    budget = getattr(conversion, "budget", None)
    if budget is not None:
        summary += ["", "## Weight budget", "",
                    f"Budget {budget.budget} bytes ({budget.budget / budget.int8_bytes:.2f} of the int8 "
                    f"weights, {budget.int8_bytes} bytes); chosen: {budget.bytes} bytes, "
                    f"{len(budget.low)} layers at 4 bits (`w_bits` above). The search's frontier "
                    f"(predicted: sum of the lowered layers' {budget.measure} losses; measured agreement "
                    "per budget: BENCHMARKS.md, *Mixed precision*):", "",
                    "| budget (of int8) | weight bytes | predicted loss |", "|---|---|---|"]
        summary += [f"| {r:.2f} | {b} | {loss:.4g} |" for r, b, loss in budget.frontier]
    if not rows:
        summary.append(f"`{plan.method}` records no per-layer rows; give samples to score layers.")
    return write_layer_report({plan.method: rows}, out_dir, "\n".join(summary) + "\n")


def _width_rows(conversion: Any) -> dict[int, dict[str, Any]]:
    """op index -> {op_index, op_type, layer, w_bits, a_bits} of a mixed-precision conversion."""
    plan, names = conversion.plan, getattr(conversion, "layer_names", {})
    if not plan.bits.mixed or not names:
        return {}
    from eq_tflite import resolve
    graph = Graph.from_tflite(conversion.float_model)
    widths = resolve.tensor_bits(graph, plan.bits)
    return {op.index: {"op_index": op.index, "op_type": op.type, "layer": names.get(op.index, ""),
                       "w_bits": plan.bits.weights_of(graph.tensors[op.weight_input].name),
                       "a_bits": widths.get(op.data_input, plan.bits.activations)}
            for op in graph.weighted_ops() if op.index in names}


def write_layer_report(plans_or_rows: Plan | Sequence[Plan] | Mapping[str, Rows],
                       out_dir: str | Path, epilogue: str = "") -> dict[str, Path]:
    """Writes ``layers.md``, ``layers.csv`` and ``layers.png`` into ``out_dir``.

    Accepts a plan, several plans (their ``layers`` rows) or a mapping method
    -> rows (e.g. from ``score_plan``). Rows with ``cosine`` plot that value,
    EasyQuant rows without it plot ``cos_eq`` and, dashed, ``cos_init``.
    ``epilogue`` is appended to the Markdown. All three files are written
    atomically as a group (``io.atomic``): all of them or, with EqTfliteError
    (e.g. a full disk), none, and earlier reports in ``out_dir`` stay intact.
    """
    from eq_tflite.io.atomic import write_all_atomic
    methods = _by_method(plans_or_rows)
    out = Path(out_dir)
    paths = {"markdown": out / "layers.md", "csv": out / "layers.csv", "png": out / "layers.png"}
    write_all_atomic({paths["markdown"]: (_markdown(methods) + epilogue).encode(),
                      paths["csv"]: _csv(methods).encode(), paths["png"]: _plot(methods)})
    return paths
