"""The architecture suite (issue 16): common Keras architectures at small inputs, random weights.

Every model builds offline: ``keras.applications`` with ``weights=None`` and
hand-built models of the shapes users ship (U-Net, DeepLab head, YOLO head,
tiny ViT, RegNet-style grouped convolutions, two inputs, Conv1D keyword
spotting). Each entry says its input shapes and the real range of each input
(the range its preprocessing expects: [0, 255] where the model starts with a
Rescaling layer, else what its ``preprocess_input`` produces), which is what
the data-free path gets as ``--input_range`` and where the seeded calibration
samples are drawn from.

    python tools/benchmark_architectures.py      # builds what is missing, runs every path

The hand-built models use only built-in Keras layers, so the saved ``.keras``
files load anywhere without custom objects. The test suite uses the small
hand-built ones (``FAST``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ENV_VAR = "EQ_TFLITE_ARCHITECTURES"
#: Calibration samples per model (what the issue's user gave every tool).
NUM_SAMPLES = 32


@dataclass(frozen=True)
class Architecture:
    """One suite model: how to build it and the real range of each input."""

    name: str
    build: Callable[[], object]
    #: (shape without batch, (lo, hi)) per input, in the model's input order
    inputs: tuple[tuple[tuple[int, ...], tuple[float, float]], ...]
    kind: str  # "keras.applications" or "hand-built"


def default_cache_dir() -> Path:
    """``$EQ_TFLITE_ARCHITECTURES`` or ``~/.cache/eq-tflite-architectures``."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "eq-tflite-architectures")


def _app(fn_name: str, size: int, **kwargs) -> Callable[[], object]:
    def build():
        import keras
        fn = getattr(keras.applications, fn_name)
        return fn(weights=None, input_shape=(size, size, 3), classes=10, **kwargs)
    return build


# ---- hand-built models (built-in layers only) -------------------------------------------

def _conv_bn(x, filters: int, kernel: int = 3, strides: int = 1, act="relu", **kw):
    from keras import layers
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, **kw)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation(act)(x) if isinstance(act, str) else act(x)


def unet():
    """U-Net: Rescaling input, bilinear upsampling and resizing, skip concatenations, Cropping2D."""
    import keras
    from keras import layers
    inp = keras.Input((34, 34, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = layers.Conv2D(8, 3, padding="valid", activation="relu")(x)  # 32x32
    s1 = _conv_bn(x, 8)
    x = layers.MaxPooling2D()(s1)
    s2 = _conv_bn(x, 16)
    x = layers.MaxPooling2D()(s2)
    x = _conv_bn(x, 32)
    x = layers.UpSampling2D(interpolation="bilinear")(x)
    x = _conv_bn(layers.Concatenate()([x, s2]), 16)
    x = layers.Resizing(32, 32, interpolation="bilinear")(x)
    x = _conv_bn(layers.Concatenate()([x, s1]), 8)
    x = layers.Conv2D(1, 1, activation="sigmoid")(x)
    out = layers.Cropping2D(2)(x)
    return keras.Model(inp, out, name="unet")


def deeplab_head():
    """DeepLab-style head: Normalization input, dilated convolutions, a pooling branch with Resizing."""
    import keras
    from keras import layers
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.05, 0.051])(inp)
    x = _conv_bn(x, 16, strides=2)
    x = _conv_bn(x, 24, strides=2)  # 8x8
    b0 = _conv_bn(x, 16, kernel=1)
    b1 = _conv_bn(x, 16, dilation_rate=2)
    b2 = _conv_bn(x, 16, dilation_rate=4)
    p = layers.GlobalAveragePooling2D(keepdims=True)(x)
    p = _conv_bn(p, 16, kernel=1)
    p = layers.Resizing(8, 8, interpolation="bilinear")(p)
    x = _conv_bn(layers.Concatenate()([b0, b1, b2, p]), 16, kernel=1)
    x = layers.Conv2D(5, 1)(x)
    out = layers.Resizing(32, 32, interpolation="bilinear")(x)
    return keras.Model(inp, out, name="deeplab_head")


def yolo_head():
    """YOLO-style detector: LeakyReLU backbone, head split into xy/wh/objectness/classes (SPLIT_V),
    sigmoid and exp decoding, concatenated."""
    import keras
    from keras import layers, ops
    inp = keras.Input((32, 32, 3), name="image")
    act = layers.LeakyReLU(negative_slope=0.1)
    x = _conv_bn(inp, 16, strides=2, act=act)
    x = _conv_bn(x, 32, strides=2, act=layers.LeakyReLU(negative_slope=0.1))
    x = _conv_bn(x, 32, act=layers.LeakyReLU(negative_slope=0.1))  # 8x8
    num_anchors, classes = 3, 4
    x = layers.Conv2D(num_anchors * (5 + classes), 1)(x)
    x = layers.Reshape((8 * 8 * num_anchors, 5 + classes))(x)
    xy, wh, obj, cls = ops.split(x, [2, 4, 5], axis=-1)
    xy = layers.Activation("sigmoid")(xy)
    wh = layers.Activation("exponential")(wh)
    obj = layers.Activation("sigmoid")(obj)
    cls = layers.Activation("sigmoid")(cls)
    out = layers.Concatenate(axis=-1)([xy, wh, obj, cls])
    return keras.Model(inp, out, name="yolo_head")


