"""What a claimed node costs at its partition boundaries, under the default resolver.

When policy=fastest claims a node inside a graph XNNPACK would otherwise run
whole, XNNPACK's graph is cut there: one more XNNPACK partition per claimed
node, and the tensors at the cut go through TFLite's arena.  This tool
measures that cost on an EfficientNet-Lite-like chain of N blocks
[1x1 conv -> 5x5 depthwise -> 1x1 conv] (the 5x5 depthwise is what the cost
table lets the delegate claim on AVX-512 VNNI CPUs), against the same 5x5
depthwise layer alone:

  layer gain  = XNNPACK ms - delegate ms on the single depthwise layer
  chain gain  = XNNPACK ms - (default resolver + delegate, policy=fastest) ms
                on the chain, whose N depthwise nodes the delegate claims
  boundary cost per claimed node = layer gain - chain gain / N

Trials with fresh interpreters; the four interpreters (layer and chain,
each under XNNPACK alone and with the delegate) are interleaved round by round
in a random order in one process; medians over trials.

    python tools/benchmark_boundary.py --blocks 8 --trials 9 --output BENCHMARKS.md

--mode=cut isolates the boundary: a chain of N blocks [3x3 max pool, small
3x3 depthwise] (default 8x8x16, a few microseconds each) where the delegate
claims every depthwise node (`policy=all`) and XNNPACK keeps the pools, so
the graph is cut 2N times while the kernels themselves take microseconds;
the single depthwise layer gives the kernel-time difference as above.

    python tools/benchmark_boundary.py --mode cut --blocks 16 --size 8 --channels 16 \
        --trials 15 --rounds 200 --output BENCHMARKS.md
"""

from __future__ import annotations

import os
import shlex
import sys
import time

import numpy as np
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:
    import eq_tflite  # noqa: F401
except ImportError:
    sys.path.insert(0, REPO)

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "chain", ["chain", "cut"], "chain: EfficientNet-like blocks, "
                  "policy=fastest; cut: max pool + small depthwise blocks, policy=all.")
flags.DEFINE_integer("blocks", 8, "Blocks in the chain.")
flags.DEFINE_integer("size", 28, "Height = width of the blocks' tensors.")
flags.DEFINE_integer("channels", 240, "Channels of the depthwise layer.")
flags.DEFINE_integer("trials", 9, "Independent trials (fresh interpreters each).")
flags.DEFINE_integer("rounds", 20, "Timed invokes per backend and trial.")
flags.DEFINE_integer("threads", 1, "Interpreter num_threads.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output", "", "Write the 'boundary' section of this Markdown file.")


