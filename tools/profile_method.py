"""Where a method's time goes on a real-model suite model: search vs simulation, per layer type.

    python tools/profile_method.py [--model efficientnet_lite1] [--method easyquant] [--bits 7]
        [--samples 50] [--functions 20]

Runs the method stage alone in this process (no conversion around it) on the
suite's float model and calibration crops (``python -m benchmarks.real_models.build``),
sums the layer walk's report rows (``seconds``: the layer's search;
``simulate_s``: the simulations up to it) per layer type, and prints the
functions with the most own time (cProfile). Seconds depend on the machine's
load; the split is what this is for.
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ (the suite's cache location), and eq_tflite if not installed

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnet_lite1", "Suite model (a folder of the suite's cache).")
flags.DEFINE_string("method", "easyquant", "Method to profile.")
flags.DEFINE_integer("bits", 7, "Weight and activation bits.")
flags.DEFINE_integer("samples", 50, "Calibration crops (the first N of calib.npy).")
flags.DEFINE_integer("functions", 20, "Functions to list by own time.")
flags.DEFINE_enum("sort", "tottime", ["tottime", "cumulative"], "Order of the function list.")


def main(argv: list[str]) -> int:
    del argv
    import numpy as np

    from benchmarks.real_models import default_cache_dir
    from eq_tflite import api, methods
    from eq_tflite.cli import fail
    from eq_tflite.graph import Graph
    from eq_tflite.grid import BitWidths
    from eq_tflite.plan import MethodContext
    folder = default_cache_dir() / FLAGS.model
    if not (folder / "float.tflite").exists():
        return fail(f"no suite model {FLAGS.model} in {folder.parent} "
                    "(python -m benchmarks.real_models.build)")
    model = api.float_model_of(str(folder / "float.tflite"))  # as a conversion reads it
    graph = Graph.from_tflite(model)
    data = {graph.tensors[graph.inputs[0]].name: np.load(folder / "calib.npy")[:FLAGS.samples]}
    ctx = MethodContext(graph, model, data, BitWidths(FLAGS.bits, FLAGS.bits), progress=False)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    plan = methods.get(FLAGS.method)(ctx)
    profile.disable()
    total = time.perf_counter() - start
    kinds: dict[str, list[float]] = {}
    for row in plan.layers:
        one_by_one = row["weight_shape"].split("x")[1:3] == ["1", "1"]
        kind = row["op_type"] + (" 1x1" if row["op_type"] == "CONV_2D" and one_by_one else "")
        acc = kinds.setdefault(kind, [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += row.get("seconds", 0.0)
        acc[2] += row.get("simulate_s", 0.0)
    print(f"{FLAGS.method} on {FLAGS.model}, W{FLAGS.bits}A{FLAGS.bits}, {FLAGS.samples} samples: "
          f"{total:.1f} s; search {sum(k[1] for k in kinds.values()):.1f} s, "
          f"simulate {sum(k[2] for k in kinds.values()):.1f} s")
    print("| layers | count | search s | simulate s |\n|---|---|---|---|")
    for kind, (n, search, sim) in sorted(kinds.items()):
        print(f"| {kind} | {n} | {search:.1f} | {sim:.1f} |")
    pstats.Stats(profile).sort_stats(FLAGS.sort).print_stats(FLAGS.functions)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
