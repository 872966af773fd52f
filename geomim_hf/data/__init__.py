"""Data: the synthetic driving world, dataset formats, 🤗 Datasets loaders, processing pipeline."""

from .nuscenes_dataset import NUSCENES_CAMERA_ORDER, load_nuscenes
from .pipeline import GeoMIMDataset, collate_geomim, make_dataloader
from .records import ATTRIBUTE_NAMES, SampleError, with_lidar_points
from .targets import depth_maps
from .waymo_dataset import WAYMO_CAMERA_ORDER, WAYMO_CLASSES, load_waymo

__all__ = [
    "ATTRIBUTE_NAMES",
    "NUSCENES_CAMERA_ORDER",
    "WAYMO_CAMERA_ORDER",
    "WAYMO_CLASSES",
    "GeoMIMDataset",
    "SampleError",
    "collate_geomim",
    "depth_maps",
    "load_nuscenes",
    "load_waymo",
    "make_dataloader",
    "with_lidar_points",
]
