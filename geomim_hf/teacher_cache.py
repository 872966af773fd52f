"""Teacher BEV features cached on disk: one safetensors file per sample, written atomically.

Cached features are in the un-augmented ego frame; :meth:`TeacherFeatureCache.load` applies a
batch's BEV augmentation, which must be mirrors of x and/or y (the official pretraining's only BEV
augmentation): mirrors map grid cells to grid cells exactly, rotations and scales would not.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

from .modeling.grids import BevGrid

INDEX = "index.json"


def write_features(directory: str, sample_token: str, features: torch.Tensor) -> str:
    """Save (C, Y, X) features of one sample; the file appears only once complete."""
    path = os.path.join(directory, f"{sample_token}.safetensors")
    partial = f"{path}.{os.getpid()}.partial"
    save_file({"bev_features": features.detach().contiguous().cpu()}, partial)
    os.replace(partial, path)
    return path


def write_index(directory: str, info: dict) -> None:
    with open(os.path.join(directory, INDEX), "w") as handle:
        json.dump(info, handle, indent=2)


class TeacherFeatureCache:
    """Reads the features of ``examples/cache_teacher_features.py``."""

    def __init__(self, directory: str):
        index = os.path.join(directory, INDEX)
        if not os.path.isfile(index):
            raise FileNotFoundError(f"teacher feature cache {directory} has no {INDEX}: write it with "
                                    "examples/cache_teacher_features.py")
        self.directory = directory
        with open(index) as handle:
            self.info = json.load(handle)
        missing = [key for key in ("x_range", "y_range", "resolution", "channels") if key not in self.info]
        if missing:
            raise ValueError(f"{index} lacks {missing}: write the cache again with examples/cache_teacher_features.py")
        # The ego-frame grid of the cached maps and their channels, for GeoMIMConfig.check_teacher.
        self.grid = BevGrid(self.info["x_range"], self.info["y_range"], self.info["resolution"])
        self.channels = int(self.info["channels"])
        x_range, y_range = self.grid.x_range, self.grid.y_range
        if x_range[0] != -x_range[1] or y_range[0] != -y_range[1]:
            raise ValueError(f"cached features mirror exactly only on a grid centred on the ego: x {x_range}, "
                             f"y {y_range}")

    def load(self, sample_tokens: list[str], augmented_ego_from_ego: torch.Tensor) -> torch.Tensor:
        """(B, C, Y, X) features of the samples, mirrored as each ``augmented_ego_from_ego`` (B, 4, 4) says."""
        features = []
        for token, transform in zip(sample_tokens, augmented_ego_from_ego.detach().cpu().double()):
            path = os.path.join(self.directory, f"{token}.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no cached teacher features for sample {token}: {path} is missing")
            linear = transform[:3, :3]
            if not torch.allclose(linear.abs(), torch.eye(3, dtype=linear.dtype), atol=1e-6) or transform[:3, 3].abs().max() > 1e-6:
                raise ValueError(f"sample {token}: cached teacher features allow BEV mirrors only, got "
                                 f"augmented_ego_from_ego {transform.tolist()}")
            bev = load_file(path)["bev_features"]  # (C, Y, X)
            dims = [d for d, sign in ((-1, linear[0, 0]), (-2, linear[1, 1])) if sign < 0]
            features.append(torch.flip(bev, dims) if dims else bev)
        return torch.stack(features)
