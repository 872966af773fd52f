"""geomim-hf: GeoMIM pretraining and BEV perception with a Hugging Face interface.

Importing the package registers ``geomim`` with the transformers Auto classes: AutoConfig, AutoModel (the
encoder), AutoImageProcessor, AutoModelForMaskedImageModeling (pretraining) and
AutoModelForObjectDetection (the BEV detector).
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

__all__ = [
    "PRESETS",
    "GeoMIMConfig",
    "GeoMIMForBEVDetection",
    "GeoMIMForMaskedBEVModeling",
    "GeoMIMImageProcessor",
    "GeoMIMModel",
    "GeoMIMPreTrainedModel",
    "__version__",
    "random_cell_mask",
]
