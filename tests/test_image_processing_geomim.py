import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

import geomim_hf  # noqa: F401  (registers the Auto classes)
from geomim_hf import GeoMIMImageProcessor
from geomim_hf.image_processing_geomim import draft_jpeg
from geomim_hf.data import load_nuscenes
from geomim_hf.data.geometry import invert_rigid, transform_points


def _blob(width, height, center, sigma=10.0):
    y, x = np.mgrid[0:height, 0:width]
    value = np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * sigma**2))
    return Image.fromarray((np.stack([value] * 3, -1) * 255).astype(np.uint8))


@pytest.mark.parametrize("training", [True, False])
def test_processed_from_original_is_where_the_pixels_go(training):
    """A blob at a known sub-pixel position: its centroid after processing is processed_from_original @ position."""
    processor = GeoMIMImageProcessor()
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(12):
        center = np.array([rng.uniform(300, 1300), rng.uniform(500, 850)])
        output, processed_from_original = processor.augment_view(_blob(1600, 900, center), training, rng)
        weight = output[..., 0].astype(np.float64)
        weight[weight < 20] = 0
        if weight.sum() < 1000:
            continue  # rotated or cropped out of view
        rows, columns = np.mgrid[0:output.shape[0], 0:output.shape[1]]
        centroid = np.array([(weight * columns).sum(), (weight * rows).sum()]) / weight.sum()
        errors.append(np.abs(centroid - (processed_from_original @ np.append(center, 1.0))[:2]).max())
    assert len(errors) >= 8 and max(errors) < 0.06  # a half-pixel convention slip would show as ~0.3


