"""Datasets: specs and presets, readers, the torch dataset, joint transforms, checks, downloads."""
from .check import DataReport, check_dataset, quick_check
from .dataset import SegmentationDataset, load_sample
from .readers import image_size, read_image, read_mask
from .spec import DatasetSpec, list_presets, load_spec
from .transforms import build_transforms
from .synthetic import generate_sample, write_synthetic_dataset

__all__ = ["DataReport", "DatasetSpec", "SegmentationDataset", "build_transforms",
           "check_dataset", "image_size", "list_presets", "load_sample", "load_spec",
           "quick_check", "read_image", "read_mask", "generate_sample", "write_synthetic_dataset"]
