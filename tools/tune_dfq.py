"""How the data-free defaults were chosen: k (BN ranges beta +- k gamma) and CLE's RELU6 policy.

    python tools/tune_dfq.py

Measured on 2,000 Fashion-MNIST *training* images (the last 2,000 of the train
split; the test split is never used for choices): top-1 agreement with the
float model of the data-free W8A8 chain, per-channel and per-tensor weights,
for several k and for CLE with RELU6 treated as RELU, CLE skipping RELU6
pairs, and no CLE. Writes the ``dfq_choices`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet_fmnist", "mobilenetv2_fmnist"], "Example models (examples/<name>.keras).")
flags.DEFINE_list("sigmas", ["4", "6", "8", "10"], "Values of k to compare (CLE skipping RELU6).")
flags.DEFINE_integer("samples", 2000, "Training images used (the last N of the train split).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'dfq_choices' section is rewritten.")


def _machine() -> str:
    from bench_doc import machine
    return machine()


def main(argv: list[str]) -> None:
    del argv
    import numpy as np

    from bench_doc import update_section
    from eq_tflite import api
    from eq_tflite.datasets import load_fashion_mnist
    from eq_tflite.evaluation import predict
    x = load_fashion_mnist("train")[0][-FLAGS.samples:]
    variants = [(f"k={k}", {"dfq_sigmas": float(k)}, {}) for k in FLAGS.sigmas]
    variants += [("CLE, RELU6 as RELU (k=8)", {"cle_relu6": "relu"}, {}),
                 ("CLE, RELU6 pairs skipped (k=8)", {"cle_relu6": "skip"}, {}),
                 ("no CLE (k=8)", {}, {"cross_layer_equalization": False})]
    lines = ["## Data-free defaults (k, RELU6 policy)", "",
             f"Command: `{' '.join(['python tools/tune_dfq.py', *sys.argv[1:]])}`", "",
             f"Machine: {_machine()}", "",
             f"Top-1 agreement % with the float model on the last {FLAGS.samples} Fashion-MNIST "
             "*training* images (never the test split), data-free W8A8 default chain (CLE, "
             "absorption, BN ranges, data-free bias correction), `--input_range 0,1`.", "",
             "| variant | " + " | ".join(f"{m} per-channel | {m} per-tensor" for m in FLAGS.models) + " |",
             "|---|" + "---|---|" * len(FLAGS.models)]
    for label, options, extra in variants:
        cells = []
        for model in FLAGS.models:
            src = str(REPO / "examples" / f"{model}.keras")
            ref = predict(api.float_model_of(src), x).argmax(1)
            for per_tensor in (False, True):
                conv = api.convert_model(src, bits=8, input_range=(0.0, 1.0), method="dfq",
                                         per_tensor_weights=per_tensor, method_options=options,
                                         **extra)
                cells.append(f"{100 * np.mean(predict(conv.model, x).argmax(1) == ref):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    update_section(FLAGS.output, "dfq_choices", "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
