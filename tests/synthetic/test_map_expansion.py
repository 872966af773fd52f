"""The synthetic world's map expansion, read by the devkit's own map API and held against the
simulator's ground truth (RoadGrid.surfaces)."""

import math
import os

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from geomim_hf.data.geometry import quaternion_to_matrix, yaw_of
from geomim_hf.synthetic.map_expansion import STOP_LINE_DEPTH
from geomim_hf.synthetic.nuscenes_writer import LOCATIONS
from geomim_hf.synthetic.world import location_grid
from tests.conftest import NUSCENES_WORLD

pytest.importorskip("nuscenes.map_expansion.map_api")
from nuscenes.map_expansion.map_api import NuScenesMap  # noqa: E402

TRUTH_LAYERS = ("drivable_area", "road_segment", "lane", "ped_crossing", "walkway", "carpark_area")
PATCH, PIXELS = 40.0, 2000  # 0.02 m pixels: the devkit rounds polygon corners to whole pixels


def keyframe_poses(nusc):
    """(location, x, y, yaw) of the ego at every keyframe."""
    poses = []
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", lidar["ego_pose_token"])
        location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        poses.append((location, *pose["translation"][:2], yaw_of(quaternion_to_matrix(pose["rotation"]))))
    return poses


def truth(grid, x, y):
    """The simulator's ground truth of each polygon layer at global points."""
    surfaces = grid.surfaces(x, y)
    lanes = surfaces["road"] & ~surfaces["intersection"] & ~surfaces["parking"]
    return {"drivable_area": surfaces["road"], "road_segment": surfaces["road"], "lane": lanes,
            "ped_crossing": surfaces["crosswalk"], "walkway": surfaces["sidewalk"],
            "carpark_area": surfaces["parking"]}


def devkit_patch_points(x, y, yaw):
    """Global (x, y) of the devkit's pixels of a PATCH x PATCH patch at a pose: pixel i at -PATCH/2 + i * res."""
    local = -PATCH / 2 + np.arange(PIXELS) * (PATCH / PIXELS)
    u, v = np.meshgrid(local, local)  # rows along v, columns along u
    cos, sin = math.cos(yaw), math.sin(yaw)
    return x + cos * u - sin * v, y + sin * u + cos * v


@pytest.fixture(scope="module")
def maps(nuscenes_root):
    return {location: NuScenesMap(dataroot=str(nuscenes_root), map_name=location)
            for location in LOCATIONS
            if os.path.isfile(os.path.join(nuscenes_root, "maps", "expansion", f"{location}.json"))}


def test_every_location_has_an_expansion_with_every_layer(nuscenes_root, nusc, maps):
    assert set(maps) == {log["location"] for log in nusc.log}
    for nusc_map in maps.values():
        assert nusc_map.version == "1.3"
        for layer in (*TRUTH_LAYERS, "stop_line", "road_block", "road_divider", "lane_divider"):
            assert len(getattr(nusc_map, layer)) > 0, layer


def test_devkit_masks_around_the_ego_match_the_simulated_ground(nusc, maps):
    """get_map_mask around keyframe poses (turned by the ego's yaw) against RoadGrid.surfaces."""
    intersection, union = dict.fromkeys(TRUTH_LAYERS, 0), dict.fromkeys(TRUTH_LAYERS, 0)
    for location, x, y, yaw in keyframe_poses(nusc)[::2]:
        grid = location_grid(NUSCENES_WORLD["seed"], location)
        expected = truth(grid, *devkit_patch_points(x, y, yaw))
        masks = maps[location].get_map_mask((x, y, PATCH, PATCH), math.degrees(yaw), list(expected), (PIXELS, PIXELS))
        for layer, mask in zip(expected, masks.astype(bool)):
            intersection[layer] += int((mask & expected[layer]).sum())
            union[layer] += int((mask | expected[layer]).sum())
    for layer in intersection:
        assert union[layer] > 0, f"no {layer} around any keyframe"
        assert intersection[layer] / union[layer] >= 0.98, (layer, intersection[layer] / union[layer])


def test_dividers_lie_on_the_painted_lines(nusc, maps):
    """Road dividers on the yellow centre lines, lane dividers on the white lines, both covering them."""
    for location, x, y, yaw in keyframe_poses(nusc)[::3]:
        grid = location_grid(NUSCENES_WORLD["seed"], location)
        gx, gy = devkit_patch_points(x, y, yaw)
        u, v = grid.offsets(gx, gy)
        surfaces = grid.surfaces(gx, gy)
        stretch = surfaces["road"] & ~surfaces["intersection"]
        across = np.where(np.abs(u) < grid.half_width, np.abs(u), np.abs(v))  # from the centreline of this road
        white = np.min([np.abs(across - k * grid.lane_width) for k in range(1, grid.lanes + 1)], axis=0)
        road_divider, lane_divider = maps[location].get_map_mask(
            (x, y, PATCH, PATCH), math.degrees(yaw), ["road_divider", "lane_divider"], (PIXELS, PIXELS)).astype(bool)
        pixel = PATCH / PIXELS
        for mask, distance in ((road_divider, across), (lane_divider, white)):
            assert mask.any()
            assert not (mask & surfaces["intersection"] & ~binary_dilation(stretch, iterations=3)).any()
            assert distance[mask & stretch].max() <= 2.5 * pixel  # the devkit draws lines 2 pixels wide
            on_line = stretch & (distance < 0.5 * pixel)
            assert mask[on_line].mean() >= 0.95


def test_stop_lines_stand_on_inbound_lanes_before_their_crossing(maps):
    for location, nusc_map in maps.items():
        grid = location_grid(NUSCENES_WORLD["seed"], location)
        lanes = [(lane, nusc_map.extract_polygon(lane["polygon_token"])) for lane in nusc_map.lane]
        for stop_line in nusc_map.stop_line:
            area = nusc_map.extract_polygon(stop_line["polygon_token"])
            crossing, = (nusc_map.extract_polygon(nusc_map.get("ped_crossing", token)["polygon_token"])
                         for token in stop_line["ped_crossing_tokens"])
            assert stop_line["stop_line_type"] == "PED_CROSSING"
            assert area.distance(crossing) < 1e-6 and area.intersection(crossing).area < 1e-6  # touching
            center = np.asarray(area.centroid.coords[0])
            surfaces = grid.surfaces(center[None, 0], center[None, 1])
            assert surfaces["road"][0] and not surfaces["parking"][0] and not surfaces["intersection"][0]
            x0, y0, x1, y1 = area.bounds
            assert min(x1 - x0, y1 - y0) == pytest.approx(STOP_LINE_DEPTH) or area.bounds[0] == 0.0
            # Inbound: every lane under the stop line drives towards the crossing.
            under = [lane for lane, polygon in lanes if polygon.intersection(area).area > 1e-6]
            assert under
            towards = np.asarray(crossing.centroid.coords[0]) - center
            for lane in under:
                yaw = nusc_map.arcline_path_3[lane["token"]][0]["start_pose"][2]
                assert np.array([math.cos(yaw), math.sin(yaw)]) @ towards > 0


def test_the_ego_stands_on_drivable_area_at_every_keyframe(nusc, maps):
    for location, x, y, _ in keyframe_poses(nusc):
        assert maps[location].record_on_point(x, y, "drivable_area"), (location, x, y)
        assert maps[location].record_on_point(x, y, "lane") or maps[location].layers_on_point(
            x, y, ["road_segment"])["road_segment"]
