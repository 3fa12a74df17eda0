"""Torch-free inference runtime.

Nothing under this package may import torch: it runs on Jetsons and slim servers
where PyTorch is absent.
"""
