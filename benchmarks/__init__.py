"""Regression benchmarks: latency, compile time and memory of edgekiln against ONNX Runtime.

Run ``python -m benchmarks --help``. Every number is measured in the same run as its reference.
"""
