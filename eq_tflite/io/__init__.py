"""Stage 1 (load): models and calibration data in, plus .tflite reading/writing."""
