"""geomim-hf: GeoMIM pretraining and BEV perception with a Hugging Face interface.

Importing the package registers ``geomim`` with the transformers Auto classes: AutoConfig, AutoModel (the
encoder), AutoImageProcessor, AutoModelForMaskedImageModeling (pretraining) and
AutoModelForObjectDetection (the BEV detector); and the two LiDAR teachers, ``geomim_lidar_teacher``
(pillar CenterPoint) and ``geomim_sparse_teacher`` (BEVFusion's sparse encoder), with AutoConfig and
AutoModel (``geomim_hf.teachers.load_teacher`` loads either).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskedImageModeling,
    AutoModelForObjectDetection,
)

from .configuration_geomim import PRESETS, GeoMIMConfig
from .image_processing_geomim import GeoMIMImageProcessor
from .modeling_lidar_teacher import GeoMIMLidarTeacher, GeoMIMLidarTeacherConfig
from .modeling_sparse_teacher import GeoMIMSparseTeacher, GeoMIMSparseTeacherConfig
from .modeling_geomim import (
    GeoMIMForBEVDetection,
    GeoMIMForMaskedBEVModeling,
    GeoMIMModel,
    GeoMIMPreTrainedModel,
    random_cell_mask,
)

__version__ = "0.1.0.dev0"

AutoConfig.register(GeoMIMConfig.model_type, GeoMIMConfig, exist_ok=True)
AutoImageProcessor.register(GeoMIMConfig, image_processor_classes={"pil": GeoMIMImageProcessor, "torchvision": GeoMIMImageProcessor}, exist_ok=True)
AutoModel.register(GeoMIMConfig, GeoMIMModel, exist_ok=True)
AutoModelForMaskedImageModeling.register(GeoMIMConfig, GeoMIMForMaskedBEVModeling, exist_ok=True)
# 3D boxes from cameras: the nearest Auto task (its outputs are ours, not DETR's).
AutoModelForObjectDetection.register(GeoMIMConfig, GeoMIMForBEVDetection, exist_ok=True)
AutoConfig.register(GeoMIMLidarTeacherConfig.model_type, GeoMIMLidarTeacherConfig, exist_ok=True)
AutoModel.register(GeoMIMLidarTeacherConfig, GeoMIMLidarTeacher, exist_ok=True)
AutoConfig.register(GeoMIMSparseTeacherConfig.model_type, GeoMIMSparseTeacherConfig, exist_ok=True)
AutoModel.register(GeoMIMSparseTeacherConfig, GeoMIMSparseTeacher, exist_ok=True)

__all__ = [
    "PRESETS",
    "GeoMIMConfig",
    "GeoMIMForBEVDetection",
    "GeoMIMForMaskedBEVModeling",
    "GeoMIMImageProcessor",
    "GeoMIMLidarTeacher",
    "GeoMIMLidarTeacherConfig",
    "GeoMIMModel",
    "GeoMIMPreTrainedModel",
    "GeoMIMSparseTeacher",
    "GeoMIMSparseTeacherConfig",
    "__version__",
    "random_cell_mask",
]
