"""Exporters: a trained or plain SAM -> ONNX graphs, TensorRT engines, a Triton repository,
and the proofs (parity with PyTorch, structurally plain SAM) that they are right.

Also what builds a model *for* a backend: the export-only wrappers, the SDPA
attention and the PyTorch backend (``torch_backend``), which is handed to the
runtime's ``Segmenter`` rather than built by it. This room may import ``core``,
``runtime`` (to read and run what it writes) and ``common``; never ``training`` or the CLI.
"""
