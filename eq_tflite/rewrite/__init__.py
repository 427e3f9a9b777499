"""Stage 5 (rewrite): applies a Plan onto TFLite's own int8 model."""
from eq_tflite.rewrite.rewriter import apply_plan

__all__ = ["apply_plan"]
