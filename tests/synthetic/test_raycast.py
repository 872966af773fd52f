import numpy as np
import pytest

from geomim_hf.data.geometry import camera_rotation, make_transform, points_in_boxes
from geomim_hf.synthetic.raycast import (
    BONNET_HEIGHT,
    BONNET_LENGTH,
    HAZE,
    HAZE_DISTANCE,
    KIND_VEHICLE,
    WorldState,
    cast_lidar,
    intersect_box,
    intersect_solid,
    render_camera,
)


class FlatGround:
    color = np.array([0.3, 0.3, 0.3], dtype=np.float32)

    def appearance(self, x, y):
        return np.tile(self.color, (len(x), 1)), np.full(len(x), 0.1)


def world(boxes, colors=None):
    boxes = np.asarray(boxes, dtype=np.float64)
    colors = np.full((len(boxes), 3), 0.8) if colors is None else np.asarray(colors)
    return WorldState(boxes=boxes, colors=colors, kinds=np.full(len(boxes), KIND_VEHICLE),
                      reflectivity=np.full(len(boxes), 0.5), ground=FlatGround(), sun=np.array([0.0, 0.0, 1.0]))


def test_intersect_box_matches_ray_marching():
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = np.array([*rng.uniform(-3, 3, 3), *rng.uniform(0.5, 3, 3), rng.uniform(-np.pi, np.pi)])
        origin = rng.uniform(-12, 12, 3)
        directions = rng.normal(size=(200, 3))
        directions[:50] = box[:3] - origin + rng.normal(scale=0.3, size=(50, 3))  # many that hit
        t, hits = intersect_box(origin, directions[:, 0], directions[:, 1], directions[:, 2], box)
        steps = np.linspace(0.0, 3.0, 6001)  # brute force: walk along every ray
        for ray in range(len(directions)):
            points = origin + steps[:, None] * directions[ray]
            inside = np.flatnonzero(points_in_boxes(points, box[None])[:, 0])
            if points_in_boxes(origin[None], box[None])[0, 0]:
                continue  # origin inside: not a surface hit
            if len(inside) == 0:
                assert not np.isfinite(t[ray]) or t[ray] > 3.0
            else:
                assert abs(t[ray] - steps[inside[0]]) <= 1.5 * (steps[1] - steps[0])
        hit = np.isfinite(t)
        axis, sign, hit_box = hits.surface(hit)
        # The hit point lies on the face named by (axis, sign).
        half = 0.5 * box[3:6]
        on_face = np.choose(axis, hit_box) * sign
        np.testing.assert_allclose(on_face, half[axis], atol=1e-4)


def inside_vehicle(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Brute force: is each point (P, 3) inside the car of annotation box ``box`` (a box of length >= 4.4 m,
    so its bonnet is ``BONNET_LENGTH`` long): inside the box, and not above the bonnet in front of the cabin."""
    cos, sin = np.cos(box[6]), np.sin(box[6])
    offset = points - box[:3]
    x, y = cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1]
    up = offset[:, 2] + 0.5 * box[5]  # metres above the box's bottom
    in_box = (np.abs(x) < 0.5 * box[3]) & (np.abs(y) < 0.5 * box[4]) & (up > 0) & (up < box[5])
    above_bonnet = (x > 0.5 * box[3] - BONNET_LENGTH) & (up > BONNET_HEIGHT * box[5])
    return in_box & ~above_bonnet


def test_a_vehicle_is_hit_where_ray_marching_enters_its_silhouette():
    """A vehicle is a box with a lower bonnet: the exact intersection agrees with walking along each ray, and the
    reported surface point lies on the silhouette (in the annotation box's frame) on the face it names."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        box = np.array([*rng.uniform(-2, 2, 2), 0.8, rng.uniform(4.4, 6), rng.uniform(1.7, 2.2),
                        rng.uniform(1.4, 2.0), rng.uniform(-np.pi, np.pi)])
        origin = np.array([*rng.uniform(-10, 10, 2), rng.uniform(0.3, 4.0)])
        directions = box[:3] - origin + rng.normal(scale=[1.5, 1.5, 0.6], size=(300, 3))
        t, hits = intersect_solid(origin, directions[:, 0], directions[:, 1], directions[:, 2], box, KIND_VEHICLE)
        steps = np.linspace(0.0, 2.0, 8001)
        for ray in range(len(directions)):
            inside = np.flatnonzero(inside_vehicle(origin + steps[:, None] * directions[ray], box))
            if len(inside) == 0:
                assert not np.isfinite(t[ray]) or t[ray] > 2.0
            else:
                assert abs(t[ray] - steps[inside[0]]) <= 1.5 * (steps[1] - steps[0])
        hit = np.isfinite(t)
        assert hit.sum() > 100
        axis, sign, hit_box = hits.surface(hit)
        # Just outside the named face the point is outside the vehicle, just inside it is inside.
        normal = np.zeros((hit.sum(), 3))
        normal[np.arange(hit.sum()), axis] = sign
        point_box = np.stack(hit_box, axis=1)
        cos, sin = np.cos(box[6]), np.sin(box[6])
        global_from_box = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        for side, expected in ((1e-3, False), (-1e-3, True)):
            points = (point_box + side * normal) @ global_from_box.T + box[:3]
            assert (inside_vehicle(points, box) == expected).mean() > 0.99
        np.testing.assert_allclose(point_box @ global_from_box.T + box[:3],
                                   origin + t[hit, None] * directions[hit], atol=1e-4)