def _jpeg(image: Image.Image) -> Image.Image:
    """``image`` as a lazily opened JPEG, the way a dataset hands one over."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_draft_picks_the_largest_exact_reduction():
    blob = _blob(1600, 900, (800, 450))
    assert draft_jpeg(_jpeg(blob), (176, 99)) == 4  # 1/8 would be 200 x 112.5: not exact
    image = _jpeg(blob)
    assert draft_jpeg(image, (704, 396)) == 2 and image.size == (800, 450)
    assert draft_jpeg(_jpeg(blob), (880, 495)) == 1  # nothing smaller covers it
    assert draft_jpeg(blob, (176, 99)) == 1  # not a JPEG file
    loaded = _jpeg(blob)
    loaded.load()
    assert draft_jpeg(loaded, (176, 99)) == 1 and loaded.size == (1600, 900)


@pytest.mark.parametrize("training", [True, False])
def test_jpeg_draft_moves_no_pixel(training):
    """A JPEG decoded at a reduced DCT scale: the same processed_from_original as a full decode, the blob's
    centroid where it maps, and nearly the same pixels."""
    drafted, full = GeoMIMImageProcessor(), GeoMIMImageProcessor(jpeg_draft=False)
    rng = np.random.default_rng(1)
    errors, differences = [], []
    for _ in range(12):
        center = np.array([rng.uniform(300, 1300), rng.uniform(500, 850)])
        seed = int(rng.integers(1 << 31))
        blob = _blob(1600, 900, center)
        output, processed_from_original = drafted.augment_view(_jpeg(blob), training, np.random.default_rng(seed))
        reference, reference_matrix = full.augment_view(_jpeg(blob), training, np.random.default_rng(seed))
        assert np.array_equal(processed_from_original, reference_matrix)
        differences.append(np.abs(output.astype(float) - reference.astype(float)).mean())
        weight = output[..., 0].astype(np.float64)
        weight[weight < 20] = 0
        if weight.sum() < 1000:
            continue
        rows, columns = np.mgrid[0:output.shape[0], 0:output.shape[1]]
        centroid = np.array([(weight * columns).sum(), (weight * rows).sum()]) / weight.sum()
        errors.append(np.abs(centroid - (processed_from_original @ np.append(center, 1.0))[:2]).max())
    assert len(errors) >= 8 and max(errors) < 0.06
    assert 0 < np.mean(differences) < 1.0  # grey levels of 255: another decode, not another image


def test_augmented_views_see_3d_points_where_the_originals_do(nuscenes_root, tmp_path):
    """Project box centres through the camera into the original and into the augmented image: the
    colours agree."""
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", cache_dir=str(tmp_path), decode_lidar=False)
    processor = GeoMIMImageProcessor()
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    compared, differences = 0, []
    for index in range(3):
        row = rows.with_format("numpy")[index]
        images = rows[index]["images"]
        out = processor(images, row["intrinsics"], row["ego_from_camera"], training=True, generator=index,
                        return_tensors="np")
        for view in range(6):
            original = np.asarray(images[view], np.float64) / 255
            augmented = out["pixel_values"][0, view].transpose(1, 2, 0) * std + mean
            camera_from_ego = invert_rigid(row["ego_from_camera"][view])
            for box in row["boxes"]:
                point = transform_points(camera_from_ego, box[None, :3].astype(np.float64))[0]
                if point[2] < 3:
                    continue
                u0, v0 = (row["intrinsics"][view] @ point)[:2] / point[2]
                u1, v1 = (out["processed_from_original"][0, view] @ row["intrinsics"][view] @ point)[:2] / point[2]
                inside = (2 <= u0 < 1598 and 2 <= v0 < 898 and 2 <= u1 < 702 and 2 <= v1 < 254)
                if not inside:
                    continue
                a = original[int(round(v0)) - 1:int(round(v0)) + 2, int(round(u0)) - 1:int(round(u0)) + 2].mean((0, 1))
                b = augmented[int(round(v1)) - 1:int(round(v1)) + 2, int(round(u1)) - 1:int(round(u1)) + 2].mean((0, 1))
                differences.append(np.abs(a - b).max())
                compared += 1
    assert compared > 30
    assert np.median(differences) < 0.03 and np.mean(np.array(differences) < 0.1) > 0.9


def test_outputs_shapes_and_determinism():
    processor = GeoMIMImageProcessor(image_size=(64, 176))
    views = [_blob(400, 225, (200, 150)) for _ in range(6)]
    intrinsics = np.tile(np.array([[300.0, 0, 200], [0, 300.0, 112], [0, 0, 1]]), (6, 1, 1))
    ego_from_camera = np.tile(np.eye(4), (6, 1, 1))
    first = processor(views, intrinsics, ego_from_camera)
    assert first["pixel_values"].shape == (1, 6, 3, 64, 176) and first["pixel_values"].dtype == torch.float32
    assert first["processed_from_original"].shape == (1, 6, 3, 3) and torch.equal(first["augmented_ego_from_ego"][0],
                                                                                  torch.eye(4))
    again = processor([views, views], [intrinsics, intrinsics], [ego_from_camera, ego_from_camera])
    assert torch.equal(again["pixel_values"][1], first["pixel_values"][0])  # evaluation is deterministic
    a = processor(views, intrinsics, ego_from_camera, training=True, generator=3)
    b = processor(views, intrinsics, ego_from_camera, training=True, generator=3)
    c = processor(views, intrinsics, ego_from_camera, training=True, generator=4)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and not torch.equal(a["pixel_values"], c["pixel_values"])
    assert not torch.equal(a["augmented_ego_from_ego"][0], torch.eye(4))
    with pytest.raises(ValueError, match="return_depth=True needs lidar_points"):
        processor(views, intrinsics, ego_from_camera, return_depth=True)


def test_every_kind_of_view_gives_the_same_pixels(tmp_path):
    """Paths, arrays (uint8 and float) and tensors (channels first) are read as the PIL image they hold."""
    processor = GeoMIMImageProcessor(image_size=(64, 176))
    image = _blob(400, 225, (150, 100))
    path = tmp_path / "view.png"
    image.save(path)
    array = np.array(image)  # writable: torch.from_numpy below
    intrinsics = np.array([[[300.0, 0, 200], [0, 300.0, 112], [0, 0, 1]]])
    ego_from_camera = np.eye(4)[None]
    reference = processor([image], intrinsics, ego_from_camera)["pixel_values"]
    for view in (path, str(path), array, array / 255.0, torch.from_numpy(array).permute(2, 0, 1), array[..., :1]):
        pixels = processor([view], intrinsics, ego_from_camera)["pixel_values"]
        assert torch.allclose(pixels, reference, atol=0.02), type(view)


def test_views_of_different_sizes_keep_their_own_geometry():
    """Each view is resized from its own size: a blob at a known place lands at its processed_from_original."""
    processor = GeoMIMImageProcessor(image_size=(64, 176))
    sizes, centers = [(1600, 900), (800, 600), (1920, 1080)], [(700, 800), (300, 500), (1000, 1000)]
    views = [_blob(w, h, c, sigma=w / 80) for (w, h), c in zip(sizes, centers)]
    intrinsics = np.stack([np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]]) for w, h in sizes])
    out = processor(views, intrinsics, np.tile(np.eye(4), (3, 1, 1)), return_tensors="np")
    for view, ((w, h), center) in enumerate(zip(sizes, centers)):
        post = out["processed_from_original"][0, view].astype(np.float64)
        resized, crop, flip, rotation = processor.sample_view_augmentation(w, h, False, np.random.default_rng(0))
        assert np.allclose(post, processor.processed_from_original_matrix(w, h, resized, crop, flip, rotation))
        weight = out["pixel_values"][0, view, 0].astype(np.float64)
        weight = np.where(weight > weight.min() + 1.0, weight - weight.min(), 0.0)
        rows, columns = np.mgrid[0:64, 0:176]
        centroid = np.array([(weight * columns).sum(), (weight * rows).sum()]) / weight.sum()
        assert np.abs(centroid - (post @ np.append(center, 1.0))[:2]).max() < 0.3


def test_bad_inputs_are_named():
    processor = GeoMIMImageProcessor(image_size=(64, 176))
    views = [_blob(400, 225, (200, 150)) for _ in range(4)]
    intrinsics = np.tile(np.array([[300.0, 0, 200], [0, 300.0, 112], [0, 0, 1]]), (4, 1, 1))
    ego_from_camera = np.tile(np.eye(4), (4, 1, 1))
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \(N, 3, 3\) = \(4, 3, 3\) for 4 images, got "
                                         r"\(3, 3, 3\)"):
        processor(views, intrinsics[:3], ego_from_camera)
    with pytest.raises(ValueError, match=r"ego_from_camera: expected shape \(N, 4, 4\) = \(4, 4, 4\)"):
        processor(views, intrinsics, ego_from_camera[:, :3])
    sheared = ego_from_camera.copy()
    sheared[2, 0, 1] = 0.3
    with pytest.raises(ValueError, match="ego_from_camera of view 2 is not a rigid transform"):
        processor(views, intrinsics, sheared)
    mirrored = ego_from_camera.copy()
    mirrored[1, 0, 0] = -1.0
    with pytest.raises(ValueError, match="ego_from_camera of view 1 is not a rigid transform.*det R = -1"):
        processor(views, intrinsics, mirrored)
    broken = intrinsics.copy()
    broken[3, 0, 2] = np.nan
    with pytest.raises(ValueError, match="intrinsics of view 3 holds NaN"):
        processor(views, broken, ego_from_camera)
    with pytest.raises(ValueError, match="intrinsics of view 0: expected a pinhole matrix"):
        processor(views, intrinsics * 2, ego_from_camera)
    with pytest.raises(ValueError, match=r"images\[1\] has zero size \(0 x 225 pixels\)"):
        processor([views[0], Image.new("RGB", (0, 225)), *views[2:]], intrinsics, ego_from_camera)
    with pytest.raises(ValueError, match=r"images\[0\]: file missing.jpg is missing"):
        processor(["missing.jpg", *views[1:]], intrinsics, ego_from_camera)
    with pytest.raises(ValueError, match=r"images\[2\]: float pixels must lie in \[0, 1\] \(uint8 for 0..255\), got "
                                         r"\[0, 255\]"):
        processor([*views[:2], np.asarray(views[2], np.float32), views[3]], intrinsics, ego_from_camera)
    with pytest.raises(ValueError, match=r"sample 1: prev_intrinsics of view 3 holds NaN"):
        processor([views, views], [intrinsics, broken], [ego_from_camera, ego_from_camera], input_prefix="prev_")
    with pytest.raises(ValueError, match=r"images\[0\]: expected an image array"):
        processor([np.zeros((5, 5, 2), np.uint8), *views[1:]], intrinsics, ego_from_camera)
    with pytest.raises(ValueError, match="expected N >= 1 views"):
        processor([[]], intrinsics[:0][None], ego_from_camera[:0][None])


def test_save_and_load_through_auto_image_processor(tmp_path):
    processor = GeoMIMImageProcessor(image_size=(128, 352), rotate_range=(-3.0, 3.0), test_crop="center")
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is GeoMIMImageProcessor
    assert loaded.to_dict() == processor.to_dict()
    with pytest.raises(ValueError, match="test_crop must be"):
        GeoMIMImageProcessor(test_crop="top")
