"""DFQ / SPIQ / composition benchmark on the Fashion-MNIST example models (10k test images).

    python tools/benchmark_dfq.py

Writes the ``dfq`` section of BENCHMARKS.md and benchmarks/dfq.json:

* the DFQ table (paper style, W8A8): ranges only, + cross-layer equalization,
  + bias absorption (exact; and with padded consumers, the paper's
  approximation), + bias correction; per-tensor and per-channel weights;
  data-free (BN ranges, data-free bias correction, no data at all) beside
  data-calibrated (min/max ranges, empirical bias correction);
* references: float and TFLite's own INT8 (calibrated, per-channel);
* composition: EasyQuant alone vs EasyQuant + CLE + empirical bias correction at 6 and 5 bits;
* SPIQ vs DFQ, data-free, W8A8 and W6A6;
* (``--tables lowbit --section dfq_lowbit``) per-tensor 6/5/4-bit weights,
  data-free, with and without CLE: where equalization matters.

Sources are the Keras copies (examples/*.keras, BatchNorm kept); every cell
runs in a fresh process.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet_fmnist", "mobilenetv2_fmnist"], "Example models (examples/<name>.keras).")
flags.DEFINE_string("calibration_data", str(REPO / "examples" / "fmnist_calib.npy"), "Calibration .npy.")
flags.DEFINE_integer("limit", None, "Evaluate on the first N test images only (default: all 10k).")
flags.DEFINE_list("tables", ["dfq", "composition", "spiq"],
                  "Tables to run: dfq, composition, spiq, lowbit (per-tensor low-bit weights +- CLE).")
flags.DEFINE_string("section", "dfq", "BENCHMARKS.md section (and benchmarks/<section>.json) to write.")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose section is rewritten.")

INPUT_RANGE = (0.0, 1.0)
#: DFQ table rows: (label, chain keyword arguments added on top of the base).
DFQ_ROWS = [
    ("ranges only", dict(cross_layer_equalization=False, bias_absorption=False, bias_correction="off")),
    ("+ CLE", dict(cross_layer_equalization=True, bias_absorption=False, bias_correction="off")),
    ("+ CLE + absorption", dict(cross_layer_equalization=True, bias_absorption=True, bias_correction="off")),
    ("+ CLE + absorption (padded too)", dict(cross_layer_equalization=True, bias_absorption=True,
                                             bias_correction="off", method_options={"absorb_padded": True})),
    ("+ CLE + absorption + bias correction", dict(cross_layer_equalization=True, bias_absorption=True,
                                                  bias_correction="BC")),
]


def _cell(model: str, spec: dict, calib_path: str, limit: int | None, queue) -> None:
    """One cell in a fresh process: convert (or reference), then score on the test split."""
    import numpy as np

    from eq_tflite import api
    from eq_tflite.datasets import load_fashion_mnist
    from eq_tflite.evaluation import predict
    x, y = load_fashion_mnist("test")
    if limit:
        x, y = x[:limit], y[:limit]
    src = str(REPO / "examples" / f"{model}.keras")
    float_model = api.float_model_of(src)
    row: dict = {"seconds": None}
    kind = spec.get("kind")
    if kind == "float":
        out = float_model
    elif kind == "tflite":
        from eq_tflite.graph import Graph
        from eq_tflite.tflite_quantizer import calibrated
        graph = Graph.from_tflite(float_model)
        name = graph.tensors[graph.inputs[0]].name
        out = calibrated(float_model, {name: np.load(calib_path)}, [name]).to_bytes()
    else:
        kwargs = dict(spec["kwargs"])
        data = np.load(calib_path) if spec.get("data") else None
        if data is None:
            kwargs["input_range"] = INPUT_RANGE
        t0 = time.perf_counter()
        conv = api.convert_model(src, data, **kwargs)
        row["seconds"] = time.perf_counter() - t0
        row["steps"] = conv.plan.steps
        row["notes"] = conv.plan.notes
        out = conv.model
    row["accuracy"] = float(np.mean(predict(out, x).argmax(1) == y))
    queue.put(row)


def _run(model: str, spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cell, args=(model, spec, FLAGS.calibration_data, FLAGS.limit, queue))
    proc.start()
    row = queue.get()
    proc.join()
    print(model, json.dumps({k: v for k, v in spec.items()}), f"{100 * row['accuracy']:.2f}",
          flush=True)
    return row


def _pct(row: dict) -> str:
    return f"{100 * row['accuracy']:.2f}"


def _dfq_table(model: str, results: dict) -> list[str]:
    lines = [f"#### {model}: DFQ, W8A8", "",
             "| steps | per-tensor, data-free | per-tensor, calibrated | per-channel, data-free | "
             "per-channel, calibrated |", "|---|---|---|---|---|"]
    for label, extra in DFQ_ROWS:
        cells = []
        for per_tensor in (True, False):
            for data in (False, True):
                kwargs = dict(extra, bits=8, per_tensor_weights=per_tensor,
                              method="minmax" if data else "dfq")
                if kwargs.get("bias_correction") == "BC":
                    kwargs["bias_correction"] = "empirical" if data else "data_free"
                key = f"{model}/dfq/{label}/{'pt' if per_tensor else 'pc'}/{'data' if data else 'free'}"
                results[key] = row = _run(model, {"kwargs": kwargs, "data": data})
                cells.append(_pct(row))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _composition(model: str, results: dict) -> list[str]:
    lines = [f"#### {model}: EasyQuant with CLE and bias correction", "",
             "| W/A | EasyQuant | EasyQuant + CLE + bias correction (empirical) |",
             "|---|---|---|"]
    for bits in (6, 5):
        cells = []
        for extra in ({}, {"cross_layer_equalization": True, "bias_correction": "empirical"}):
            kwargs = dict(extra, bits=bits, method="easyquant")
            key = f"{model}/composition/{bits}/{'+'.join(sorted(extra)) or 'alone'}"
            results[key] = row = _run(model, {"kwargs": kwargs, "data": True})
            cells.append(_pct(row))
        lines.append(f"| W{bits}A{bits} | " + " | ".join(cells) + " |")
    return lines + [""]


def _spiq(model: str, results: dict) -> list[str]:
    lines = [f"#### {model}: SPIQ vs DFQ, data-free", "",
             "| W/A | DFQ (default chain) | SPIQ |", "|---|---|---|"]
    for bits in (8, 6):
        cells = []
        for kwargs in (dict(method="dfq"), dict(method="spiq")):
            kwargs = dict(kwargs, bits=bits)
            key = f"{model}/spiq/{bits}/{kwargs['method']}/{kwargs.get('bias_correction', 'default')}"
            results[key] = row = _run(model, {"kwargs": kwargs, "data": False})
            cells.append(_pct(row))
        lines.append(f"| W{bits}A{bits} | " + " | ".join(cells) + " |")
    return lines + [""]


def _machine() -> str:
    from bench_doc import machine
    return machine()


def _lowbit(model: str, results: dict) -> list[str]:
    """Where CLE matters: per-tensor weights below 8 bits (activations 8-bit), data-free."""
    lines = [f"#### {model}: per-tensor low-bit weights, data-free, with and without CLE", "",
             "| weights/activations | ranges only | + CLE | + CLE (RELU6 as RELU) | default chain (CLE, absorption, bias correction) |",
             "|---|---|---|---|---|"]
    for wbits in (6, 5, 4):
        cells = []
        for extra in (dict(cross_layer_equalization=False, bias_absorption=False, bias_correction="off"),
                      dict(cross_layer_equalization=True, bias_absorption=False, bias_correction="off"),
                      dict(cross_layer_equalization=True, bias_absorption=False, bias_correction="off",
                           method_options={"cle_relu6": "relu"}),
                      {}):
            kwargs = dict(extra, bits=8, weight_bits=wbits, per_tensor_weights=True, method="dfq")
            key = f"{model}/lowbit/{wbits}/{json.dumps(extra, sort_keys=True)}"
            results[key] = row = _run(model, {"kwargs": kwargs, "data": False})
            cells.append(_pct(row))
        lines.append(f"| W{wbits}A8 per-tensor | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: list[str]) -> None:
    del argv
    from eq_tflite.io.atomic import write_atomic
    title = "DFQ, SPIQ and composed chains" if FLAGS.section == "dfq" else \
        f"DFQ: {', '.join(FLAGS.tables)}"
    lines = [f"## {title}", "",
             f"Command: `{' '.join(['python tools/benchmark_dfq.py', *sys.argv[1:]])}`", "",
             f"Machine: {_machine()}", "",
             "Top-1 % on the Fashion-MNIST test split"
             + (f" (first {FLAGS.limit})" if FLAGS.limit else " (10,000 images)")
             + ", TFLite's builtin kernels. Sources: `examples/<model>.keras` (BatchNorm kept; same "
             "float outputs as the SavedModels). *Data-free*: no data at all, `--input_range 0,1`, "
             "BN-derived ranges (`--method dfq`) and data-free bias correction. *Calibrated*: "
             f"`{Path(FLAGS.calibration_data).name}` (256 training images), min/max ranges and "
             "empirical bias correction. Per-tensor: one weight scale per tensor "
             "(`--per_tensor_weights`). Strict b-bit levels everywhere.", ""]
    results: dict = {}
    for model in FLAGS.models:
        lines += [f"### {model}", ""]
        ref = {k: _run(model, {"kind": k}) for k in ("float", "tflite")}
        results[f"{model}/float"], results[f"{model}/tflite"] = ref["float"], ref["tflite"]
        lines += [f"Float: {_pct(ref['float'])}. TFLite's own INT8 (calibrated on the same 256 "
                  f"images, per-channel): {_pct(ref['tflite'])}.", ""]
        if "dfq" in FLAGS.tables:
            lines += _dfq_table(model, results)
        if "composition" in FLAGS.tables:
            lines += _composition(model, results)
        if "spiq" in FLAGS.tables:
            lines += _spiq(model, results)
        if "lowbit" in FLAGS.tables:
            lines += _lowbit(model, results)
    from bench_doc import update_section
    update_section(FLAGS.output, FLAGS.section, "\n".join(lines))
    write_atomic(REPO / "benchmarks" / f"{FLAGS.section}.json", json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    app.run(main)