def test_a_lidar_sees_a_cars_bonnet_lower_than_its_cabin():
    """From the side, a LiDAR's returns off a car reach the roof over the cabin and only the bonnet's height over
    the front metre: the heading's sign is in the shape, not only the paint."""
    sensor = make_transform(np.eye(3), np.array([0.0, 0.0, 1.8]))
    car = np.array([0.0, 8.0, 0.75, 4.5, 1.9, 1.5, 0.0])  # front towards +x, its near side at y = 7.05
    elevations = np.radians(np.linspace(-15.0, 5.0, 80))
    azimuths = np.radians(np.linspace(60.0, 120.0, 240))
    for yaw in (0.0, np.pi):
        scan = cast_lidar(world([[*car[:6], yaw]]), sensor, elevations, azimuths, max_range=70.0)
        points = scan.points()[0][scan.owner[scan.range > 0] == 0] + sensor[:3, 3]
        along = np.cos(yaw) * points[:, 0]  # metres towards the car's front
        bonnet = along > 2.25 - BONNET_LENGTH + 0.1
        cabin = along < 2.25 - BONNET_LENGTH - 0.1
        assert bonnet.sum() > 20 and cabin.sum() > 20
        assert points[bonnet, 2].max() == pytest.approx(BONNET_HEIGHT * 1.5, abs=0.03)
        assert points[cabin, 2].max() == pytest.approx(1.5, abs=0.03)


def test_render_known_box_in_front_of_camera():
    """A 2 m cube 9 m ahead of a camera 1.5 m up: its front face covers a pixel rectangle we can
    count by hand, and a cube behind it is fully hidden."""
    intrinsics = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    global_from_camera = make_transform(camera_rotation(0.0), np.array([0.0, 0.0, 1.5]))
    scene = world([[10.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0], [20.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0]])
    image, visible, unoccluded = render_camera(scene, global_from_camera, intrinsics, 100, 80)
    # Front face x = 9: u in [50 - 100/9, 50 + 100/9], v in [40 - 50/9, 40 + 150/9].
    columns = np.arange(100)[(np.arange(100) >= 50 - 100 / 9) & (np.arange(100) <= 50 + 100 / 9)]
    rows = np.arange(80)[(np.arange(80) >= 40 - 50 / 9) & (np.arange(80) <= 40 + 150 / 9)]
    assert visible[0] == unoccluded[0] == len(columns) * len(rows)
    assert visible[1] == 0 and unoccluded[1] > 0

    # Face centre pixel: base colour x lambert shade (normal -x, sun +z: 0.5), then haze.
    u, v = 50, int(round(40 + 100 * 0.5 / 9))
    distance = 9.0 * np.sqrt(1 + ((v - 40) / 100) ** 2)
    fade = 1 - np.exp(-distance / HAZE_DISTANCE)
    expected = (0.8 * 0.5) * (1 - fade) + fade * HAZE
    np.testing.assert_allclose(image[v, u] / 255.0, expected, atol=1 / 255)

    # Bottom row sees the ground 1.5 / 0.39 m ahead.
    depth = 1.5 / ((79 - 40) / 100)
    distance = depth * np.sqrt(1 + 0.39**2)
    fade = 1 - np.exp(-distance / HAZE_DISTANCE)
    np.testing.assert_allclose(image[79, 5] / 255.0, 0.3 * (1 - fade) + fade * HAZE, atol=1 / 255)


