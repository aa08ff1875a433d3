"""The model-quality studies: calibration, transformed inputs, out-of-distribution images, corruptions."""
