"""Which delegate kernel path each claimed convolution takes on real test data.

    python tools/delegate_paths.py [--limit N] [--output BENCHMARKS.md]

Quantizes the example models at 7 bits (default EasyQuant, strict levels; and
for comparison min/max and EasyQuant with ``--activation_range container``),
runs every test image through the delegate one at a time (batch 1, as an app
does), and counts, per claimed node and invoke, the kernel path the delegate's
input-span check chose. ``direct_*_i16x8`` is the 8-products-per-int16 path
that needs the input inside 128 levels (7 bits); ``i16x4`` is the fallback when
an input spans more. Winograd and depthwise nodes have one path each. It also
checks that every output is bit-exact with TFLite's builtin kernels.
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
flags.DEFINE_list("models", ["resnet_fmnist", "mobilenetv2_fmnist"], "Example models under examples/.")
flags.DEFINE_integer("limit", None, "Use the first N test images (default: all 10k).")
flags.DEFINE_string("output", None, "Markdown file whose 'delegate_paths' section is rewritten.")

VARIANTS = [("easyquant", "strict"), ("minmax", "strict"), ("easyquant", "container")]


def count_paths(model: bytes, x) -> tuple[dict[str, int], int, bool]:
    """(node-invokes per path, direct-conv node-invokes, bit-exact with builtin) over ``x``."""
    import numpy as np

    from eq_tflite import runtime
    from eq_tflite.delegate import delegate_stats, load_delegate
    d = load_delegate({"policy": "all"})  # the kernels, on every supported node
    ours = runtime.run_model(runtime.make_interpreter(model, delegates=[d]), [x])[0]
    ref = runtime.run_model(runtime.make_interpreter(model), [x])[0]
    paths: dict[str, int] = {}
    direct = 0
    for node in delegate_stats(d)["nodes"]:
        for path, n in node["paths"].items():
            paths[path] = paths.get(path, 0) + n
            if path.startswith("direct_"):
                direct += n
    return paths, direct, bool(np.array_equal(ours, ref))


def main(argv: list[str]) -> None:
    del argv
    sys.path.insert(0, str(REPO / "tools"))
    import numpy as np

    from eq_tflite import api
    from eq_tflite.datasets import load_fashion_mnist
    x, _ = load_fashion_mnist("test")
    x = x[:FLAGS.limit] if FLAGS.limit else x
    calib = np.load(REPO / "examples" / "fmnist_calib.npy")
    cmd = "python tools/delegate_paths.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = ["## Delegate kernel paths on test data", "",
             f"Command: `{cmd}`", "",
             f"{len(x)} Fashion-MNIST test images, one invoke each (batch 1). A *node-invoke* is "
             "one claimed convolution run once. `i16x8` = 8 products per int16 lane (input within "
             "128 levels); `i16x4` = the exact fallback for wider inputs. Share = i16x8 node-invokes "
             "/ all direct-convolution node-invokes.", "",
             "| model | quantization (7-bit) | i16x8 share of direct convs | paths (node-invokes) | "
             "bit-exact vs builtin |", "|---|---|---|---|---|"]
    for name in FLAGS.models:
        src = str(REPO / "examples" / name)
        for method, mode in VARIANTS:
            model = api.quantize(src, calib, bits=7, method=method, activation_range=mode)
            paths, direct, exact = count_paths(model, x)
            x8 = sum(n for p, n in paths.items() if p.endswith("i16x8"))
            label = f"{method}" + (" *container (7-bit step, 8-bit range)*" if mode == "container" else "")
            detail = ", ".join(f"{p} {n}" for p, n in sorted(paths.items()))
            lines.append(f"| {name} | {label} | {100 * x8 / max(direct, 1):.1f}% | {detail} | "
                         f"{'yes' if exact else 'NO'} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if FLAGS.output:
        from bench_doc import update_section
        update_section(FLAGS.output, "delegate_paths", text)


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
