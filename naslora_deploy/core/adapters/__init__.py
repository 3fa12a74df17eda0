"""The adapters: their config, the candidate operations, the adapter layers, their
injection into a SAM (``injection``) and ``testing`` helpers that make them non-trivial.

May import ``core.model`` and ``common``: never the runs or merging sub-rooms.
"""
