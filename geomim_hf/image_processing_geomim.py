"""GeoMIMImageProcessor: multi-view resize, crop, flip and rotate with exact geometry.

Every image augmentation is an affine map of pixel coordinates, returned as ``processed_from_original``
(3x3, original pixels to processed pixels, pixel (i, j) centred at (i, j)), so a 3D point
projects into the processed view at ``processed_from_original @ intrinsics @ point_camera``. The BEV
augmentation (rotate, scale, mirror the ego frame) is returned as ``augmented_ego_from_ego`` (4x4,
ego to augmented ego); boxes, velocities and points come back in the augmented frame while the
camera geometry stays as measured, as BEVDet/BEVDepth apply it inside the view transformer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .data.records import check_file, is_rigid
from .data.targets import augment_boxes, augment_points, bev_augmentation_matrix, depth_maps


def open_view(view, name: str = "image") -> Image.Image:
    """One camera image as a PIL image, not decoded yet where it is a file (so a JPEG can be drafted): a PIL
    image; a path; a datasets ``Image`` feature left undecoded (``{"path", "bytes"}``); a NumPy array (H, W) or
    (H, W, 1|3|4), uint8 or float in [0, 1]; or a tensor (1|3, H, W) likewise. ``name`` says which input it is
    in an error."""
    if isinstance(view, Image.Image):
        image = view
    elif isinstance(view, (str, os.PathLike)):
        image = Image.open(check_file(os.fspath(view), name))
    elif isinstance(view, dict) and ("bytes" in view or "path" in view):
        image = Image.open(io.BytesIO(view["bytes"]) if view.get("bytes") else view["path"])
    elif isinstance(view, (np.ndarray, torch.Tensor)):
        array = view.detach().cpu().numpy() if isinstance(view, torch.Tensor) else view
        if isinstance(view, torch.Tensor) and array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)  # tensors are channels-first, as torchvision's
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ValueError(f"{name}: expected an image array (H, W) or (H, W, 1|3|4) (tensors (1|3, H, W)), "
                             f"got shape {tuple(view.shape)}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{name}: expected uint8 or float pixels in [0, 1], got dtype {array.dtype}")
            if array.size and not (0.0 <= array.min() and array.max() <= 1.0):  # 0..255 floats, or normalised
                raise ValueError(f"{name}: float pixels must lie in [0, 1] (uint8 for 0..255), got "
                                 f"[{array.min():.3g}, {array.max():.3g}]")
            array = (array * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(array))
    else:
        raise TypeError(f"{name}: expected a PIL image, a path or an image array, got {type(view).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} has zero size ({image.width} x {image.height} pixels)")
    return image


def _is_view(value) -> bool:
    return isinstance(value, (Image.Image, str, os.PathLike, dict)) or \
        (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim in (2, 3))


def check_cameras(intrinsics, ego_from_camera, num_views: int, where: str = "",
                  prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate one sample's camera geometry and return it as float64: ``intrinsics`` (N, 3, 3) pinhole
    matrices (focal lengths > 0, last row (0, 0, 1)) and ``ego_from_camera`` (N, 4, 4) rigid transforms (camera
    frame x right, y down, z forward), finite, one per image. ``where`` prefixes the errors (e.g. "sample 2: "),
    ``prefix`` the argument names (``prev_``: the previous frame's)."""
    intrinsics = np.asarray(intrinsics, np.float64)
    ego_from_camera = np.asarray(ego_from_camera, np.float64)
    where = f"{where}{prefix}"
    for name, value, shape in (("intrinsics", intrinsics, (3, 3)), ("ego_from_camera", ego_from_camera, (4, 4))):
        if value.shape != (num_views, *shape):
            raise ValueError(f"{where}{name}: expected shape (N, {shape[0]}, {shape[1]}) = ({num_views}, {shape[0]}, "
                             f"{shape[1]}) for {num_views} images, got {value.shape}")
        bad = ~np.isfinite(value).all(axis=(1, 2))
        if bad.any():
            raise ValueError(f"{where}{name} of view {int(np.argmax(bad))} holds NaN or inf")
    last_row = np.abs(intrinsics[:, 2] - np.array([0.0, 0.0, 1.0])).max(1) > 1e-6
    focal = (intrinsics[:, 0, 0] <= 0) | (intrinsics[:, 1, 1] <= 0)
    if (last_row | focal).any():
        view = int(np.argmax(last_row | focal))
        raise ValueError(f"{where}intrinsics of view {view}: expected a pinhole matrix [[fx, s, cx], [0, fy, cy], "
                         f"[0, 0, 1]] with fx, fy > 0 (pixels), got {intrinsics[view].tolist()}")
    rigid = is_rigid(ego_from_camera)
    if not rigid.all():
        view = int(np.argmin(rigid))
        rotation = ego_from_camera[view, :3, :3]
        error = np.abs(rotation.T @ rotation - np.eye(3)).max()
        raise ValueError(f"{where}ego_from_camera of view {view} is not a rigid transform (a rotation R and a "
                         f"translation, last row (0, 0, 0, 1)): |R^T R - I| = {error:.2g}, det R = "
                         f"{np.linalg.det(rotation):.3g}, last row {ego_from_camera[view, 3].tolist()}")
    return intrinsics, ego_from_camera