def chain_model(n: int, h: int, c: int, rng: np.random.Generator) -> bytes:
    import tensorflow as tf

    from bench_models import quantize_keras

    inp = tf.keras.Input((h, h, c // 6), batch_size=1)
    x = inp
    for _ in range(n):
        x = tf.keras.layers.Conv2D(c, 1, activation="relu6")(x)
        x = tf.keras.layers.DepthwiseConv2D(5, padding="same", activation="relu6")(x)
        x = tf.keras.layers.Conv2D(c // 6, 1)(x)
    return quantize_keras(tf.keras.Model(inp, x), 7, rng)


def cut_model(n: int, h: int, c: int, rng: np.random.Generator) -> bytes:
    import tensorflow as tf

    from bench_models import quantize_keras

    inp = tf.keras.Input((h, h, c), batch_size=1)
    x = inp
    for _ in range(n):
        x = tf.keras.layers.MaxPooling2D(3, strides=1, padding="same")(x)
        x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    return quantize_keras(tf.keras.Model(inp, x), 7, rng)


def time_trials(layer: bytes, chain: bytes, rng: np.random.Generator
                ) -> tuple[dict[str, list[float]], dict, dict]:
    """Per trial, the median ms of four interpreters interleaved in one loop:
    XNNPACK and the delegate on the layer, XNNPACK and the delegate on the chain."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from bench_models import _inputs_for
    from eq_tflite.delegate import delegate_stats, load_delegate

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    out: dict[str, list[float]] = {"layer_xnn": [], "layer_dlg": [], "chain_xnn": [],
                                   "chain_dlg": []}
    lst, cst = {}, {}
    t = FLAGS.threads
    for _ in range(FLAGS.trials):
        d_layer = load_delegate({"policy": "all"})
        d_chain = load_delegate({"policy": "fastest" if FLAGS.mode == "chain" else "all"})
        make = {
            "layer_xnn": lambda: Interpreter(model_content=layer, num_threads=t),
            "layer_dlg": lambda: Interpreter(model_content=layer, num_threads=t,
                                             experimental_delegates=[d_layer],
                                             experimental_op_resolver_type=builtin),
            "chain_xnn": lambda: Interpreter(model_content=chain, num_threads=t),
            "chain_dlg": lambda: Interpreter(model_content=chain, num_threads=t,
                                             experimental_delegates=[d_chain]),
        }
        order = list(make)
        rng.shuffle(order)
        its = {k: make[k]() for k in order}
        for it in its.values():
            it.allocate_tensors()
            for det, x in zip(it.get_input_details(), _inputs_for(it, rng)):
                it.set_tensor(det["index"], x)
            for _ in range(3):
                it.invoke()
        times: dict[str, list[float]] = {k: [] for k in its}
        for _ in range(FLAGS.rounds):
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                its[k].invoke()
                times[k].append(time.perf_counter() - t0)
        for k, v in times.items():
            out[k].append(1e3 * float(np.median(v)))
        lst, cst = delegate_stats(d_layer), delegate_stats(d_chain)
    return out, lst, cst


def main(argv: list[str]) -> None:
    del argv
    from bench_doc import machine, update_section
    from bench_models import build_conv_model

    rng = np.random.default_rng(FLAGS.seed)
    n, h, c = FLAGS.blocks, FLAGS.size, FLAGS.channels
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    k = 5 if FLAGS.mode == "chain" else 3
    layer = build_conv_model(h, c, 0, k, 1, 7, rng)
    chain = chain_model(n, h, c, rng) if FLAGS.mode == "chain" else cut_model(n, h, c, rng)
    m, lst, cst = time_trials(layer, chain, rng)
    lx, ld, cx, cd = m["layer_xnn"], m["layer_dlg"], m["chain_xnn"], m["chain_dlg"]
    claimed = cst["claimed"]
    layer_gain = [a - b for a, b in zip(lx, ld)]
    chain_gain = [a - b for a, b in zip(cx, cd)]
    lg, cg = float(np.median(layer_gain)), float(np.median(chain_gain))
    per_node = lg - cg / max(claimed, 1)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = "python " + " ".join(shlex.quote(a) for a in
                               [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    lines = [
        "## Partition boundaries: what a claimed node costs under the default resolver"
        + ("" if FLAGS.mode == "chain" else " (cut: microsecond kernels)"),
        "",
        f"{machine()}; CPU class `{cst.get('cpu_class', '?')}`; {FLAGS.threads} thread(s); "
        f"{FLAGS.trials} trials with fresh interpreters, {FLAGS.rounds} interleaved invokes "
        f"per backend each (random order), medians over trials; load average before "
        f"{load_before}, after {load_after}.",
        "",
        f"Command (from the repo root): `{cmd}`",
        "",
        (f"Chain: {n} blocks [1x1 conv {c // 6}->{c}, 5x5 depthwise {h}x{h}x{c}, 1x1 conv "
         f"{c}->{c // 6}] (7-bit weights); the delegate (default resolver, `policy=fastest`) "
         if FLAGS.mode == "chain" else
         f"Chain: {n} blocks [3x3 max pool, 3x3 depthwise {h}x{h}x{c}] (7-bit weights); the "
         f"delegate (default resolver, `policy=all`) ")
        + f"claimed {claimed} of {cst['considered']} nodes "
        f"({', '.join(sorted({x['kernel'] for x in cst['nodes']})) or 'none'}), so XNNPACK's "
        f"graph is cut into {claimed + 1} partitions. Layer: the {k}x{k} depthwise alone "
        f"(builtin resolver + delegate, `policy=all`, claimed {lst['claimed']}).",
        "",
        "| measurement | XNNPACK ms | delegate ms | gain ms (median over trials) | gain per trial [min-max] |",
        "|---|---:|---:|---:|---|",
        f"| {k}x{k} depthwise layer alone | {np.median(lx):.3f} | {np.median(ld):.3f} | {lg:.4f} | "
        f"[{min(layer_gain):.4f} to {max(layer_gain):.4f}] |",
        f"| chain of {n} blocks | {np.median(cx):.3f} | {np.median(cd):.3f} | {cg:.4f} | "
        f"[{min(chain_gain):.4f} to {max(chain_gain):.4f}] |",
        "",
        f"Boundary cost per claimed node = layer gain - chain gain / {max(claimed, 1)} = "
        f"**{per_node * 1e3:.1f} us** (chain: XNNPACK / (default+delegate) = "
        f"{np.median(cx) / np.median(cd):.3f}).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if FLAGS.output:
        name = "boundary" if FLAGS.mode == "chain" else "boundary_cut"
        update_section(FLAGS.output, name + ("" if FLAGS.threads == 1 else
                                             f"_{FLAGS.threads}threads"), report)


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
