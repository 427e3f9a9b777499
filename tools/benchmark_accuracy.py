"""Accuracy benchmark: every method x bit width on the Fashion-MNIST example models.

    python tools/benchmark_accuracy.py

For each model it measures the float model and TFLite's own INT8 model, then
each method at each W/A bit width: top-1 accuracy on the 10k test split, top-1
agreement and mean logit cosine against float (TFLite's builtin kernels),
the method's calibration seconds and peak memory. Each cell runs in a fresh
process (so peak RSS is that cell's own). It also times EasyQuant against
TFLite's own int8 conversion of the same model and samples, side by side in one
process (medians), and writes a Markdown report with the command and machine.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet_fmnist", "mobilenetv2_fmnist"], "Example models under examples/.")
flags.DEFINE_list("methods", ["minmax", "kl", "easyquant"], "Methods to benchmark.")
flags.DEFINE_list("bits", ["8", "7", "6", "5"], "W/A bit widths.")
flags.DEFINE_list("container_bits", ["7", "6", "5"],
                  "Bit widths at which EasyQuant also runs with --activation_range container "
                  "(b-bit step, 8-bit range), for comparison.")
flags.DEFINE_string("calibration_data", str(REPO / "examples" / "fmnist_calib.npy"), "Calibration .npy.")
flags.DEFINE_integer("limit", None, "Evaluate on the first N test images only (default: all 10k).")
flags.DEFINE_integer("timing_runs", 3, "Runs per side for the EQ / TFLite conversion-time ratio.")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'accuracy' section is rewritten.")


def _test_data():
    from eq_tflite.datasets import load_fashion_mnist
    x, y = load_fashion_mnist("test")
    return (x[:FLAGS.limit], y[:FLAGS.limit]) if FLAGS.limit else (x, y)


def _cell(model_dir: str, method: str | None, bits: int, calib_path: str, limit: int | None,
          queue, activation_range: str = "strict") -> None:
    """One table cell, in a fresh process. method None = TFLite's own INT8; 'float' = float."""
    import numpy as np

    from eq_tflite import api
    from eq_tflite.datasets import load_fashion_mnist
    from eq_tflite.evaluation import predict, score
    from eq_tflite.tflite_quantizer import calibrated
    from eq_tflite.verify import activation_levels
    x, y = load_fashion_mnist("test")
    if limit:
        x, y = x[:limit], y[:limit]
    calib = np.load(calib_path)
    float_model = api.float_model_of(model_dir)
    reference = predict(float_model, x)
    row = {"seconds": None, "peak_heap_mib": None}
    if method == "float":
        model = float_model
    elif method is None:
        from eq_tflite.graph import Graph
        graph = Graph.from_tflite(float_model)
        name = graph.tensors[graph.inputs[0]].name
        t0 = time.perf_counter()
        model = calibrated(float_model, {name: calib}, [name]).to_bytes()
        row["seconds"] = time.perf_counter() - t0
        row["samples"] = len(calib)
    else:
        tracemalloc.start()
        conv = api.convert_model(float_model, calib, bits=bits, method=method,
                                 activation_range=activation_range)
        row["peak_heap_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        model, row["seconds"] = conv.model, conv.timings["method"]
        row["samples"] = conv.num_calibration
    s = score(predict(model, x), reference, y)
    if method not in ("float", None):
        levels = activation_levels(model, [x], bits)
        row["outside"], row["worst_outside"] = levels.share, levels.worst()[1]
    row.update(accuracy=s.accuracy, agreement=s.agreement, cosine=s.cosine,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put(row)


def _run_cell(*args, activation_range: str = "strict") -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cell, args=(*args, queue, activation_range))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def _timing_ratio(model_dir: str, calib_path: str, runs: int) -> tuple[float, float, float]:
    """Median EQ calibration seconds, median TFLite int8 conversion seconds, and their ratio.

    TFLite's side is the full ``TFLiteConverter`` path from the SavedModel with
    the same 50 samples as a representative dataset; EQ's side is the method
    stage alone. The two alternate in one process so they share machine noise.
    """
    import numpy as np
    import tensorflow as tf

    from eq_tflite import api
    from eq_tflite.graph import Graph
    from eq_tflite.grid import BitWidths
    from eq_tflite.methods import get
    from eq_tflite.plan import MethodContext
    calib = np.load(calib_path)[:api.DEFAULT_SAMPLES["easyquant"]]
    float_model = api.float_model_of(model_dir)
    graph = Graph.from_tflite(float_model)
    name = graph.tensors[graph.inputs[0]].name
    eq_times, tfl_times = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        conv = tf.lite.TFLiteConverter.from_saved_model(model_dir)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.convert()
        tfl_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        get("easyquant")(MethodContext(graph, float_model, {name: calib}, BitWidths(7, 7), {"seed": 0},
                                       progress=False))
        eq_times.append(time.perf_counter() - t0)
    eq, tfl = statistics.median(eq_times), statistics.median(tfl_times)
    return eq, tfl, eq / tfl


def _machine() -> str:
    from bench_doc import machine
    return machine()


def main(argv: list[str]) -> None:
    del argv
    from eq_tflite.io.atomic import write_atomic
    lines = ["## Accuracy", "",
             f"Command: `{' '.join(['python tools/benchmark_accuracy.py', *sys.argv[1:]])}`", "",
             f"Machine: {_machine()}", "",
             "Fashion-MNIST test split" + (f" (first {FLAGS.limit})" if FLAGS.limit else " (10,000 images)")
             + f"; calibration: `{Path(FLAGS.calibration_data).name}` (each method's default sample "
             "count, shown as N). Metrics on TFLite's builtin kernels "
             "(BUILTIN_WITHOUT_DEFAULT_DELEGATES); agreement and cosine are against the float model's "
             "outputs. Outside: share of all int8 activation values (10k test images) outside the "
             "b-bit levels, and of the worst tensor (fixed-scale softmax outputs excluded). Rows "
             "marked *container* use `--activation_range container`: a b-bit step over an 8-bit "
             "range, not b-bit activations. "
             "Seconds: the method stage (TFLite INT8 row: its calibrate+quantize). Peak heap: "
             "Python/numpy allocations during the whole conversion (tracemalloc); peak RSS: the cell's "
             "whole process, TensorFlow included.", ""]
    results = {}
    for model in FLAGS.models:
        model_dir = str(REPO / "examples" / model)
        lines += [f"### {model}", "", "| method | W/A | N | top-1 % | agreement % | cosine | "
                  "outside % (worst %) | seconds | peak heap MiB | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        cells = [("float", "float", 32, "strict"), ("TFLite INT8", None, 8, "strict")]
        for b in FLAGS.bits:
            cells += [(m, m, int(b), "strict") for m in FLAGS.methods]
            if "easyquant" in FLAGS.methods and b in FLAGS.container_bits:
                cells.append(("easyquant *container*", "easyquant", int(b), "container"))
        for label, method, bits, mode in cells:
            row = _run_cell(model_dir, method, bits, FLAGS.calibration_data, FLAGS.limit,
                            activation_range=mode)
            results[f"{model}/{label}/{bits}"] = row
            wa = "fp32" if method == "float" else f"{bits}/{bits}"
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            outside = "-" if "outside" not in row else \
                f"{100 * row['outside']:.3f} ({100 * row['worst_outside']:.2f})"
            lines.append(f"| {label} | {wa} | {row.get('samples', '-')} | "
                         f"{100 * row['accuracy']:.2f} | {100 * row['agreement']:.2f} | {row['cosine']:.5f} | "
                         f"{outside} | "
                         f"{fmt(row['seconds'], '.2f')} | {fmt(row['peak_heap_mib'], '.0f')} | "
                         f"{row['peak_rss_mib']:.0f} |")
            print(lines[-1], flush=True)
        lines.append("")
    if "easyquant" in FLAGS.methods:
        lines += ["### EasyQuant calibration time vs TFLite's own int8 conversion", "",
                  f"Same model, same 50 samples, alternating in one process, median of {FLAGS.timing_runs}. "
                  "TFLite: `TFLiteConverter.from_saved_model` with a representative dataset (float "
                  "conversion + calibration + quantization). EQ: the method stage at W7/A7.", "",
                  "| model | EQ s | TFLite int8 s | ratio |", "|---|---|---|---|"]
        for model in FLAGS.models:
            eq, tfl, ratio = _timing_ratio(str(REPO / "examples" / model), FLAGS.calibration_data,
                                           FLAGS.timing_runs)
            results[f"{model}/timing"] = {"eq": eq, "tflite": tfl, "ratio": ratio}
            lines.append(f"| {model} | {eq:.2f} | {tfl:.2f} | {ratio:.2f}x |")
            print(lines[-1], flush=True)
    from bench_doc import update_section
    update_section(FLAGS.output, "accuracy", "\n".join(lines))
    write_atomic(REPO / "benchmarks" / "accuracy.json", json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
