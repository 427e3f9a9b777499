"""EasyQuant W7A7 on the bundled Fashion-MNIST ResNet and 1,000 real test images.

Measured with this code (default options, 50 calibration samples): float
91.9%, EasyQuant W7A7 92.2% (agreement with float 99.0%, output cosine
0.99981); min/max W7A7 91.4% (98.0%, 0.99933). The floor sits 0.7 pp below.
"""
from __future__ import annotations


from eq_tflite import api
from eq_tflite.evaluation import predict, score


def test_resnet_int7_easyquant(resnet_float, fmnist_calib, fmnist_subset):
    x, y = fmnist_subset
    ref = predict(resnet_float, x)
    eq = api.convert_model(resnet_float, fmnist_calib, bits=7)
    assert eq.plan.method == "easyquant" and eq.num_calibration == 50
    ours = score(predict(eq.model, x), ref, y)
    minmax = score(predict(api.convert_model(resnet_float, fmnist_calib, bits=7,
                                             method="minmax").model, x), ref, y)
    assert ours.accuracy >= 0.915
    assert ours.agreement >= minmax.agreement
    assert ours.cosine > minmax.cosine
    assert all(r["cos_eq"] >= r["cos_init"] for r in eq.plan.layers)
