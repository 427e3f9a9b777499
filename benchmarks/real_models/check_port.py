"""Optional check of the Keras ports against the PyTorch reference implementation.

    pip install torch efficientnet-lite-pytorch   # only for this check; the build never needs torch
    python -m benchmarks.real_models.check_port [--cache_dir DIR]

Runs ``efficientnet_lite_pytorch.EfficientNet`` with the same ``.pth`` and the
cached ``model.keras`` on the first 64 evaluation samples and prints the largest
logit difference, the mean logit cosine and the top-1 agreement.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("cache_dir", None, "Suite cache (default: $EQ_TFLITE_REAL_MODELS or ~/.cache/...).")
flags.DEFINE_integer("samples", 64, "Evaluation samples compared.")


def main(argv: list[str]) -> int:
    del argv
    import keras
    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from benchmarks.real_models import default_cache_dir
    from benchmarks.real_models import efficientnet_lite as effnet
    from eq_tflite.metrics import mean_cosine
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    for name, variant in effnet.VARIANTS.items():
        x = np.load(cache / name / "eval.npy", mmap_mode="r")[:FLAGS.samples].astype(np.float32)
        ours = keras.models.load_model(cache / name / "model.keras").predict(x, verbose=0)
        ref_model = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=effnet.weights_path(variant))
        ref_model.eval()
        with torch.no_grad():
            ref = ref_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        print(f"{name}: max |logit diff| {np.abs(ours - ref).max():.2e} (logits up to {np.abs(ref).max():.1f}), "
              f"cosine {mean_cosine(ref, ours):.7f}, top-1 agreement "
              f"{np.mean(ref.argmax(1) == ours.argmax(1)):.4f} on {len(x)} samples", flush=True)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
