"""Builds the per-op fixtures of tests/test_op_table.py: one tiny Keras model per op.

For each case it writes ``tests/fixtures/ops/<case>.float.tflite`` (TFLite's float
conversion) and ``<case>.int8.tflite`` (TFLite's own int8 conversion,
``TFLITE_BUILTINS_INT8`` with a representative dataset of 16 seeded samples
in [-1.5, 1.5)), so the test runs no converter. Every model has batch size 1
(no shape arithmetic) and a few hundred weights at most.

    python tools/make_op_fixtures.py [--only CASE,...] [--list]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ops"


def _cases():
    import keras
    import tensorflow as tf
    L = keras.layers

    def lam(fn):
        return L.Lambda(fn)

    def img(c=4, hw=6):
        return keras.Input((hw, hw, c), batch_size=1)

    def conv(x, c=4, **kw):
        return L.Conv2D(c, 1, **kw)(x)

    cases = {}

    def case(name, inputs, fn):
        cases[name] = (inputs, fn)

    # resize (the two kernels, each sampling convention)
    case("resize_bilinear_half_pixel", img, lambda x: L.UpSampling2D(interpolation="bilinear")(conv(x)))
    case("resize_bilinear_align_corners", img, lambda x: lam(
        lambda t: tf.compat.v1.image.resize_bilinear(t, (11, 11), align_corners=True))(conv(x)))
    case("resize_bilinear_legacy", img, lambda x: lam(
        lambda t: tf.compat.v1.image.resize_bilinear(t, (9, 13)))(conv(x)))
    case("resize_nearest_half_pixel", img, lambda x: lam(
        lambda t: tf.image.resize(t, (11, 9), method="nearest"))(conv(x)))
    case("resize_nearest_align_corners", img, lambda x: lam(
        lambda t: tf.compat.v1.image.resize_nearest_neighbor(t, (11, 11), align_corners=True))(conv(x)))
    case("resize_nearest_legacy", img, lambda x: lam(
        lambda t: tf.compat.v1.image.resize_nearest_neighbor(t, (12, 12)))(conv(x)))
    # space/batch and depth/space
    case("space_batch_nd", lambda: img(hw=8), lambda x: lam(lambda t: tf.batch_to_space(
        tf.nn.relu(tf.space_to_batch_nd(t, [2, 2], [[0, 2], [2, 0]])) * 1.5, [2, 2], [[0, 1], [1, 0]]))(conv(x)))
    case("depth_to_space", img, lambda x: lam(lambda t: tf.nn.depth_to_space(t, 2))(conv(x)))
    case("space_to_depth", img, lambda x: lam(lambda t: tf.nn.space_to_depth(t, 2))(conv(x)))
    # slicing
    case("slice", img, lambda x: lam(lambda t: tf.slice(t, [0, 1, 0, 1], [1, 4, 5, 2]))(conv(x)))
    case("strided_slice", img, lambda x: L.Cropping2D(((1, 1), (0, 1)))(
        lam(lambda t: t[:, 1::1, 1:, ::-1])(conv(x))))
    case("split", img, lambda x: L.Add()(lam(lambda t: tf.split(t, 2, axis=-1))(conv(x))))
    case("split_v", img, lambda x: L.Concatenate()([
        L.Activation("relu")(s) for s in lam(lambda t: tf.split(t, [1, 3], axis=-1))(conv(x))]))
    case("unpack_pack", img, lambda x: lam(lambda t: tf.stack(tf.unstack(t, axis=1)[::-1], axis=2))(conv(x)))
    case("pad", img, lambda x: L.ZeroPadding2D(((1, 0), (2, 1)))(conv(x)))
    case("padv2", img, lambda x: lam(lambda t: tf.pad(t, [[0, 0], [1, 1], [0, 2], [0, 0]],
                                                     constant_values=0.5))(conv(x)))
    case("mirror_pad", img, lambda x: lam(lambda t: tf.pad(t, [[0, 0], [1, 1], [2, 2], [0, 0]],
                                                          mode="REFLECT"))(conv(x)))
    case("tile", img, lambda x: lam(lambda t: tf.tile(t, [1, 2, 1, 3]))(conv(x)))
    case("gather", img, lambda x: lam(lambda t: tf.gather(t, [3, 0, 2], axis=-1))(conv(x)))
    case("gather_nd", img, lambda x: lam(lambda t: tf.gather_nd(t, [[0, 4, 1], [0, 2, 5]]))(conv(x)))
    case("transpose", img, lambda x: L.Permute((3, 1, 2))(conv(x)))
    # elementwise math
    case("exp", img, lambda x: lam(tf.exp)(conv(x)))
    case("log", img, lambda x: lam(lambda t: tf.math.log(t * t + 0.5))(conv(x)))
    case("neg", img, lambda x: conv(lam(tf.negative)(conv(x))))
    case("abs", img, lambda x: lam(tf.abs)(conv(x)))
    case("sqrt", img, lambda x: lam(lambda t: tf.sqrt(tf.nn.relu(t)))(conv(x)))
    case("rsqrt", img, lambda x: lam(lambda t: tf.math.rsqrt(tf.nn.relu(t) + 0.25))(conv(x)))
    case("square", img, lambda x: lam(tf.square)(conv(x)))
    case("squared_difference", img, lambda x: lam(
        lambda t: tf.math.squared_difference(t[..., :2], t[..., 2:]))(conv(x)))
    case("div", img, lambda x: lam(lambda t: t[..., :2] / (tf.nn.relu(t[..., 2:]) + 0.5))(conv(x)))
    case("pow", img, lambda x: lam(lambda t: tf.pow(tf.nn.relu(t) + 0.1, 1.5))(conv(x)))
    case("mul_add_sub_const", img, lambda x: conv(L.Rescaling(1 / 1.5, -0.5)(
        L.Normalization(mean=[0.1, 0.2, 0.3, 0.4], variance=[1, 2, 3, 4])(x))))
    case("sub", img, lambda x: L.Subtract()([conv(x), conv(x)]))
    case("maximum_minimum", img, lambda x: lam(
        lambda t: tf.minimum(tf.maximum(t[..., :2], t[..., 2:]), 0.5))(conv(x)))
    case("cos_cumsum", img, lambda x: conv(lam(lambda t: tf.cumsum(tf.cos(t), axis=-1))(conv(x))))
    case("broadcast_to", img, lambda x: lam(lambda t: tf.broadcast_to(t[:, :1], (1, 6, 6, 4)))(conv(x)))
    case("pool_reshape", img, lambda x: lam(lambda t: tf.squeeze(tf.expand_dims(t, 1), 1))(
        L.Reshape((9, 4))(L.AveragePooling2D(2)(L.MaxPooling2D(3, 1, padding="same")(conv(x))))))
    case("standalone_relus", img, lambda x: L.Concatenate()([
        L.ReLU(6.0)(L.Reshape((6, 6, 4))(conv(x))),
        lam(lambda t: tf.clip_by_value(t, 0.0, 1.0))(L.Reshape((6, 6, 4))(conv(x)))]))
    case("sin", img, lambda x: conv(lam(tf.sin)(conv(x))))
    # reductions
    case("sum", img, lambda x: lam(lambda t: tf.reduce_sum(t, axis=[1, 2], keepdims=True))(conv(x)))
    case("mean", img, lambda x: lam(lambda t: tf.reduce_mean(t, axis=-1, keepdims=True))(conv(x)))
    case("reduce_max", img, lambda x: lam(lambda t: tf.reduce_max(t, axis=[1, 2]))(conv(x)))
    case("reduce_min", img, lambda x: lam(lambda t: tf.reduce_min(t, axis=2))(conv(x)))
    # matrix products and activations
    case("batch_matmul", lambda: keras.Input((6, 8), batch_size=1), lambda x: lam(
        lambda t: tf.matmul(t, t, transpose_b=True))(L.Dense(8)(x)))
    case("gelu", img, lambda x: L.Activation("gelu")(conv(x)))
    case("gelu_approximate", img, lambda x: lam(
        lambda t: tf.nn.gelu(t, approximate=True))(conv(x)))
    case("prelu", img, lambda x: L.PReLU(shared_axes=[1, 2])(conv(x)))
    case("leaky_relu", img, lambda x: L.LeakyReLU(0.2)(conv(x)))
    case("hard_swish", img, lambda x: L.Activation("hard_swish")(conv(x)))
    case("elu", img, lambda x: L.ELU()(conv(x)))
    case("relu_family", img, lambda x: lam(lambda t: tf.clip_by_value(t, -1.0, 1.0))(
        L.ReLU(6.0)(conv(lam(tf.nn.relu)(conv(x))))))
    case("logistic_tanh", img, lambda x: L.Multiply()([L.Activation("sigmoid")(conv(x)),
                                                      L.Activation("tanh")(conv(x))]))
    case("softmax", img, lambda x: L.Softmax()(conv(x)))
    case("log_softmax", img, lambda x: lam(tf.nn.log_softmax)(conv(x)))
    case("swish_se", img, lambda x: _se(L, conv(x)))
    case("transpose_conv", img, lambda x: L.Conv2DTranspose(3, 3, strides=2, padding="same")(x))
    case("grouped_conv", lambda: img(c=8), lambda x: L.Conv2D(8, 3, padding="same", groups=4,
                                                              activation="relu")(x))
    # Keras's depthwise convolution as ConvNeXt writes it: TFLite keeps a CONV_2D, filters [O, KH, KW, 1]
    case("depthwise_groups", lambda: img(c=8), lambda x: L.Conv2D(8, 3, padding="same", groups=8)(x))
    case("dilated_depthwise", lambda: img(hw=9), lambda x: L.DepthwiseConv2D(
        3, dilation_rate=2, padding="same")(x))
    case("layer_norm", lambda: keras.Input((6, 8), batch_size=1),
         lambda x: L.Dense(8)(L.LayerNormalization()(L.Dense(8)(x))))
    return cases


def _se(L, x):
    s = L.Activation("swish")(x)
    g = L.GlobalAveragePooling2D(keepdims=True)(s)
    g = L.Activation("sigmoid")(L.Conv2D(4, 1)(L.Conv2D(2, 1, activation="relu")(g)))
    return L.Multiply()([s, g])


def build(name: str, inputs, fn) -> tuple[bytes, bytes]:
    """(float, int8) .tflite bytes of one case."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(sum(map(ord, name)))
    inp = inputs()
    model = keras.Model(inp, fn(inp))
    shape = tuple(inp.shape[1:])
    rng = np.random.default_rng(0)
    data = (rng.random((16, *shape), dtype=np.float32) - 0.5) * 3

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    float_bytes = bytes(conv.convert())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([d[None]] for d in data)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return float_bytes, bytes(conv.convert())


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--list", action="store_true", help="print each case's ops, write nothing")
    args = parser.parse_args()
    from eq_tflite.io import codec as fb
    cases = _cases()
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(cases))
    if unknown:
        print(f"error: unknown cases: {', '.join(unknown)}", file=sys.stderr)
        return 2
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in only or cases:
        fl, q = build(name, *cases[name])
        m = fb.parse_model(fl)
        ops = [fb.op_name(m, op) for op in m.subgraphs[0].operators]
        print(f"{name}: {' '.join(ops)} ({len(fl)} + {len(q)} bytes)")
        if not args.list:
            (FIXTURES / f"{name}.float.tflite").write_bytes(fl)
            (FIXTURES / f"{name}.int8.tflite").write_bytes(q)
    return 0


if __name__ == "__main__":
    sys.exit(main())
