"""Shared fixtures: small real models built once per session, and the bundled examples."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _keras_cnn(seed: int = 0):
    """conv+BN+ReLU, residual ADD, depthwise+ReLU6, maxpool, reshape, dense, softmax."""
    import keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x))
    x = L.ReLU()(L.Add()([x, y]))
    x = L.ReLU(6.0)(L.DepthwiseConv2D(3, padding="same")(x))
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(16, 1)(x)
    x = L.Reshape((6 * 6 * 16,))(x)
    x = L.Dense(10)(x)
    out = L.Softmax()(x)
    model = keras.Model(inp, out)
    # Non-trivial BatchNorm statistics so folding matters.
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            rng = np.random.default_rng(seed)
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)])
    return model


@pytest.fixture(scope="session")
def small_keras_model():
    return _keras_cnn()


@pytest.fixture(scope="session")
def small_float_tflite(small_keras_model) -> bytes:
    import tensorflow as tf
    return bytes(tf.lite.TFLiteConverter.from_keras_model(small_keras_model).convert())


@pytest.fixture(scope="session")
def small_calibration() -> np.ndarray:
    return np.random.default_rng(1).random((48, 12, 12, 3), dtype=np.float32)


@pytest.fixture(scope="session")
def small_float_path(tmp_path_factory, small_float_tflite) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_float.tflite"
    path.write_bytes(small_float_tflite)
    return path


@pytest.fixture(scope="session")
def small_calibration_path(tmp_path_factory, small_calibration) -> Path:
    path = tmp_path_factory.mktemp("data") / "calib.npy"
    np.save(path, small_calibration)
    return path


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def resnet_float() -> bytes:
    """The bundled ResNet-style example as a float .tflite."""
    from eq_tflite import api
    return api.float_model_of(EXAMPLES / "resnet_fmnist")


@pytest.fixture(scope="session")
def fmnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """1000 real Fashion-MNIST test images and labels bundled in examples/."""
    data = np.load(EXAMPLES / "fmnist_test_subset.npz")
    return data["x"], data["y"]


@pytest.fixture(scope="session")
def fmnist_calib() -> np.ndarray:
    return np.load(EXAMPLES / "fmnist_calib.npy")


@pytest.fixture(scope="session")
def keras_examples() -> dict[str, Path]:
    """The Keras copies (with BatchNorm layers) of the two example models."""
    return {"resnet": EXAMPLES / "resnet_fmnist.keras",
            "mobilenetv2": EXAMPLES / "mobilenetv2_fmnist.keras"}


@pytest.fixture(scope="session")
def keras_floats(keras_examples) -> dict[str, bytes]:
    """Float .tflite of each Keras example (BatchNorm folded by the converter)."""
    from eq_tflite import api
    return {k: api.float_model_of(str(p)) for k, p in keras_examples.items()}
