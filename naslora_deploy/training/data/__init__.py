"""Folder data sets, the torch ``Dataset`` over them and the synthetic data generator."""

from naslora_deploy.training.data.folder import DataSplits, discover
from naslora_deploy.training.data.synthetic import write_synthetic_dataset

__all__ = ["DataSplits", "discover", "write_synthetic_dataset"]
