"""EasyQuant's per-layer search (weights, then the input scale) timed on layers of real-model shapes.

    python tools/benchmark_eq_layers.py [--layers dw5x5x672,project1152x192] [--rows 4096]

Builds seeded synthetic layers with the shapes of EfficientNet-Lite1's
largest blocks (4,096 sampled rows of 64 samples, W7A7, the default options:
activation objective, coarse-to-fine input search) and times
``easyquant._search`` on each in this process. It prints the seconds and
what the search chose (the layer cosine, the input range and the mean weight
step), so two checkouts run side by side (``PYTHONPATH=...``) show both the
time and that they choose the same scales. Run both at the same time on a
shared machine: only side-by-side times compare.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:  # the installed package, or the checkout named by PYTHONPATH
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
#: name -> (kind, K (taps or inputs), C (channels or outputs), fused activation)
LAYERS = {"dw5x5x672": ("dw", 25, 672, "RELU6"), "dw3x3x1152": ("dw", 9, 1152, "RELU6"),
          "expand112x672": ("fc", 112, 672, "RELU6"), "project672x112": ("fc", 672, 112, "NONE"),
          "project1152x192": ("fc", 1152, 192, "NONE")}
flags.DEFINE_list("layers", list(LAYERS), "Layers to time.")
flags.DEFINE_integer("rows", 4096, "Sampled rows (64 samples).")


def problem(kind: str, k: int, c: int, act: str, r: int, seed: int = 0):
    """A seeded layer: (LayerProblem, initial input (scale, zp), input range)."""
    import numpy as np

    from eq_tflite import grid, simulate
    from eq_tflite.graph import Op
    from eq_tflite.grid import BitWidths
    from eq_tflite.methods import easyquant as eq
    rng = np.random.default_rng(seed)
    if kind == "dw":
        side = int(round(k ** 0.5))
        lin = simulate.Linear(Op(0, "DEPTHWISE_CONV_2D", [0, 1, 2], [3]), (1, side, side, c), c)
        rows = np.maximum(rng.normal(size=(r, k, c)), 0).astype(np.float32) * 3  # after a ReLU6
        matrix = (rng.normal(size=(k, c)) * 0.2).astype(np.float32)
    else:
        lin = simulate.Linear(Op(0, "FULLY_CONNECTED", [0, 1, 2], [3]), (c, k), k)
        rows = rng.normal(size=(r, k)).astype(np.float32)
        matrix = (rng.normal(size=(k, c)) / np.sqrt(k)).astype(np.float32)
    bias = (rng.normal(size=c) * 0.1).astype(np.float32)
    linear = lin.apply(rows, matrix) + bias
    linear = (linear + 0.01 * rng.normal(size=linear.shape)).astype(np.float32)
    target = simulate.apply_activation(act, linear)
    s = 64
    lo, hi = float(min(rows.min(), 0)), float(rows.max())
    tails = eq.InputTails.of(rows, lo, hi, 0.9 / eq.Options().beta)
    p = eq.LayerProblem(lin, rows, target.reshape(s, r // s, -1), matrix, bias, act, BitWidths(7, 7),
                        tails, linear.reshape(s, r // s, -1) if act != "NONE" else None)
    return p, grid.activation_params(lo, hi, 7), (lo, hi)


def main(argv: list[str]) -> int:
    del argv
    from eq_tflite.cli import fail
    from eq_tflite.methods import easyquant as eq
    unknown = [n for n in FLAGS.layers if n not in LAYERS]
    if unknown or FLAGS.rows < 64 or FLAGS.rows % 64:
        return fail(f"--layers from {', '.join(LAYERS)}; --rows a positive multiple of 64")
    print(f"eq_tflite from {os.path.dirname(eq.__file__)}")
    total = 0.0
    for name in FLAGS.layers:
        p, act, base = problem(*LAYERS[name], FLAGS.rows)
        t0 = time.perf_counter()
        row, act_range, scales = eq._search(p, eq.Options(), act, base)
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name}: {dt:.1f} s; cos {row['cos_eq']:.6f}, input range "
              f"[{act_range[0]:.6f}, {act_range[1]:.6f}], mean weight step {scales.mean():.6g}", flush=True)
    print(f"total {total:.1f} s")
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
