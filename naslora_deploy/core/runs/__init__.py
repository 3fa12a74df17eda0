"""Trained runs as files: adapter checkpoints (``checkpoint``), the searched architecture
(``architecture``) and PEFT adapters read as runs (``peft_adapter``).

May import ``core.adapters.injection``, ``core.model`` and ``common``: never ``core.merging``.
"""
