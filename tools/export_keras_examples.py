"""Keras (.keras) copies of the example SavedModels, with their BatchNorm layers.

The SavedModels in examples/ are Keras-3 exports: TFLite folds their BatchNorm
into the convolutions, but their variables still hold every BN's gamma, beta
and moving statistics. This tool rebuilds each architecture with the builders
of ``tools/train_examples.py`` (same layer order, so the same automatic
variable names), loads the SavedModel's variables by name and shape (no
retraining), checks that the .keras model and the SavedModel give the same
outputs on the 1,000-image test subset, and saves ``examples/<name>.keras``.

    python tools/export_keras_examples.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import train_examples  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("examples_dir", str(REPO / "examples"), "Directory holding the SavedModels.")
# --models comes from train_examples (resnet, mobilenetv2).
#: Largest max |difference| allowed between the .keras and the SavedModel outputs.
MAX_DIFF = 1e-5


def _strip(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name



def _by_creation_order(named: dict) -> list:
    """[((layer kind, rank within kind, variable), value)] sorted by kind and creation order.

    Keras numbers automatic layer names per kind (conv2d, conv2d_1, ...) per
    process, so a model built after another one in the same process has
    shifted numbers; the rank within its kind is the same.
    """
    def split(layer: str) -> tuple[str, int]:
        base, _, num = layer.rpartition("_")
        return (base, int(num)) if base and num.isdigit() else (layer, 0)

    parsed = {}
    for name, value in named.items():
        layer, _, var = name.rpartition("/")
        kind, num = split(layer)
        parsed[(kind, num, var)] = value
    ranks = {}
    for kind, num, _ in sorted(parsed):
        ranks.setdefault(kind, {}).setdefault(num, len(ranks[kind]))
    return sorted(((kind, ranks[kind][num], var), value) for (kind, num, var), value in parsed.items())


def rebuild(key: str, saved_model: Path) -> keras.Model:
    """The architecture of ``key`` carrying the SavedModel's variables (matched by name and shape)."""
    keras.backend.clear_session()  # automatic layer names restart at conv2d, batch_normalization...
    _, builder, _, _ = train_examples.MODELS[key]
    model = builder()
    loaded = tf.saved_model.load(str(saved_model))
    source = _by_creation_order({_strip(v.name): v.numpy() for v in loaded.variables})
    targets = _by_creation_order({f"{layer.name}/{w.name}": w
                                  for layer in model.layers for w in layer.weights})
    if [k for k, _ in source] != [k for k, _ in targets]:
        raise SystemExit(f"{saved_model}: its variables do not match the rebuilt architecture")
    for (key, value), (_, var) in zip(source, targets):
        if tuple(var.shape) != value.shape:
            raise SystemExit(f"{saved_model}: {key} has shape {value.shape}, "
                             f"the rebuilt model {tuple(var.shape)}")
        var.assign(value)
    return model


def max_difference(model: keras.Model, saved_model: Path, x: np.ndarray) -> float:
    """Largest |output difference| between ``model`` and the SavedModel's ``serve`` on ``x``."""
    loaded = tf.saved_model.load(str(saved_model))
    ref = loaded.serve(tf.constant(x)).numpy()
    out = model(x, training=False).numpy()
    return float(np.max(np.abs(ref - out)))


def main(argv: list[str]) -> None:
    del argv
    examples = Path(FLAGS.examples_dir)
    x = np.load(examples / "fmnist_test_subset.npz")["x"]
    for key in FLAGS.models:
        name = train_examples.MODELS[key][0]
        saved = examples / name
        model = rebuild(key, saved)
        diff = max_difference(model, saved, x)
        if diff > MAX_DIFF:
            raise SystemExit(f"{name}: .keras differs from the SavedModel by {diff:.2e} > {MAX_DIFF}")
        out = examples / f"{name}.keras"
        model.save(out)
        reloaded = keras.models.load_model(out, compile=False)
        diff2 = float(np.max(np.abs(reloaded(x, training=False).numpy()
                                    - model(x, training=False).numpy())))
        bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
        print(f"{out}: {bn} BatchNorm layers; max |out - SavedModel| on {len(x)} test images "
              f"{diff:.2e}; after reload {diff2:.2e}")


if __name__ == "__main__":
    app.run(main)
