"""ONNX and TensorRT exporters (filled in by the export issue)."""
