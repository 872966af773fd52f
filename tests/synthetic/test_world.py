import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
from shapely.geometry import Polygon

from geomim_hf.data.classes import DETECTION_CLASS_ATTRIBUTES, NUSCENES_DETECTION_CLASSES
from geomim_hf.data.geometry import box_corners, wrap_angle
from geomim_hf.synthetic.nuscenes_writer import write_nuscenes
from geomim_hf.synthetic.sensors import nuscenes_rig
from geomim_hf.synthetic.waymo_writer import segment_name
from geomim_hf.synthetic.world import CLASS_SPECS, RoadGrid, lane_path, location_grid, simulate_scene
from geomim_hf.synthetic.cli import main

GRID = RoadGrid(block=100.0, origin=(5.0, 7.0), lanes=2, drive_left=False)


@pytest.mark.parametrize("turn", [-1, 0, 1])
@pytest.mark.parametrize("drive_left", [False, True])
def test_lane_path_turns_into_the_matching_lane(turn, drive_left):
    grid = RoadGrid(block=100.0, origin=(5.0, 7.0), lanes=2, drive_left=drive_left)
    lateral = 5.25 if drive_left else -5.25  # outer lane on the driving side
    start = np.array([5.0 + 100.0 + 20.0, 7.0 + lateral])  # on the east-west road y = 7, heading +x
    path = lane_path(grid, start, axis=0, sign=1, lateral=lateral, length=120.0, turns=[turn])
    assert grid.drivable(path[:, 0], path[:, 1]).all()
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert steps.max() < 0.3  # dense and continuous
    heading = np.arctan2(*(path[-1] - path[-2])[::-1])
    assert wrap_angle(heading - turn * np.pi / 2) == pytest.approx(0.0, abs=1e-6)
    # The end point sits in the lane with the same offset on the road it now follows.
    end = path[-1]
    u, v = grid.offsets(end[0], end[1])
    if turn == 0:
        assert v == pytest.approx(lateral, abs=1e-6)
    else:
        left_normal = np.array([-np.sin(heading), np.cos(heading)])
        across = u * left_normal[0]  # offset from the north-south road along the new left normal
        assert across == pytest.approx(lateral, abs=1e-6)


def test_ground_appearance_marks_roads_and_is_grey_off_markings():
    x = np.linspace(0, 300, 20000)
    y = np.full_like(x, 7.0 + 40.0)
    color, reflectivity = GRID.appearance(x, y)
    assert color.shape == (20000, 3) and reflectivity.shape == (20000,)
    on_road = GRID.drivable(x, y)
    assert reflectivity[on_road].min() >= 0.05 and reflectivity[~on_road].min() >= 0.1
    assert 0.0 <= color.min() and color.max() <= 1.0


@pytest.fixture(scope="module")
def scene():
    keyframes = np.arange(6) * 0.5
    return simulate_scene(3, 123, location_grid(123, "boston-seaport"), keyframes, 0.5,
                          visibility_rig=nuscenes_rig(np.random.default_rng(0)))


def test_scene_holds_every_class_with_valid_attributes_and_sizes(scene):
    classes = {a.class_name for a in scene.actors}
    assert classes == set(NUSCENES_DETECTION_CLASSES)
    for actor in scene.actors:
        valid = DETECTION_CLASS_ATTRIBUTES[actor.class_name]
        assert (actor.attribute in valid) if valid else actor.attribute == ""
        mean = np.asarray(CLASS_SPECS[actor.class_name].size_mean)
        assert np.all(actor.size > 0.4 * mean) and np.all(actor.size < 1.7 * mean)
    moving = [a for a in scene.actors if a.moving]
    assert moving and len(moving) < len(scene.actors)