def _as_rng(generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def draft_jpeg(image: Image.Image, resized: tuple[int, int]) -> int:
    """Have a not yet decoded JPEG decode at 1/f of its size (f in 8, 4, 2: the largest that divides width and
    height and stays at least ``resized``), so it covers the same extent and a resize from it to ``resized`` maps
    pixels as from the full image. Returns f (1: decoded in full, e.g. not a JPEG or already loaded)."""
    width, height = image.size
    if getattr(image, "format", None) != "JPEG" or getattr(image, "tile", None) in (None, []):
        return 1
    for factor in (8, 4, 2):
        if width % factor == 0 and height % factor == 0 and width // factor >= resized[0] \
                and height // factor >= resized[1]:
            image.draft("RGB", (width // factor, height // factor))
            return factor if image.size == (width // factor, height // factor) else 1
    return 1


class GeoMIMImageProcessor(BaseImageProcessor):
    r"""
    Args:
        image_size (`tuple[int, int]`, defaults to `(256, 704)`): processed (height, width).
        resize_range (`tuple[float, float]`, defaults to `(0.864, 1.25)`): training scale, relative to
            the scale that fits the image width (nuScenes: 0.44 x this = the official U(0.38, 0.55)).
        test_resize (`float`, defaults to 1.0): evaluation scale relative to fitting the width.
        crop_height_range (`tuple[float, float]`, defaults to `(0.0, 0.0)`): in training, the share of
            the resized height kept below the crop (BEVDet's ``crop_h``); 0 crops from the bottom.
        test_crop (`str`, defaults to `"bottom"`): `"bottom"` or `"center"` crop at evaluation.
        rotate_range (`tuple[float, float]`, defaults to `(-5.4, 5.4)`): training rotation, degrees.
        flip_probability (`float`, defaults to 0.5): training horizontal flip.
        bev_rotate_range (`tuple[float, float]`, defaults to `(-22.5, 22.5)`): BEV rotation, degrees.
        bev_scale_range (`tuple[float, float]`, defaults to `(0.95, 1.05)`): BEV scale.
        bev_flip_probability (`float`, defaults to 0.5): probability of each BEV mirror (x and y).
        depth_stride (`int`, defaults to 16): block size of the depth targets.
        image_mean, image_std (`tuple[float, float, float]`): normalisation (ImageNet's).
        jpeg_draft (`bool`, defaults to `True`): decode a JPEG that is about to be shrunk at 1/2, 1/4 or 1/8 of
            its size in the DCT domain (Pillow's ``Image.draft``), the largest reduction that still leaves the
            resize something to shrink and divides both sides exactly (so the geometry is unchanged). A 1600 x
            900 nuScenes view resized to 704 wide decodes at 800 x 450. The pixels differ slightly from a full
            decode followed by the same resize; ``False`` decodes in full.
    """

    model_input_names = ["pixel_values", "intrinsics", "ego_from_camera", "processed_from_original",
                         "augmented_ego_from_ego"]

    def __init__(
        self,
        image_size: Sequence[int] = (256, 704),
        resize_range: Sequence[float] = (0.864, 1.25),
        test_resize: float = 1.0,
        crop_height_range: Sequence[float] = (0.0, 0.0),
        test_crop: str = "bottom",
        rotate_range: Sequence[float] = (-5.4, 5.4),
        flip_probability: float = 0.5,
        bev_rotate_range: Sequence[float] = (-22.5, 22.5),
        bev_scale_range: Sequence[float] = (0.95, 1.05),
        bev_flip_probability: float = 0.5,
        depth_stride: int = 16,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        jpeg_draft: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if test_crop not in ("bottom", "center"):
            raise ValueError(f"test_crop must be 'bottom' or 'center', got {test_crop!r}")
        self.image_size = [int(v) for v in image_size]
        self.resize_range = [float(v) for v in resize_range]
        self.test_resize = float(test_resize)
        self.crop_height_range = [float(v) for v in crop_height_range]
        self.test_crop = test_crop
        self.rotate_range = [float(v) for v in rotate_range]
        self.flip_probability = float(flip_probability)
        self.bev_rotate_range = [float(v) for v in bev_rotate_range]
        self.bev_scale_range = [float(v) for v in bev_scale_range]
        self.bev_flip_probability = float(bev_flip_probability)
        self.depth_stride = int(depth_stride)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.jpeg_draft = bool(jpeg_draft)

    # Geometry ------------------------------------------------------------------------------------

    def sample_view_augmentation(self, width: int, height: int, training: bool, rng: np.random.Generator):
        """Resize size, crop offset, flip and rotation (degrees) for one view."""
        out_height, out_width = self.image_size
        fit = out_width / width
        scale = fit * (rng.uniform(*self.resize_range) if training else self.test_resize)
        new_width, new_height = max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)
        if training:
            crop_x = int(rng.integers(0, max(new_width - out_width, 0) + 1))
            crop_y = int((1 - rng.uniform(*self.crop_height_range)) * new_height) - out_height
            flip = bool(rng.uniform() < self.flip_probability)
            rotation = float(rng.uniform(*self.rotate_range))
        else:
            crop_x = (new_width - out_width) // 2
            crop_y = new_height - out_height if self.test_crop == "bottom" else (new_height - out_height) // 2
            flip, rotation = False, 0.0
        return (new_width, new_height), (crop_x, crop_y), flip, rotation

    def processed_from_original_matrix(self, width, height, resized, crop, flip, rotation) -> np.ndarray:
        """3x3 map from original to processed pixel coordinates (pixel centres at integers)."""
        out_height, out_width = self.image_size
        scale_x, scale_y = resized[0] / width, resized[1] / height
        # Resampling keeps pixel areas aligned: x_resized = s (x + 1/2) - 1/2.
        matrix = np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5], [0, 0, 1.0]])
        matrix = np.array([[1.0, 0.0, -crop[0]], [0.0, 1.0, -crop[1]], [0, 0, 1.0]]) @ matrix
        if flip:
            matrix = np.array([[-1.0, 0.0, out_width - 1.0], [0.0, 1.0, 0.0], [0, 0, 1.0]]) @ matrix
        if rotation:
            # Counter-clockwise on screen (y points down) about the image centre.
            theta = np.deg2rad(rotation)
            center = np.array([(out_width - 1) / 2, (out_height - 1) / 2])
            turn = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
            rotate = np.eye(3)
            rotate[:2, :2] = turn
            rotate[:2, 2] = center - turn @ center
            matrix = rotate @ matrix
        return matrix

    def augment_view(self, image: Image.Image, training: bool, rng: np.random.Generator):
        """Processed image (H, W, 3) uint8 and its processed_from_original (3, 3)."""
        width, height = image.size
        resized, crop, flip, rotation = self.sample_view_augmentation(width, height, training, rng)
        if self.jpeg_draft:
            draft_jpeg(image, resized)
        image = image.convert("RGB")
        processed_from_original = self.processed_from_original_matrix(width, height, resized, crop, flip, rotation)
        # Antialiased resize first, then crop, flip and rotate as one affine warp (no second rescale).
        resized_image = image.resize(resized, Image.BILINEAR)
        resize_matrix = self.processed_from_original_matrix(width, height, resized, (0, 0), False, 0.0)
        out_from_resized = processed_from_original @ np.linalg.inv(resize_matrix)
        # PIL samples the input at (a x + b y + c, d x + e y + f) with pixel centres at +0.5.
        half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0, 0, 1.0]])
        resized_from_out_pil = half @ np.linalg.inv(out_from_resized) @ np.linalg.inv(half)
        out_height, out_width = self.image_size
        warped = resized_image.transform((out_width, out_height), Image.AFFINE, resized_from_out_pil[:2].ravel(),
                                         resample=Image.BILINEAR, fillcolor=(0, 0, 0))
        return np.asarray(warped), processed_from_original

    def sample_augmented_ego_from_ego(self, rng: np.random.Generator) -> np.ndarray:
        """A random BEV augmentation: (4, 4) from the ego frame to the augmented ego frame."""
        return bev_augmentation_matrix(
            np.deg2rad(rng.uniform(*self.bev_rotate_range)), rng.uniform(*self.bev_scale_range),
            bool(rng.uniform() < self.bev_flip_probability), bool(rng.uniform() < self.bev_flip_probability))

    # Call ----------------------------------------------------------------------------------------

    def preprocess(
        self,
        images,
        intrinsics,
        ego_from_camera,
        *,
        training: bool = False,
        generator=None,
        boxes=None,
        velocities=None,
        lidar_points=None,
        ego_from_lidar=None,
        bev_augment: bool | None = None,
        return_depth: bool = False,
        return_tensors: str | None = "pt",
        input_prefix: str = "",
        **kwargs,
    ) -> BatchFeature:
        """Process one sample (``images`` a list of N views) or a batch (a list of such lists). A view is
        what :func:`open_view` takes (a PIL image, a path, an array); views of one sample may differ in size.

        Args:
            intrinsics: (N, 3, 3) or (B, N, 3, 3). ego_from_camera: (N, 4, 4) or (B, N, 4, 4), rigid (checked by
                :func:`check_cameras`, as the intrinsics).
            training: draw the random augmentations; otherwise resize and crop deterministically.
            generator: a ``numpy.random.Generator`` or seed for the augmentations.
            boxes (K, 7), velocities (K, 2), lidar_points (M, C), ego_from_lidar (4, 4): optional
                targets (per sample, lists for a batch), moved by the BEV augmentation.
            bev_augment: apply the BEV augmentation (defaults to ``training``).
            return_depth: add ``depth_maps`` (B, N, H / depth_stride, W / depth_stride) from
                ``lidar_points`` through the image augmentation (before the BEV augmentation).
            input_prefix: put before the argument names in errors (``prev_`` for a previous frame's images).

        Returns a ``BatchFeature`` with ``pixel_values`` (B, N, 3, H, W), ``intrinsics``,
        ``ego_from_camera``, ``processed_from_original`` (B, N, 3, 3), ``augmented_ego_from_ego`` (B, 4, 4) and, when
        given, ``boxes``, ``velocities``, ``lidar_points`` as lists of per-sample tensors.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        single = _is_view(images) or (len(images) > 0 and _is_view(images[0]))
        if _is_view(images):
            images = [images]

        def as_batch(value):
            return None if value is None else ([value] if single else list(value))

        batch_images = [images] if single else list(images)
        if not batch_images or any(len(views) == 0 for views in batch_images):
            raise ValueError(f"{input_prefix}images: expected N >= 1 views per sample, got a sample without images")
        intrinsics, ego_from_camera = as_batch(intrinsics), as_batch(ego_from_camera)
        if len(intrinsics) != len(batch_images) or len(ego_from_camera) != len(batch_images):
            raise ValueError(f"{len(batch_images)} samples of images but {len(intrinsics)} of intrinsics and "
                             f"{len(ego_from_camera)} of ego_from_camera")
        cameras = [check_cameras(k, e, len(views), f"sample {index}: " if not single else "", input_prefix)
                   for index, (views, k, e) in enumerate(zip(batch_images, intrinsics, ego_from_camera))]
        if len({len(views) for views in batch_images}) > 1:
            raise ValueError(f"the samples of one batch must have as many views each, got "
                             f"{[len(views) for views in batch_images]}")
        batch_intrinsics = np.stack([k for k, _ in cameras])
        batch_ego_from_camera = np.stack([e for _, e in cameras])
        boxes, velocities, lidar_points = as_batch(boxes), as_batch(velocities), as_batch(lidar_points)
        ego_from_lidar = as_batch(ego_from_lidar)
        if return_depth and (lidar_points is None or ego_from_lidar is None):
            raise ValueError("return_depth=True needs lidar_points and ego_from_lidar")
        if boxes is not None and velocities is None:
            raise ValueError("boxes need their velocities (zeros if unknown) to be augmented together")
        bev_augment = training if bev_augment is None else bev_augment
        rng = _as_rng(generator)
        mean = np.asarray(self.image_mean, np.float32)
        std = np.asarray(self.image_std, np.float32)

        outputs: dict[str, list] = {k: [] for k in ("pixel_values", "processed_from_original",
                                                    "augmented_ego_from_ego", "depth_maps",
                                                     "boxes", "velocities", "lidar_points")}
        for index, views in enumerate(batch_images):
            pixels, posts = [], []
            for number, view in enumerate(views):
                name = f"{input_prefix}images[{number}]" if single else f"{input_prefix}images[{index}][{number}]"
                array, post = self.augment_view(open_view(view, name), training, rng)
                pixels.append(((array.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
                posts.append(post)
            outputs["pixel_values"].append(np.stack(pixels))
            outputs["processed_from_original"].append(np.stack(posts))
            if return_depth:
                outputs["depth_maps"].append(depth_maps(
                    np.asarray(lidar_points[index]), np.asarray(ego_from_lidar[index], np.float64),
                    batch_ego_from_camera[index], batch_intrinsics[index], outputs["processed_from_original"][-1],
                    tuple(self.image_size), self.depth_stride))
            augmented_from_ego = self.sample_augmented_ego_from_ego(rng) if bev_augment else np.eye(4)
            outputs["augmented_ego_from_ego"].append(augmented_from_ego)
            if boxes is not None:
                sample_boxes, sample_velocities = augment_boxes(boxes[index], velocities[index], augmented_from_ego)
                outputs["boxes"].append(sample_boxes)
                outputs["velocities"].append(sample_velocities)
            if lidar_points is not None:
                if ego_from_lidar is None:
                    raise ValueError("lidar_points need ego_from_lidar to be moved by the BEV augmentation")
                outputs["lidar_points"].append(augment_points(np.asarray(lidar_points[index]),
                                                              np.asarray(ego_from_lidar[index]), augmented_from_ego))

        data = {
            "pixel_values": np.stack(outputs["pixel_values"]),
            "intrinsics": batch_intrinsics.astype(np.float32),
            "ego_from_camera": batch_ego_from_camera.astype(np.float32),
            "processed_from_original": np.stack(outputs["processed_from_original"]).astype(np.float32),
            "augmented_ego_from_ego": np.stack(outputs["augmented_ego_from_ego"]).astype(np.float32),
        }
        if return_depth:
            data["depth_maps"] = np.stack(outputs["depth_maps"])
        if return_tensors == "pt":
            data = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
        elif return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        ragged = {k: outputs[k] for k in ("boxes", "velocities", "lidar_points") if outputs[k]}
        if return_tensors == "pt":
            ragged = {k: [torch.from_numpy(np.ascontiguousarray(v)) for v in values] for k, values in ragged.items()}
        return BatchFeature(data={**data, **ragged})

    def __call__(self, images, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)
