import numpy as np
import pytest
import torch

from geomim_hf.data.geometry import camera_rotation, make_transform
from geomim_hf.modeling.grids import BevGrid, DepthBins
from geomim_hf.modeling.ops.bev_pool import TENSOR_FIELDS
from geomim_hf.modeling.view_transformer import LiftSplat, camera_vector, invert_3x3


def _lift_splat():
    return LiftSplat(image_size=(64, 176), feature_stride=16, depth_bins=DepthBins(1.0, 60.0, 2.0),
                     grid=BevGrid((-51.2, 51.2), (-51.2, 51.2), 1.6, z_range=(-10.0, 10.0)), kernel_backend="torch")


def _one_feature(lift_splat, row=2, column=5, depth_bin=4):
    depth = torch.zeros(1, 1, lift_splat.depth_bins.count, *lift_splat.feature_size)
    depth[0, 0, depth_bin, row, column] = 1.0
    context = torch.zeros(1, 1, 3, *lift_splat.feature_size)
    context[0, 0, :, row, column] = torch.tensor([1.0, 2.0, 3.0])
    return depth, context


def _camera(principal_point, scale=1.0, position=(0.0, 0.0, 1.5), yaw=0.0):
    intrinsics = torch.tensor([[[[100.0 * scale, 0, principal_point[0]], [0, 100.0 * scale, principal_point[1]],
                                 [0, 0, 1]]]])
    ego_from_camera = torch.tensor(make_transform(camera_rotation(yaw), np.array(position)))[None, None].float()
    return intrinsics, ego_from_camera


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_feature_at_a_known_pixel_and_depth_lands_in_its_cell(backend):
    """Feature (row 2, column 5) is centred at pixel (87.5, 39.5); put the principal point there and the
    ray runs straight ahead: bin 4 of [1, 60) step 2 is 10 m, so the point is ego (10, 0, 1.5), cell
    x = floor((10 + 51.2) / 1.6) = 38, y = floor(51.2 / 1.6) = 32."""
    lift_splat = _lift_splat()
    lift_splat.kernel_backend = backend
    depth, context = _one_feature(lift_splat)
    intrinsics, ego_from_camera = _camera((87.5, 39.5))
    bev = lift_splat(depth, context, intrinsics, ego_from_camera, torch.eye(3)[None, None])
    assert bev.shape == (1, 3, 64, 64)
    assert torch.nonzero(bev[0, 0]).tolist() == [[32, 38]] and bev[0, :, 32, 38].tolist() == [1.0, 2.0, 3.0]

    # The same ray after the image was halved (processed_from_original) through a camera calibrated at full size.
    intrinsics_full, _ = _camera((175.5, 79.5), scale=2.0)
    halve = torch.tensor([[[[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1.0]]]])  # x' = (x + 1/2) / 2 - 1/2
    bev = lift_splat(depth, context, intrinsics_full, ego_from_camera, halve)
    assert torch.nonzero(bev[0, 0]).tolist() == [[32, 38]]

    # A BEV rotation by +90 degrees sends (10, 0) to (0, 10): cell x = 32, y = floor(61.2 / 1.6) = 38.
    rotate = torch.tensor([[[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    bev = lift_splat(depth, context, intrinsics, ego_from_camera, torch.eye(3)[None, None], rotate)
    assert torch.nonzero(bev[0, 0]).tolist() == [[38, 32]]

    # A camera looking left from (1, 2, 1.5): the point is (1, 12, 1.5), cell x = 32, y = floor(63.2 / 1.6) = 39.
    intrinsics, ego_from_camera = _camera((87.5, 39.5), position=(1.0, 2.0, 1.5), yaw=np.pi / 2)
    bev = lift_splat(depth, context, intrinsics, ego_from_camera, torch.eye(3)[None, None])
    assert torch.nonzero(bev[0, 0]).tolist() == [[39, 32]]


def test_points_outside_the_grid_are_dropped_and_indices_are_cached_at_inference():
    lift_splat = _lift_splat().eval()
    depth, context = _one_feature(lift_splat, depth_bin=29)  # 59 m: beyond the 51.2 m grid
    intrinsics, ego_from_camera = _camera((87.5, 39.5))
    post = torch.eye(3)[None, None]
    assert lift_splat(depth, context, intrinsics, ego_from_camera, post).abs().sum() == 0
    assert lift_splat.indices(intrinsics, ego_from_camera, post) is lift_splat.indices(intrinsics, ego_from_camera,
                                                                                        post)
    moved = ego_from_camera.clone()
    moved[..., 0, 3] += 0.1
    assert lift_splat.indices(intrinsics, moved, post) is not lift_splat.indices(intrinsics, ego_from_camera, post)

    # In training every augmented geometry is new: the indices are computed afresh (the same), never cached.
    cached = lift_splat.indices(intrinsics, ego_from_camera, post)
    lift_splat.train()
    lift_splat._cache.clear()
    fresh = lift_splat.indices(intrinsics, ego_from_camera, post)
    assert fresh is not cached and not lift_splat._cache
    for name in TENSOR_FIELDS:
        assert torch.equal(getattr(fresh, name), getattr(cached, name)), name


def test_camera_vector_layout():
    intrinsics = torch.tensor([[100.0, 0, 50], [0, 110.0, 40], [0, 0, 1]])[None, None]
    post = torch.tensor([[0.5, 0.1, -3.0], [-0.1, 0.5, 4.0], [0, 0, 1]])[None, None]
    ego_from_camera = torch.arange(16.0).reshape(4, 4)[None, None]
    vector = camera_vector(intrinsics, post, ego_from_camera)
    assert vector.shape == (1, 1, 22)
    expected = torch.tensor([100, 110, 50, 40, 0.5, 0.1, -3, -0.1, 0.5, 4, *range(12)], dtype=torch.float32)
    torch.testing.assert_close(vector[0, 0], expected)


def test_invert_3x3_is_the_inverse():
    generator = torch.Generator().manual_seed(0)
    matrices = torch.randn(50, 3, 3, generator=generator, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(invert_3x3(matrices), torch.linalg.inv(matrices))
    intrinsics = torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(invert_3x3(intrinsics) @ intrinsics, torch.eye(3, dtype=torch.float64))
