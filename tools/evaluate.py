"""Accuracy and agreement of quantized .tflite models against the float model.

    python tools/evaluate.py --models out_w7a7.tflite,out_w8a8.tflite \
        --reference examples/resnet_fmnist --data fashion_mnist [--delegate]

For each model and each kernel set (TFLite's own builtin kernels, the default
XNNPACK path, and with --delegate the eq-tflite delegate) it prints top-1
accuracy (when labels exist), top-1 agreement with float and mean output cosine.
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
flags.DEFINE_list("models", None, "One or more .tflite files to evaluate.", required=True)
flags.DEFINE_string("reference", None, "Float model (SavedModel, .keras/.h5 or float .tflite).",
                    required=True)
flags.DEFINE_string("data", "fashion_mnist", "'fashion_mnist' or an .npz with x and optional y.")
flags.DEFINE_integer("limit", None, "Evaluate only the first N samples.")
flags.DEFINE_bool("xnnpack", True, "Also run the default (XNNPACK) kernels.")
flags.DEFINE_bool("delegate", False, "Also run with the eq-tflite Winograd/int16 delegate.")


def main(argv: list[str]) -> None:
    del argv
    from eq_tflite import api
    from eq_tflite.evaluation import load_eval_data, predict, score
    from eq_tflite.io.file_safety import read_file

    x, y = load_eval_data(FLAGS.data)
    if FLAGS.limit:
        x, y = x[:FLAGS.limit], (None if y is None else y[:FLAGS.limit])
    reference = predict(api.float_model_of(FLAGS.reference), x)
    ref_scores = score(reference, reference, y)
    backends = [("builtin", dict(builtin_kernels=True))]
    if FLAGS.xnnpack:
        backends.append(("xnnpack", dict(builtin_kernels=False)))
    if FLAGS.delegate:
        from eq_tflite.delegate import load_delegate
        backends.append(("eq-delegate", dict(builtin_kernels=True, delegates=[load_delegate({"policy": "all"})])))
    print(f"{len(x)} samples of {FLAGS.data}")
    if ref_scores.accuracy is not None:
        print(f"float reference: top-1 {100 * ref_scores.accuracy:.2f}%")
    print("| model | kernels | top-1 % | agreement % | cosine |")
    print("|---|---|---|---|---|")
    for path in FLAGS.models:
        model = read_file(path)
        for name, kwargs in backends:
            s = score(predict(model, x, **kwargs), reference, y)
            acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.2f}"
            print(f"| {Path(path).name} | {name} | {acc} | {100 * s.agreement:.2f} | {s.cosine:.5f} |")


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
