"""Data sets (embedded, on-disk, synthetic), torch transforms, the seeded, resumable loader and forgetting statistics."""
from .dataset import ArrayDataset, Transform
from .forgetting import ForgettingTracker, forgetting_events
from .imagenet import ImageFolderDataset
from .loader import SeededLoader
from .registry import DATASETS, dataset_options, load_dataset
from .transforms import (CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomResizedCrop,
                         Resize, ToFloat)

__all__ = ["DATASETS", "load_dataset", "dataset_options", "ArrayDataset", "ImageFolderDataset", "SeededLoader",
           "ForgettingTracker", "forgetting_events",
           "Transform", "Compose", "ToFloat", "Normalize", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop",
           "Resize", "CenterCrop"]
