"""Per-layer report: scoring any plan, and the Markdown/CSV/PNG files."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np

from eq_tflite import methods
from eq_tflite.graph import Graph
from eq_tflite.grid import BitWidths
from eq_tflite.plan import MethodContext
from eq_tflite.report import score_plan, write_layer_report



def test_scores_plans_and_writes_report(tmp_path, small_float_tflite, small_calibration):
    graph = Graph.from_tflite(small_float_tflite)
    data = {graph.tensors[graph.inputs[0]].name: small_calibration}
    rows = {}
    for name in ("minmax", "easyquant"):
        ctx = MethodContext(graph, small_float_tflite, data, BitWidths(6, 6),
                            {"eq_steps": 30, "eq_max_rows": 512}, progress=False)
        plan = methods.get(name)(ctx)
        rows[name] = score_plan(graph, plan, data, batch_size=20)
    assert [r["op_index"] for r in rows["minmax"]] == [op.index for op in graph.weighted_ops()]
    for method_rows in rows.values():
        assert all(0.9 < r["cosine"] <= 1.0 + 1e-9 for r in method_rows)
    # EQ's layer cosines, measured on the whole simulated model, beat min/max on average.
    assert np.mean([r["cosine"] for r in rows["easyquant"]]) > \
        np.mean([r["cosine"] for r in rows["minmax"]])

    paths = write_layer_report(rows, tmp_path)
    md = paths["markdown"].read_text()
    assert "| op | type | weights | minmax | easyquant |" in md
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert {r["method"] for r in table} == {"minmax", "easyquant"}
    assert len(table) == 2 * len(graph.weighted_ops())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_plan_report_plots_initial_and_eq(tmp_path, small_float_tflite, small_calibration):
    graph = Graph.from_tflite(small_float_tflite)
    ctx = MethodContext(graph, small_float_tflite,
                        {graph.tensors[graph.inputs[0]].name: small_calibration[:16]},
                        BitWidths(7, 7), {"eq_steps": 20, "eq_max_rows": 256}, progress=False)
    plan = methods.get("easyquant")(ctx)
    paths = write_layer_report(plan, tmp_path)
    md = paths["markdown"].read_text()
    assert "## easyquant" in md and "cos_init" in md and "peak RSS" in md
    assert paths["png"].stat().st_size > 1000
    # seconds per layer type: every weighted op counted once, search and simulation times summed
    by_type = [l.split("|")[1:-1] for l in md.splitlines() if l.startswith("| ") and l.count("|") == 5
               and l.split("|")[1].strip() in {r["op_type"] for r in plan.layers}]
    assert sum(int(c[1]) for c in by_type) == len(graph.weighted_ops())
    assert abs(sum(float(c[2]) for c in by_type) - sum(r["seconds"] for r in plan.layers)) < 0.1 * len(by_type)
    assert all(r["simulate_s"] >= 0 and r["seconds"] > 0 for r in plan.layers)


def test_layer_report_tool(tmp_path, examples_dir, small_float_path, small_calibration_path):
    out = subprocess.run(
        [sys.executable, str(examples_dir.parent / "tools" / "layer_report.py"), "--model", str(small_float_path),
         "--calibration_data", str(small_calibration_path), "--methods", "minmax,easyquant",
         "--bits", "7", "--output_dir", str(tmp_path), "--noprogress"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "easyquant: mean per-layer cosine" in out.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"layers.md", "layers.csv", "layers.png"}


def test_conversion_report(tmp_path, small_float_tflite, small_calibration):
    from eq_tflite import api
    from eq_tflite.report import write_conversion_report
    conv = api.convert_model(small_float_tflite, small_calibration, bits=7, method="minmax")
    graph = Graph.from_tflite(small_float_tflite)
    inputs = {graph.tensors[graph.inputs[0]].name: small_calibration[:16]}
    md = write_conversion_report(conv, tmp_path / "scored", inputs)["markdown"].read_text()
    assert "## minmax" in md and "## Conversion" in md and "cosine" in md
    md = write_conversion_report(conv, tmp_path / "rows_only")["markdown"].read_text()
    assert "records no per-layer rows" in md
