"""eq-tflite: post-training quantization for TensorFlow Lite with EasyQuant scales.

Pipeline (one way): load -> convert (TFLite's own int8) -> collect -> optimize
(a method makes a Plan) -> rewrite -> verify. See README.md.
"""
__version__ = "0.1.0"


def quantize(*args, **kwargs) -> bytes:  # noqa: D103 - documented in eq_tflite.api
    from eq_tflite.api import quantize as _quantize
    return _quantize(*args, **kwargs)


quantize.__doc__ = "See :func:`eq_tflite.api.quantize`."
__all__ = ["quantize", "__version__"]
