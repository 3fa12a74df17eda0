"""Folder data sets, class specifications and the synthetic data generator."""

from naslora_deploy.data.classes import ClassSpec
from naslora_deploy.data.folder import DataSplits, discover
from naslora_deploy.data.synthetic import write_synthetic_dataset

__all__ = ["ClassSpec", "DataSplits", "discover", "write_synthetic_dataset"]