def test_objects_never_overlap_each_other_or_the_ego(scene):
    """Checked with shapely polygons, independent of the simulator's separating-axis test."""
    for t in np.arange(scene.start_time, scene.keyframe_times[-1] + 1e-6, 0.1):
        boxes, _ = scene.actor_boxes(t)
        polygons = [Polygon(c[:4, :2]) for c in box_corners(boxes)]
        ego = scene.global_from_ego(t)
        ego_box = np.array([[*(ego[:2, 3] + 1.29 * ego[:2, 0]), 0.8, 4.08, 1.73, 1.6,
                             np.arctan2(ego[1, 0], ego[0, 0])]])
        ego_polygon = Polygon(box_corners(ego_box)[0, :4, :2])
        for i, polygon in enumerate(polygons):
            assert not polygon.intersects(ego_polygon), f"actor {i} hits the ego at t={t}"
            for j in range(i):
                assert not polygon.intersects(polygons[j]), f"actors {i} and {j} overlap at t={t}"


def test_ego_stays_on_the_road(scene):
    times = np.arange(scene.start_time, scene.keyframe_times[-1] + 1e-6, 0.1)
    xy = scene.ego.state(times)[0]
    assert scene.grid.drivable(xy[:, 0], xy[:, 1]).all()


def test_velocity_is_the_derivative_of_position(scene):
    t, dt = 1.0, 1e-3
    _, velocities = scene.actor_boxes(t)
    before, _ = scene.actor_boxes(t - dt)
    after, _ = scene.actor_boxes(t + dt)
    np.testing.assert_allclose((after[:, :2] - before[:, :2]) / (2 * dt), velocities, atol=2e-3)


def test_simulation_is_deterministic():
    keyframes = np.arange(3) * 0.5
    grid = location_grid(5, "singapore-onenorth")
    first, second = (simulate_scene(0, 5, grid, keyframes, 0.5) for _ in range(2))
    np.testing.assert_array_equal(first.actor_boxes(0.7)[0], second.actor_boxes(0.7)[0])
    other = simulate_scene(0, 6, grid, keyframes, 0.5)
    assert len(other.actors) != len(first.actors) or not np.allclose(other.actor_boxes(0.0)[0],
                                                                    first.actor_boxes(0.0)[0])


def test_written_world_is_byte_identical_for_a_seed(tmp_path):
    for name in ("a", "b"):
        write_nuscenes(str(tmp_path / name), num_scenes=1, samples_per_scene=2, seed=3, camera_sweeps=0,
                       lidar_sweeps=1, progress=False)
    comparison = filecmp.dircmp(tmp_path / "a", tmp_path / "b")

    def differences(c):
        return c.diff_files + c.left_only + c.right_only + [d for s in c.subdirs.values() for d in differences(s)]

    def deep_compare(c):  # dircmp compares by stat; compare bytes
        mismatched = [f for f in c.common_files if not filecmp.cmp(os.path.join(c.left, f), os.path.join(c.right, f),
                                                                  shallow=False)]
        return mismatched + [m for s in c.subdirs.values() for m in deep_compare(s)]

    assert differences(comparison) == [] and deep_compare(comparison) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "kitti", "--out", "X"], "invalid choice"),
        (["--format", "nuscenes", "--out", "X", "--scenes", "0"], "positive integer"),
        (["--format", "nuscenes", "--out", "X", "--scenes", "11"], "v1.0-trainval"),
        (["--format", "nuscenes", "--out", "X", "--lidar-sweeps", "-1"], ">= 0"),
        (["--format", "waymo", "--out", "X", "--scenes", "2", "--validation-segments", "3"], "more than the 2"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit):
        main(["--format", "nuscenes", "--out", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_cli_writes_a_world(tmp_path):
    out = tmp_path / "world"
    result = subprocess.run(
        [sys.executable, "-m", "geomim_hf.synthetic", "--format", "waymo", "--out", str(out), "--scenes", "2",
         "--samples-per-scene", "1", "--workers", "1", "--validation-segments", "1"],
        capture_output=True, text=True, check=True,
    )
    assert "wrote a synthetic waymo world" in result.stdout
    # The first segment is validation, the second training.
    for split, index in (("validation", 0), ("training", 1)):
        assert [p.name for p in (out / split / "lidar_box").iterdir()] == [f"{segment_name(0, index)}.parquet"]
