"""Deployment: the encoder as ONNX (float32 and int8) and its ONNX Runtime latency."""
