"""The torch-free base every room may use: errors, atomic file I/O, image reading and
SAM's preprocessing (numpy + Pillow), lazy imports of optional packages, progress bars,
and the artifact contract (file and graph I/O names) shared by exporters and runtime.

It imports nothing else from the package, and never torch: the runtime runs on it alone.
"""
