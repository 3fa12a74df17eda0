"""The model: SAM variants and their registry, TinyViT, SAM's parts, weight files, the
segmentation model on SAM (heads, classes), train/eval modes and encoder stages.

May import ``common`` only (the lowest sub-room of ``core``): never the adapters,
runs or merging sub-rooms.
"""
