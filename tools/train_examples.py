"""Train the example Fashion-MNIST CNNs that eq-tflite benchmarks and tests on.

Writes into --output_dir: one Keras-3-exported SavedModel per model, the calibration
and test-subset arrays, models.json (metrics) and MODELS.md.

    python tools/train_examples.py --output_dir examples --epochs 3 --seed 0
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from keras import layers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))
from eq_tflite.datasets import load_fashion_mnist  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "examples", "Directory for SavedModels, data arrays and MODELS.md.")
flags.DEFINE_integer("epochs", 3, "Training epochs per model.")
flags.DEFINE_integer("seed", 0, "Seed for weights init, shuffling and the calibration sample.")
flags.DEFINE_list("models", ["resnet", "mobilenetv2"], "Models to train: resnet, mobilenetv2.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine-decayed to 0).")

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CALIB_SAMPLES = 256
TEST_SUBSET = 1000
EVAL_BATCH = 1000
BN_MOMENTUM = 0.9


def batch_norm(x: keras.KerasTensor) -> keras.KerasTensor:
    """BatchNorm with a short moving-average window, so inference stats settle in a few epochs."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM)(x)


def conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int = 1) -> keras.KerasTensor:
    """Conv (no bias, 'same' padding) followed by BatchNorm."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    return batch_norm(x)


def basic_block(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    """ResNet basic block; 1x1 conv+BN projection on the shortcut when the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, stride)
    y = layers.ReLU()(conv_bn(x, filters, 3, stride))
    y = conv_bn(y, filters, 3)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_resnet() -> keras.Model:
    """ResNet-style CNN: stem 16, basic blocks at 16/32/64 channels, GAP, Dense(10) logits."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = layers.ReLU()(conv_bn(inputs, 16, 3))
    for filters, stride in [(16, 1), (32, 2), (64, 2)]:
        x = basic_block(x, filters, stride)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet_fmnist")


def inverted_residual(x: keras.KerasTensor, filters: int, stride: int, expand: int = 4) -> keras.KerasTensor:
    """MobileNetV2 block: 1x1 expand+ReLU6, depthwise 3x3+ReLU6, 1x1 linear projection."""
    in_channels = x.shape[-1]
    y = layers.ReLU(6.0)(conv_bn(x, in_channels * expand, 1))
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
    y = layers.ReLU(6.0)(batch_norm(y))
    y = conv_bn(y, filters, 1)
    if stride == 1 and in_channels == filters:
        y = layers.Add()([y, x])
    return y


def build_mobilenetv2() -> keras.Model:
    """MobileNetV2-style CNN: stride-2 stem 16, inverted residuals 16->24->32->64, 1x1 to 128, GAP, Dense, Softmax."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = layers.ReLU(6.0)(conv_bn(inputs, 16, 3, stride=2))
    for filters, stride in [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 1)]:
        x = inverted_residual(x, filters, stride)
    x = layers.ReLU(6.0)(conv_bn(x, 128, 1))
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(NUM_CLASSES, name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2_fmnist")


MODELS: dict[str, tuple[str, Callable[[], keras.Model], bool, str]] = {
    # flag name: (export name, builder, outputs are logits, architecture summary)
    "resnet": (
        "resnet_fmnist",
        build_resnet,
        True,
        "Stem Conv3x3(16)+BN+ReLU; three residual basic blocks (Conv3x3+BN+ReLU, Conv3x3+BN, Add, ReLU) "
        "at 16 (stride 1), 32 (stride 2) and 64 (stride 2) channels, the strided ones with a 1x1 Conv+BN "
        "projection shortcut; GlobalAveragePooling; Dense(10). Output: 10 logits.",
    ),
    "mobilenetv2": (
        "mobilenetv2_fmnist",
        build_mobilenetv2,
        False,
        "Stem Conv3x3(16, stride 2)+BN+ReLU6 (28x28 -> 14x14); six inverted residual blocks (1x1 expand x4+BN+ReLU6, "
        "DepthwiseConv3x3+BN+ReLU6, 1x1 linear projection+BN) with output channels/stride "
        "16/1, 24/2, 24/1, 32/2, 32/1, 64/1 (residual Add on 16/1, 24/1, 32/1); 1x1 Conv(128)+BN+ReLU6; "
        "GlobalAveragePooling; Dense(10); Softmax. Output: 10 probabilities.",
    ),
}


def train(model: keras.Model, x: np.ndarray, y: np.ndarray, from_logits: bool) -> float:
    """Train with Adam + cosine-decayed LR; return the wall time in seconds."""
    steps = FLAGS.epochs * int(np.ceil(len(x) / FLAGS.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, shuffle=True, verbose=2)
    return time.perf_counter() - start


def batched_accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `predict` evaluated in batches of EVAL_BATCH."""
    preds = [np.argmax(predict(x[i : i + EVAL_BATCH]), axis=-1) for i in range(0, len(x), EVAL_BATCH)]
    return float(np.mean(np.concatenate(preds) == y))


def saved_model_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of an exported SavedModel's `serve` endpoint."""
    loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
    return batched_accuracy(lambda b: loaded.serve(tf.constant(b)).numpy(), x, y)


def tflite_float_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Convert the SavedModel to a float .tflite (in memory) and measure its accuracy with LiteRT."""
    tflite_model = tf.lite.TFLiteConverter.from_saved_model(str(path)).convert()
    interpreter = Interpreter(model_content=tflite_model)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, [EVAL_BATCH, *INPUT_SHAPE])
    interpreter.allocate_tensors()

    def predict(batch: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return batched_accuracy(predict, x, y)


def write_data_arrays(out: Path, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Write the seeded train-split calibration sample and the first-1000 test subset."""
    idx = np.random.default_rng(FLAGS.seed).choice(len(x_train), CALIB_SAMPLES, replace=False)
    np.save(out / "fmnist_calib.npy", x_train[idx].astype(np.float32))
    np.savez_compressed(
        out / "fmnist_test_subset.npz",
        x=x_test[:TEST_SUBSET].astype(np.float32),
        y=y_test[:TEST_SUBSET].astype(np.int64),
    )


def command_line() -> str:
    """The command that regenerates the artifacts with this run's settings."""
    return (
        f"python tools/train_examples.py --output_dir {FLAGS.output_dir} --epochs {FLAGS.epochs} "
        f"--seed {FLAGS.seed} --models {','.join(FLAGS.models)} --batch_size {FLAGS.batch_size} "
        f"--learning_rate {FLAGS.learning_rate:g}"
    )


def run_model(key: str, out: Path, data: tuple[np.ndarray, ...]) -> dict:
    """Build, train, export and evaluate one model; return its metrics record."""
    x_train, y_train, x_test, y_test = data
    name, builder, from_logits, summary = MODELS[key]
    keras.utils.set_random_seed(FLAGS.seed)
    model = builder()
    train_seconds = train(model, x_train, y_train, from_logits)
    path = out / name
    model.export(str(path), verbose=False)
    record = {
        "name": name,
        "architecture": summary,
        "params": int(model.count_params()),
        "output": "logits" if from_logits else "softmax",
        "epochs": FLAGS.epochs,
        "train_seconds": round(train_seconds, 1),
        "savedmodel_test_accuracy": saved_model_accuracy(path, x_test, y_test),
        "tflite_float_test_accuracy": tflite_float_accuracy(path, x_test, y_test),
        "command": command_line(),
    }
    logging.info("%s: %s", name, {k: v for k, v in record.items() if k != "architecture"})
    return record


def render_markdown(records: dict[str, dict]) -> str:
    """MODELS.md describing every model in `records`."""
    lines = [
        "# Example models",
        "",
        "Small CNNs trained on the Fashion-MNIST train split (60k) by `tools/train_examples.py`.",
        "Input: float32 `(None, 28, 28, 1)` in [0, 1]. Accuracies are top-1 on the full 10k test",
        "split, measured on the exported SavedModel and on its float (unquantized) `.tflite`",
        "conversion run in `ai_edge_litert`.",
        "",
        "Also here: `fmnist_calib.npy` (256 seeded train-split samples for calibration, never test",
        "data) and `fmnist_test_subset.npz` (`x`, `y`: the first 1000 test images/labels).",
        "",
    ]
    for r in records.values():
        lines += [
            f"## `{r['name']}/`",
            "",
            r["architecture"],
            "",
            f"- Parameters: {r['params']:,}",
            f"- Output: {r['output']}",
            f"- Float test accuracy (SavedModel): {100 * r['savedmodel_test_accuracy']:.2f}%",
            f"- Float test accuracy (float .tflite, LiteRT): {100 * r['tflite_float_test_accuracy']:.2f}%",
            f"- Training: {r['epochs']} epochs, {r['train_seconds']:.0f} s (2 CPU cores)",
            f"- Regenerate: `{r['command']}`",
            "",
        ]
    return "\n".join(lines)


def update_reports(out: Path, new_records: list[dict]) -> None:
    """Merge new records into models.json and rewrite MODELS.md from all records."""
    json_path = out / "models.json"
    records = json.loads(json_path.read_text()) if json_path.exists() else {}
    records.update({r["name"]: r for r in new_records})
    records = dict(sorted(records.items()))
    json_path.write_text(json.dumps(records, indent=2) + "\n")
    (out / "MODELS.md").write_text(render_markdown(records))


def main(argv: list[str]) -> None:
    del argv
    unknown = set(FLAGS.models) - MODELS.keys()
    if unknown:
        raise app.UsageError(f"unknown --models {sorted(unknown)}; choose from {sorted(MODELS)}")
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    write_data_arrays(out, x_train, x_test, y_test)
    data = (x_train, y_train, x_test, y_test)
    update_reports(out, [run_model(key, out, data) for key in FLAGS.models])


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