def tiny_vit():
    """Tiny ViT: patch embedding, two pre-norm blocks (LayerNorm, multi-head attention, GELU MLP)."""
    import keras
    from keras import layers
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(32, 4, strides=4)(inp)  # 8x8 patches
    x = layers.Reshape((64, 32))(x)
    for _ in range(2):
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        h = layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        h = layers.Dense(64, activation="gelu")(h)
        h = layers.Dense(32)(h)
        x = layers.Add()([x, h])
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    x = layers.GlobalAveragePooling1D()(x)
    out = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out, name="tiny_vit")


def regnet_grouped():
    """RegNet-style blocks: 1x1, grouped 3x3 (groups=4), 1x1, residual adds."""
    import keras
    from keras import layers
    inp = keras.Input((32, 32, 3), name="image")
    x = _conv_bn(inp, 32, strides=2)
    for width, stride in ((32, 1), (64, 2)):
        shortcut = x if stride == 1 and x.shape[-1] == width else \
            _conv_bn(x, width, kernel=1, strides=stride, act="linear")
        h = _conv_bn(x, width, kernel=1)
        h = _conv_bn(h, width, strides=stride, groups=4)
        h = _conv_bn(h, width, kernel=1, act="linear")
        x = layers.Activation("relu")(layers.Add()([h, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10)(x)
    return keras.Model(inp, out, name="regnet_grouped")


def two_inputs():
    """An image and a feature vector, a conv branch and a dense branch, concatenated."""
    import keras
    from keras import layers
    img = keras.Input((24, 24, 3), name="image")
    vec = keras.Input((8,), name="features")
    x = _conv_bn(img, 16, strides=2)
    x = _conv_bn(x, 32, strides=2)
    x = layers.GlobalAveragePooling2D()(x)
    v = layers.Dense(16, activation="relu")(vec)
    x = layers.Concatenate()([x, v])
    out = layers.Dense(4)(layers.Dense(32, activation="relu")(x))
    return keras.Model([img, vec], out, name="two_inputs")


def kws_conv1d():
    """Keyword spotting on 49 frames of 10 MFCCs: Conv1D stack, global pooling, softmax."""
    import keras
    from keras import layers
    inp = keras.Input((49, 10), name="mfcc")
    x = inp
    for filters, stride in ((32, 1), (32, 2), (64, 2)):
        x = layers.Conv1D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling1D()(x)
    out = layers.Dense(12, activation="softmax")(x)
    return keras.Model(inp, out, name="kws_conv1d")


_RGB255 = (0.0, 255.0)
_PM1 = (-1.0, 1.0)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("mobilenet_v2", _app("MobileNetV2", 32), (((32, 32, 3), _PM1),), "keras.applications"),
    Architecture("mobilenet_v3_small", _app("MobileNetV3Small", 32), (((32, 32, 3), _RGB255),),
                 "keras.applications"),
    Architecture("mobilenet_v3_large", _app("MobileNetV3Large", 32), (((32, 32, 3), _RGB255),),
                 "keras.applications"),
    Architecture("efficientnet_b0", _app("EfficientNetB0", 32), (((32, 32, 3), _RGB255),),
                 "keras.applications"),
    Architecture("efficientnet_v2_b0", _app("EfficientNetV2B0", 32), (((32, 32, 3), _RGB255),),
                 "keras.applications"),
    Architecture("resnet50", _app("ResNet50", 32), (((32, 32, 3), (-124.0, 152.0)),), "keras.applications"),
    Architecture("densenet121", _app("DenseNet121", 32), (((32, 32, 3), (-2.2, 2.7)),), "keras.applications"),
    Architecture("inception_v3", _app("InceptionV3", 75), (((75, 75, 3), _PM1),), "keras.applications"),
    Architecture("xception", _app("Xception", 71), (((71, 71, 3), _PM1),), "keras.applications"),
    Architecture("nasnet_mobile", _app("NASNetMobile", 32), (((32, 32, 3), _PM1),), "keras.applications"),
    Architecture("convnext_tiny", _app("ConvNeXtTiny", 32), (((32, 32, 3), _RGB255),), "keras.applications"),
    Architecture("mobilenet_v1", _app("MobileNet", 32), (((32, 32, 3), _PM1),), "keras.applications"),
    Architecture("unet", unet, (((34, 34, 3), _RGB255),), "hand-built"),
    Architecture("deeplab_head", deeplab_head, (((32, 32, 3), (0.0, 1.0)),), "hand-built"),
    Architecture("yolo_head", yolo_head, (((32, 32, 3), (0.0, 1.0)),), "hand-built"),
    Architecture("tiny_vit", tiny_vit, (((32, 32, 3), _PM1),), "hand-built"),
    Architecture("regnet_grouped", regnet_grouped, (((32, 32, 3), _PM1),), "hand-built"),
    Architecture("two_inputs", two_inputs, (((24, 24, 3), (0.0, 1.0)), ((8,), _PM1)), "hand-built"),
    Architecture("kws_conv1d", kws_conv1d, (((49, 10), (-3.0, 3.0)),), "hand-built"),
]}
#: The small hand-built shapes the test suite converts (seconds each).
FAST = ("yolo_head", "deeplab_head", "regnet_grouped", "tiny_vit", "two_inputs")


