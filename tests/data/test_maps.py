"""MapRasterizer: BEVFusion's map classes from the devkit in any (augmented) frame, against the
simulator's ground truth at the grid's cell centres."""

import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from geomim_hf.data.geometry import make_transform, quaternion_to_matrix
from geomim_hf.data.maps import MAP_CLASSES, MapRasterizer
from geomim_hf.data.targets import bev_augmentation_matrix
from geomim_hf.modeling.grids import BevGrid
from geomim_hf.synthetic.world import location_grid
from tests.conftest import NUSCENES_WORLD

pytest.importorskip("nuscenes.map_expansion.map_api")

FINE = BevGrid(x_range=(-20.0, 20.0), y_range=(-16.0, 24.0), resolution=0.05)  # off-centre, 800 x 800
PADDED = BevGrid(x_range=(-20.05, 20.05), y_range=(-16.05, 24.05), resolution=0.05)  # one cell more around
AREAS = ("drivable_area", "ped_crossing", "walkway", "carpark_area")


def ego_poses(nusc, every=2):
    poses = []
    for sample in nusc.sample[::every]:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", lidar["ego_pose_token"])
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        poses.append((location, make_transform(quaternion_to_matrix(pose["rotation"]), pose["translation"])))
    return poses


def expected_masks(location, global_from_frame, grid):
    """The simulator's truth at each cell centre of ``grid``, mapped into the global frame."""
    x, y = (c.numpy().astype(np.float64) for c in grid.cell_centers())
    xx, yy = np.meshgrid(x, y)  # (Y, X)
    points = np.stack([xx, yy, np.zeros_like(xx), np.ones_like(xx)], -1) @ global_from_frame.T
    surfaces = location_grid(NUSCENES_WORLD["seed"], location).surfaces(points[..., 0], points[..., 1])
    return {"drivable_area": surfaces["road"], "ped_crossing": surfaces["crosswalk"],
            "walkway": surfaces["sidewalk"], "carpark_area": surfaces["parking"]}


@pytest.mark.parametrize("augmentation", [
    dict(rotation=0.0, scale=1.0, flip_x=False, flip_y=False),
    dict(rotation=0.35, scale=1.05, flip_x=False, flip_y=False),
    dict(rotation=-0.2, scale=0.95, flip_x=True, flip_y=False),
    dict(rotation=0.1, scale=1.0, flip_x=False, flip_y=True),
    dict(rotation=-0.39, scale=1.02, flip_x=True, flip_y=True),
])
def test_masks_match_the_ground_in_an_augmented_ego_frame(nuscenes_root, nusc, augmentation):
    rasterizer = MapRasterizer(str(nuscenes_root), grid=FINE, classes=AREAS)
    augmented_from_ego = bev_augmentation_matrix(**augmentation)
    found, missed = np.zeros(len(AREAS)), np.zeros(len(AREAS))
    for location, global_from_ego in ego_poses(nusc):
        global_from_augmented = global_from_ego @ np.linalg.inv(augmented_from_ego)
        masks = rasterizer(location, global_from_augmented)
        assert masks.shape == (len(AREAS), *FINE.size) and masks.dtype == bool
        expected = expected_masks(location, global_from_augmented, FINE)
        padded = expected_masks(location, global_from_augmented, PADDED)  # the truth just outside the grid too
        for k, name in enumerate(AREAS):
            found[k] += (masks[k] & expected[name]).sum()
            missed[k] += (~masks[k] & expected[name]).sum()
            # The devkit fills polygons boundary included: at most one cell more on each edge, never a shift.
            near = binary_dilation(padded[name], np.ones((3, 3), bool))[1:-1, 1:-1]
            assert not (masks[k] & ~near).any(), name
    assert (found > 0).all()
    assert (missed / found < 0.002).all(), dict(zip(AREAS, missed / found))


def test_default_grid_is_bevfusions_and_classes_merge_their_layers(nuscenes_root, nusc):
    location, global_from_ego = ego_poses(nusc)[0]
    masks = MapRasterizer(str(nuscenes_root))(location, global_from_ego)
    assert masks.shape == (len(MAP_CLASSES), 200, 200) and masks.dtype == bool
    layers = MapRasterizer(str(nuscenes_root), classes=("road_segment", "lane", "road_divider", "lane_divider"))
    road_segment, lane, road_divider, lane_divider = layers(location, global_from_ego)
    np.testing.assert_array_equal(masks[MAP_CLASSES.index("drivable_area")], road_segment | lane)
    np.testing.assert_array_equal(masks[MAP_CLASSES.index("divider")], road_divider | lane_divider)
    assert masks[MAP_CLASSES.index("drivable_area"), 100, 100]  # the ego stands on the road
    # At 0.5 m the drivable mask still agrees with the ground everywhere but along edges.
    expected = expected_masks(location, global_from_ego, MapRasterizer(str(nuscenes_root)).grid)["drivable_area"]
    assert (masks[0] == expected).mean() > 0.97


def test_a_tilted_ego_pose_is_read_by_its_yaw(nuscenes_root, nusc):
    location, global_from_ego = ego_poses(nusc)[0]
    tilted = global_from_ego.copy()
    pitch = math.radians(2.0)
    tilted[:3, :3] = global_from_ego[:3, :3] @ np.array([[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0],
                                                          [-math.sin(pitch), 0, math.cos(pitch)]])
    rasterizer = MapRasterizer(str(nuscenes_root))
    np.testing.assert_array_equal(rasterizer(location, tilted), rasterizer(location, global_from_ego))


def test_missing_expansion_and_bad_frames_are_refused(tmp_path, nuscenes_root, nusc):
    with pytest.raises(FileNotFoundError, match=r"maps/expansion/boston-seaport\.json.*map expansion v1\.3"):
        MapRasterizer(str(tmp_path))("boston-seaport", np.eye(4))
    location, global_from_ego = ego_poses(nusc)[0]
    sheared = global_from_ego.copy()
    sheared[0, 1] += 0.5
    with pytest.raises(ValueError, match="rotation times a uniform scale"):
        MapRasterizer(str(nuscenes_root))(location, sheared)
    with pytest.raises(ValueError, match="finite"):
        MapRasterizer(str(nuscenes_root))(location, np.full((4, 4), np.nan))