def test_a_car_shows_its_front_and_its_back_differently():
    """Headlamps and a bumper at the front, tail lamps at the back: a car and the same car turned round
    render differently, so a camera can tell the sign of its heading (a cuboid painted alike at both ends
    cannot be told from its turned twin)."""
    intrinsics = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    global_from_camera = make_transform(camera_rotation(0.0), np.array([0.0, 0.0, 1.0]))
    car = np.array([10.0, 0.0, 0.75, 4.5, 1.9, 1.5, 0.0])  # its near face at x = 7.75, 1.9 m wide, 1.5 m high
    back, visible, _ = render_camera(world([car]), global_from_camera, intrinsics, 100, 80)
    front, _, _ = render_camera(world([[*car[:6], np.pi]]), global_from_camera, intrinsics, 100, 80)
    # Inside the near face: u within 50 +- 100 * 0.95 / 7.75, v within 40 + 100 * (1 - z) / 7.75, z in [0, 1.5].
    face = (slice(35, 52), slice(39, 62))
    assert visible[0] >= 17 * 23
    lamps = front[face].astype(float).max((0, 1)) - back[face].astype(float).max((0, 1))
    assert (lamps > 40).all()  # headlamps are the brightest part of either end
    assert np.abs(front[face].astype(float) - back[face].astype(float)).mean() > 5


def test_lidar_ranges_hand_computed():
    sensor = make_transform(np.eye(3), np.array([0.0, 0.0, 1.0]))
    scene = world([[10.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0], [-10.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0]])
    elevations = np.array([0.0, -np.arctan(1 / 5)])
    azimuths = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    scan = cast_lidar(scene, sensor, elevations, azimuths, max_range=70.0)
    ahead, left, behind = 360, 540, 0  # azimuth 0, +pi/2 and -pi (wraps to the box at -x)
    assert scan.range[0, ahead] == pytest.approx(9.0, abs=1e-5) and scan.owner[0, ahead] == 0
    assert scan.range[0, behind] == pytest.approx(9.0, abs=1e-5) and scan.owner[0, behind] == 1
    assert scan.range[0, left] == 0 and scan.owner[0, left] == -1  # horizontal ray, nothing there
    assert scan.range[1, left] == pytest.approx(np.sqrt(26.0), abs=1e-5) and scan.owner[1, left] == -1
    # Head-on return from a box of reflectivity 0.5.
    assert scan.intensity[0, ahead] == pytest.approx(255 * 0.5, rel=1e-5)
    points, intensity, beam = scan.points()
    assert len(points) == np.count_nonzero(scan.range > 0)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), scan.range[scan.range > 0], rtol=1e-6)


def test_a_lidar_tells_a_cars_back_by_its_reflectors():
    """LiDAR intensity marks a car's ends as on a real one: the rear reflectors (tail lamps, plate) return
    strongly, the glass weakly, the rest by the body's reflectivity, so the heading's sign is observable."""
    sensor = make_transform(np.eye(3), np.array([0.0, 0.0, 1.0]))
    car = np.array([10.0, 0.0, 0.75, 4.5, 1.9, 1.5, 0.0])  # reflectivity 0.5; its near face at x = 7.75
    elevations = np.arctan(np.linspace(-1.0, 0.5, 60) / 7.75)  # over the near face's height
    azimuths = np.linspace(-0.15, 0.15, 80)  # over its width (+-0.95 m at 7.75 m: +-0.122 rad)
    scans = {yaw: cast_lidar(world([[*car[:6], yaw]]), sensor, elevations, azimuths, max_range=70.0)
             for yaw in (0.0, np.pi)}
    returns = {yaw: scan.intensity[scan.owner == 0] for yaw, scan in scans.items()}
    assert all(len(r) > 1000 for r in returns.values())
    assert returns[0.0].max() > 0.9 * 255 * 0.9  # seen from behind: reflectors, near head-on
    assert returns[np.pi].max() <= 255 * 0.5 + 1e-3  # seen from the front: nothing brighter than the body
    assert returns[np.pi].min() < 255 * 0.06 and returns[0.0].min() < 255 * 0.06  # windscreen, rear window
