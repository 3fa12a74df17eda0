"""The core: SAM variants, the adapters and their layers, merging and its measured fidelity.

Holds the variant registry (``variants``), the candidate operations (``ops``),
the adapter layers and config (``layers``, ``adapters``, ``config``), the
prompt-free model on SAM (``heads``), ``merge`` with its calibration images,
``fidelity`` and ``report``, adapter and merged-model checkpoint files
(``checkpoint``, ``classes``), the searched-architecture reader
(``architecture``) and ``testing`` helpers that make adapters non-trivial.
It may import ``common`` only: never ``training``, ``exporters``, ``runtime`` or the CLI.
"""
