"""Either LiDAR teacher from a ``save_pretrained`` folder or Hub id, by the ``model_type`` its config names:
the pillar CenterPoint (``GeoMIMLidarTeacher``) or BEVFusion's sparse encoder (``GeoMIMSparseTeacher``).

Both give ``bev_features(lidar_points, ego_from_lidar, point_mask)`` -> (B, C_t, Y_t, X_t) on the student's
target grid and ``config.check_student(student_config)``.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedModel

from .modeling_lidar_teacher import GeoMIMLidarTeacher
from .modeling_sparse_teacher import GeoMIMSparseTeacher

TEACHER_CLASSES = (GeoMIMLidarTeacher, GeoMIMSparseTeacher)


def load_teacher(name_or_path: str, **kwargs) -> PreTrainedModel:
    """The teacher saved in ``name_or_path``, frozen (eval mode, no gradients). ``kwargs`` go to
    ``from_pretrained``."""
    expected = [cls.config_class.model_type for cls in TEACHER_CLASSES]
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{name_or_path} is not a LiDAR teacher: expected a save_pretrained folder whose config.json "
                         f"has model_type in {expected} ({str(error).splitlines()[0]})") from error
    for cls in TEACHER_CLASSES:
        if isinstance(config, cls.config_class):
            return cls.from_pretrained(name_or_path, config=config, **kwargs).eval().requires_grad_(False)
    raise ValueError(f"{name_or_path} holds a {type(config).__name__} (model_type {config.model_type!r}), not a LiDAR "
                     f"teacher: expected model_type in {expected} (train one with examples/train_lidar_teacher.py or "
                     "convert one with geomim_hf.convert.convert_bevfusion_lidar / convert_mmdet3d_centerpoint)")