def calibration_samples(arch: Architecture, n: int = NUM_SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded samples per input, inside the input's real range.

    Images get smooth structure (a coarse random field, upsampled, plus fine
    noise), so that activations vary as they do on pictures rather than on
    white noise; every value stays inside the range.
    """
    rng = np.random.default_rng(seed)
    out = []
    for shape, (lo, hi) in arch.inputs:
        if len(shape) == 3:
            h, w, c = shape
            coarse = rng.uniform(0, 1, (n, (h + 3) // 4, (w + 3) // 4, c))
            x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :h, :w]
            x = np.clip(0.8 * x + 0.2 * rng.uniform(0, 1, (n, h, w, c)), 0, 1)
        else:
            x = rng.uniform(0, 1, (n, *shape))
        out.append((lo + (hi - lo) * x).astype(np.float32))
    return out


def build(name: str, cache: Path) -> Path:
    """Builds ``name`` into ``cache/name`` (model.keras, calib.npy or calib.npz); returns the folder.

    Already built files are kept (the weights are random, seeded per model).
    """
    import keras
    arch = ARCHITECTURES[name]
    folder = cache / name
    model_path = folder / "model.keras"
    if not model_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(sum(map(ord, name)))
        model = arch.build()
        tmp = folder / "tmp.keras"
        model.save(tmp)
        tmp.replace(model_path)
    calib = calibration_path(folder, arch)
    if not calib.exists():
        samples = calibration_samples(arch)
        tmp = folder / ("tmp" + calib.suffix)
        if len(samples) == 1:
            np.save(tmp, samples[0])
        else:
            import keras as _k  # input names from the model (calibration .npz keys)
            names = [t.name for t in _k.models.load_model(model_path, compile=False).inputs]
            np.savez(tmp, **dict(zip(names, samples)))
        tmp.replace(calib)
    return folder


def calibration_path(folder: Path, arch: Architecture) -> Path:
    """calib.npy for one input, calib.npz (one array per input name) for several."""
    return folder / ("calib.npy" if len(arch.inputs) == 1 else "calib.npz")


def named_samples(model_path: Path, arch: Architecture, interp_inputs: list[dict]) -> list[np.ndarray]:
    """The calibration samples in a converted model's input order (matched by input name)."""
    import keras
    names = [t.name for t in keras.models.load_model(model_path, compile=False).inputs]
    samples = dict(zip(names, calibration_samples(arch)))
    if len(samples) == 1:
        return list(samples.values())
    return [next(v for k, v in samples.items() if k in d["name"]) for d in interp_inputs]


def input_range_flags(arch: Architecture) -> list[str]:
    """``--input_range LO,HI`` once per input, in order."""
    out = []
    for _, (lo, hi) in arch.inputs:
        out += ["--input_range", f"{lo:g},{hi:g}"]
    return out


def tflite_int8(name: str, folder: Path, out: Path) -> None:
    """TFLite's own full-integer conversion of ``folder/model.keras`` (float32 I/O).

    ``TFLITE_BUILTINS_INT8`` with the calibration samples as the representative
    dataset: the command line a TFLite user needs for these models.
    """
    import keras
    import tensorflow as tf
    model = keras.models.load_model(folder / "model.keras", compile=False)
    samples = calibration_samples(ARCHITECTURES[name])
    names = [t.name for t in model.inputs]  # the converter's inputs follow the signature's names
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ({n: s[i:i + 1] for n, s in zip(names, samples)}
                                           for i in range(len(samples[0])))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = conv.convert()
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


if __name__ == "__main__":  # python -m benchmarks.architectures tflite_int8 NAME FOLDER OUT
    import sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if len(sys.argv) != 5 or sys.argv[1] != "tflite_int8" or sys.argv[2] not in ARCHITECTURES:
        print("usage: python -m benchmarks.architectures tflite_int8 NAME FOLDER OUT", file=sys.stderr)
        sys.exit(2)
    try:
        tflite_int8(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    except Exception as err:  # noqa: BLE001 - one error line, like every tool here
        print(f"error: TFLite int8 conversion failed: {type(err).__name__}: "
              f"{(str(err).strip().splitlines() or [''])[0][:200]}", file=sys.stderr)
        sys.exit(2)
