"""Per-layer cosine of each method's quantized model against float.

    python tools/layer_report.py --model examples/resnet_fmnist \
        --calibration_data examples/fmnist_calib.npy --bits 7 \
        --methods easyquant,minmax,kl --output_dir report/

Each method runs through the pipeline (``api.convert_model``, its default
number of calibration samples); its plan is then scored on up to
``--score_samples`` calibration samples with ``report.score_plan`` (the
deployed arithmetic, simulated in numpy). Writes layers.md, layers.csv and
layers.png into --output_dir; EasyQuant rows also carry the search's own
per-layer numbers (cos_init, cos_eq, scale ratios, time, memory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel directory, .keras/.h5 or float .tflite.", required=True)
flags.DEFINE_string("calibration_data", None, "Calibration data (.npy/.npz).", required=True)
flags.DEFINE_integer("bits", 7, "Weight and activation bit width.")
flags.DEFINE_list("methods", ["easyquant", "minmax", "kl"], "Methods to compare.")
flags.DEFINE_string("output_dir", "layer_report", "Directory for layers.md/.csv/.png.")
flags.DEFINE_integer("num_calibration_samples", None, "Calibration samples (default: per method).")
flags.DEFINE_integer("score_samples", 256, "Calibration samples the per-layer cosine is measured on.")
flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv: list[str]) -> None:
    del argv
    from eq_tflite import api
    from eq_tflite.errors import EqTfliteError
    from eq_tflite.graph import Graph
    from eq_tflite.io import calibration
    from eq_tflite.report import score_plan, write_layer_report

    try:
        float_model, data = api.load_data_for(FLAGS.model, FLAGS.calibration_data)
        graph = Graph.from_tflite(float_model)
        scoring = calibration.take(data, 0, FLAGS.score_samples)
        rows = {}
        for method in FLAGS.methods:
            conv = api.convert_model(float_model, data, bits=FLAGS.bits, method=method,
                                     num_calibration_samples=FLAGS.num_calibration_samples,
                                     progress=FLAGS.progress)
            searched = {r["op_index"]: r for r in conv.plan.layers}
            rows[method] = [{**searched.get(r["op_index"], {}), **r}
                            for r in score_plan(graph, conv.plan, scoring)]
            mean = sum(r["cosine"] for r in rows[method]) / max(len(rows[method]), 1)
            print(f"{method}: mean per-layer cosine {mean:.6f} "
                  f"({conv.timings['method']:.1f} s, {conv.num_calibration} samples)")
        paths = write_layer_report(rows, FLAGS.output_dir)
    except EqTfliteError as err:
        raise  # one error line and exit code 2 (eq_tflite.cli)
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
