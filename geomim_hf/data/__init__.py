"""Data: dataset formats, 🤗 Datasets loaders of nuScenes and Waymo, the processing pipeline.

Names load on first use (the loaders bring 🤗 Datasets, pyarrow and the devkit); the synthetic world
that writes test data in these formats is :mod:`geomim_hf.synthetic`.
"""

from .._lazy import lazy_names

# Each public name with the module that defines it.
_NAMES = {
    "NUSCENES_CAMERA_ORDER": "nuscenes_dataset",
    "load_nuscenes": "nuscenes_dataset",
    "GeoMIMDataset": "pipeline",
    "collate_geomim": "pipeline",
    "make_dataloader": "pipeline",
    "ATTRIBUTE_NAMES": "records",
    "SampleError": "records",
    "with_lidar_points": "records",
    "depth_maps": "targets",
    "WAYMO_CAMERA_ORDER": "waymo_dataset",
    "WAYMO_CLASSES": "classes",
    "load_waymo": "waymo_dataset",
}

__getattr__, __dir__ = lazy_names(__name__, _NAMES)

__all__ = sorted(_NAMES)
