"""geomim-hf: GeoMIM pretraining and BEV perception with a Hugging Face interface.

Importing the package registers ``geomim`` with the transformers Auto classes: AutoConfig, AutoModel (the
encoder), AutoImageProcessor, AutoModelForMaskedImageModeling (pretraining) and
AutoModelForObjectDetection (the BEV detector); and the two LiDAR teachers, ``geomim_lidar_teacher``
(pillar CenterPoint) and ``geomim_sparse_teacher`` (BEVFusion's sparse encoder), with AutoConfig and
AutoModel (``geomim_hf.teachers.load_teacher`` loads either); and the transformers pipelines
``bev-object-detection`` and ``bev-map-segmentation`` (:mod:`.pipelines`).

The import is light: the configs load at once, the models and the image processor (PyTorch model code,
transformers' image processing and torchvision take seconds) on first use, as transformers' own names do:
``geomim_hf.GeoMIMForBEVDetection`` imports its module when first named, and the Auto classes get the
models and the processor when transformers first imports its modeling or image-processing Auto module
(:mod:`._auto`), so ``AutoModel.from_pretrained`` and ``AutoImageProcessor.from_pretrained`` work in
any order.
"""

from ._auto import register_auto_configs, register_when_imported
from ._lazy import lazy_names
from .configuration_geomim import PRESETS, GeoMIMConfig
from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from .configuration_sparse_teacher import GeoMIMSparseTeacherConfig

__version__ = "0.1.0.dev0"

# Each public name that is not a config, with the module that defines it (imported on first use).
_LAZY_NAMES = {
    "GeoMIMForBEVDetection": "modeling_geomim",
    "GeoMIMForBEVSegmentation": "modeling_geomim",
    "GeoMIMBEVPreTrainedModel": "modeling_geomim",
    "GeoMIMForMaskedBEVModeling": "modeling_geomim",
    "GeoMIMModel": "modeling_geomim",
    "GeoMIMPreTrainedModel": "modeling_geomim",
    "random_cell_mask": "modeling_geomim",
    "GeoMIMImageProcessor": "image_processing_geomim",
    "GeoMIMLidarTeacher": "modeling_lidar_teacher",
    "GeoMIMSparseTeacher": "modeling_sparse_teacher",
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY_NAMES)

register_auto_configs()
register_when_imported()

__all__ = sorted(["PRESETS", "GeoMIMConfig", "GeoMIMLidarTeacherConfig", "GeoMIMSparseTeacherConfig", "__version__",
                  *_LAZY_NAMES])
