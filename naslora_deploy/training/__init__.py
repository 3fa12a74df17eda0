"""Training: folder data sets, losses, metrics, the stage-wise trainer, data-parallel
helpers, evaluation and the demo.

``config`` (``TrainConfig``, the options of ``naslora-deploy train``) imports no
torch, so the CLI can declare its options from it anywhere. This room may import
``core`` and ``common``; never ``exporters``, ``runtime`` or the CLI.
"""
