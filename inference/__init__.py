"""ONNX anomaly models on live data (not yet implemented: see issue 6)."""
