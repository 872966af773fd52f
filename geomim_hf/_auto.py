"""geomim's classes in the transformers Auto classes, and its pipelines.

The configs register at ``import geomim_hf`` (they cost nothing). The models and the image processor
register when transformers first imports the Auto module that maps them (``modeling_auto`` for
AutoModel and AutoModelFor*, ``image_processing_auto`` for AutoImageProcessor; ``transformers.pipelines`` for
the ``bev-object-detection`` and ``bev-map-segmentation`` pipelines), or at once where it
already has: importing them costs seconds (PyTorch model code, transformers' image processing and
torchvision) that a script which only reads configs or loads data need not pay. Either way the Auto
class has them before its first ``from_pretrained``.
"""

from __future__ import annotations

import importlib.abc
import sys

MODELING_AUTO = "transformers.models.auto.modeling_auto"
IMAGE_PROCESSING_AUTO = "transformers.models.auto.image_processing_auto"
PIPELINES = "transformers.pipelines"


def register_auto_configs() -> None:
    from transformers import AutoConfig

    from .configuration_geomim import GeoMIMConfig
    from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
    from .configuration_sparse_teacher import GeoMIMSparseTeacherConfig

    for config_class in (GeoMIMConfig, GeoMIMLidarTeacherConfig, GeoMIMSparseTeacherConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def register_models() -> None:
    from transformers import (
        AutoModel,
        AutoModelForMaskedImageModeling,
        AutoModelForObjectDetection,
        AutoModelForSemanticSegmentation,
    )

    from .modeling_geomim import (
        GeoMIMForBEVDetection,
        GeoMIMForBEVSegmentation,
        GeoMIMForMaskedBEVModeling,
        GeoMIMModel,
    )
    from .modeling_lidar_teacher import GeoMIMLidarTeacher
    from .modeling_sparse_teacher import GeoMIMSparseTeacher

    for model_class in (GeoMIMModel, GeoMIMLidarTeacher, GeoMIMSparseTeacher):
        AutoModel.register(model_class.config_class, model_class, exist_ok=True)
    AutoModelForMaskedImageModeling.register(GeoMIMModel.config_class, GeoMIMForMaskedBEVModeling, exist_ok=True)
    # 3D boxes from cameras: the nearest Auto task (its outputs are ours, not DETR's).
    AutoModelForObjectDetection.register(GeoMIMModel.config_class, GeoMIMForBEVDetection, exist_ok=True)
    # BEV map masks: semantic segmentation of the ground seen from above, multi-label.
    AutoModelForSemanticSegmentation.register(GeoMIMModel.config_class, GeoMIMForBEVSegmentation, exist_ok=True)


def register_image_processor() -> None:
    from transformers import AutoImageProcessor

    from .configuration_geomim import GeoMIMConfig
    from .image_processing_geomim import GeoMIMImageProcessor

    AutoImageProcessor.register(GeoMIMConfig, image_processor_classes={"pil": GeoMIMImageProcessor,
                                                                       "torchvision": GeoMIMImageProcessor},
                                exist_ok=True)


def register_pipelines() -> None:
    if "geomim_hf.pipelines" in sys.modules:  # imported first (and importing transformers.pipelines): it registers
        return                                # its tasks itself, at its end
    import geomim_hf.pipelines  # noqa: F401  (registers the tasks)


_PENDING = {MODELING_AUTO: register_models, IMAGE_PROCESSING_AUTO: register_image_processor,
            PIPELINES: register_pipelines}


class _RegisterAfter(importlib.abc.Loader):
    """The real loader of a transformers Auto module, then our registration once the module has run."""

    def __init__(self, loader, register):
        self.loader, self.register = loader, register

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.register()

    def __getattr__(self, name):  # get_source, get_filename, is_package, ...: the real loader's
        return getattr(self.loader, name)


class _AutoModuleFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a pending Auto module, asks the other finders and wraps their loader."""

    def find_spec(self, name, path, target=None):
        register = _PENDING.pop(name, None)
        if register is None:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                spec.loader = _RegisterAfter(spec.loader, register)
                return spec
        return None


def register_when_imported() -> None:
    """Register the models and the image processor now where transformers has their Auto module, else
    as soon as it imports it."""
    for name in [name for name in _PENDING if name in sys.modules]:
        _PENDING.pop(name)()
    if _PENDING and not any(isinstance(finder, _AutoModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoModuleFinder())
