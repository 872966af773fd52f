"""The synthetic driving world: roads, trajectories, objects and scenes, deterministic for a seed.

The world is a city grid of roads (lanes, parking strips, sidewalks, markings) with buildings in the
blocks. An ego vehicle follows its lane and turns at intersections; around it stand and move objects
of all ten nuScenes detection classes with realistic sizes, some parked, some driving, walking or
turning. The sensors that see it are in :mod:`geomim_hf.synthetic.sensors`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..data.classes import DETECTION_CLASS_ATTRIBUTES, NUSCENES_DETECTION_CLASSES
from ..data.geometry import box_corners, make_transform, rotation_z, wrap_angle
from .raycast import (
    KIND_BARRIER,
    KIND_BUILDING,
    KIND_CONE,
    KIND_CYCLE,
    KIND_PERSON,
    KIND_VEHICLE,
    WorldState,
    cast_lidar,
)

# --------------------------------------------------------------------------------------------------
# Object classes


@dataclass(frozen=True)
class ClassSpec:
    """How the simulator makes one detection class.

    size_mean, size_std: (length, width, height) in metres, length along the heading (sizes follow
    nuScenes' per-class statistics); hue: degrees, 36 apart so every class has its own colour;
    mean_count: objects per scene besides the one every scene is guaranteed to hold.
    """

    name: str
    size_mean: tuple[float, float, float]
    size_std: tuple[float, float, float]
    hue: float
    kind: int
    reflectivity: float
    mean_count: float


CLASS_SPECS = {
    spec.name: spec
    for spec in (
        ClassSpec("car", (4.63, 1.96, 1.74), (0.40, 0.15, 0.18), 0.0, KIND_VEHICLE, 0.55, 14.0),
        ClassSpec("truck", (6.90, 2.50, 2.85), (1.40, 0.22, 0.40), 36.0, KIND_VEHICLE, 0.50, 2.5),
        ClassSpec("construction_vehicle", (6.40, 2.85, 3.20), (1.20, 0.30, 0.45), 144.0, KIND_VEHICLE, 0.45, 1.0),
        ClassSpec("bus", (10.90, 2.95, 3.45), (1.00, 0.10, 0.20), 72.0, KIND_VEHICLE, 0.50, 1.5),
        ClassSpec("trailer", (11.00, 2.85, 3.70), (2.00, 0.15, 0.35), 108.0, KIND_VEHICLE, 0.45, 1.0),
        ClassSpec("barrier", (0.50, 2.50, 0.98), (0.08, 0.25, 0.08), 324.0, KIND_BARRIER, 0.65, 2.0),
        ClassSpec("motorcycle", (2.10, 0.78, 1.45), (0.18, 0.08, 0.12), 216.0, KIND_CYCLE, 0.40, 2.0),
        ClassSpec("bicycle", (1.70, 0.60, 1.30), (0.12, 0.06, 0.12), 252.0, KIND_CYCLE, 0.35, 3.0),
        ClassSpec("pedestrian", (0.73, 0.67, 1.75), (0.10, 0.08, 0.10), 180.0, KIND_PERSON, 0.30, 12.0),
        ClassSpec("traffic_cone", (0.41, 0.41, 1.02), (0.05, 0.05, 0.10), 288.0, KIND_CONE, 0.70, 2.0),
    )
}
assert tuple(CLASS_SPECS) == NUSCENES_DETECTION_CLASSES

EGO_LENGTH, EGO_WIDTH, EGO_REAR_OVERHANG = 4.08, 1.73, 0.75  # a Renault Zoe, origin at the rear axle


def hsv_to_rgb(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    hue = (hue_degrees % 360.0) / 60.0
    chroma = value * saturation
    x = chroma * (1 - abs(hue % 2 - 1))
    sector = int(hue) % 6
    rgb = [(chroma, x, 0), (x, chroma, 0), (0, chroma, x), (0, x, chroma), (x, 0, chroma), (chroma, 0, x)][sector]
    return np.asarray(rgb) + (value - chroma)


# --------------------------------------------------------------------------------------------------
# Roads


@dataclass(frozen=True)
class RoadGrid:
    """A Manhattan grid of two-way roads; centrelines at ``origin + k * block`` in x and in y.

    Cross-section from a centreline outwards: ``lanes`` lanes per direction, a parking strip, a
    sidewalk; the rest of each block is plaza or buildings.
    """

    block: float
    origin: tuple[float, float]
    lanes: int
    drive_left: bool
    lane_width: float = 3.5
    parking: float = 2.5
    sidewalk: float = 4.0

    @property
    def half_width(self) -> float:
        """Centreline to the curb."""
        return self.lanes * self.lane_width + self.parking

    def offsets(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to the nearest north-south (x) and east-west (y) road centrelines."""
        x, y = np.asarray(x), np.asarray(y)
        dtype = x.dtype.type if x.dtype.kind == "f" else np.float64
        block = dtype(self.block)
        u = _fraction(x - dtype(self.origin[0] - 0.5 * self.block), block) * block - dtype(0.5 * self.block)
        v = _fraction(y - dtype(self.origin[1] - 0.5 * self.block), block) * block - dtype(0.5 * self.block)
        return u, v

    def drivable(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = self.offsets(x, y)
        return (np.abs(u) < self.half_width) | (np.abs(v) < self.half_width)

    def _crosswalk(self, across_abs: np.ndarray, crossing_abs: np.ndarray, this_road: np.ndarray) -> np.ndarray:
        """The crosswalk of one road before each intersection: 0.5 to 3.5 m out of the crossing road,
        over the driving lanes (not the parking strips). ``across_abs``: distance to this road's
        centreline; ``crossing_abs``: to the crossing road's."""
        half = self.half_width
        return this_road & (crossing_abs > half + 0.5) & (crossing_abs < half + 3.5) & (
            across_abs < self.lanes * self.lane_width)

    def surfaces(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """What the ground is at global (x, y), each a boolean mask (the map expansion is written from
        the same geometry): ``road`` (lanes, parking strips, intersections), ``intersection``,
        ``parking`` (the strips between the outer lane and the curb, outside intersections),
        ``crosswalk`` and ``sidewalk``."""
        u, v = self.offsets(x, y)
        half, lanes_edge = self.half_width, self.lanes * self.lane_width
        abs_u, abs_v = np.abs(u), np.abs(v)
        on_ns, on_ew = abs_u < half, abs_v < half
        road = on_ns | on_ew
        ns_only, ew_only = on_ns & ~on_ew, on_ew & ~on_ns
        return {
            "road": road,
            "intersection": on_ns & on_ew,
            "parking": (ns_only & (abs_u >= lanes_edge)) | (ew_only & (abs_v >= lanes_edge)),
            "crosswalk": self._crosswalk(abs_u, abs_v, ns_only) | self._crosswalk(abs_v, abs_u, ew_only),
            "sidewalk": ~road & (np.minimum(abs_u, abs_v) < half + self.sidewalk),
        }

    def appearance(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground colour (P, 3) and LiDAR reflectivity (P,) at global (x, y): asphalt with lane
        markings and crosswalks, tiled sidewalks, plazas. All grey but the yellow centre lines."""
        f32 = np.float32
        x, y = np.asarray(x, f32), np.asarray(y, f32)
        u, v = self.offsets(x, y)
        half, lanes_edge = self.half_width, self.lanes * self.lane_width
        abs_u, abs_v = np.abs(u), np.abs(v)
        on_ns, on_ew = abs_u < half, abs_v < half
        road = on_ns | on_ew
        sidewalk = ~road & (np.minimum(abs_u, abs_v) < half + self.sidewalk)
        noise = _hash_noise(np.floor(x * f32(2.5)), np.floor(y * f32(2.5)))

        grey = np.where(road, f32(0.30), f32(0.53)) + f32(0.06) * noise
        seams = sidewalk & ((_fraction(x, f32(1.5)) < 0.04) | (_fraction(y, f32(1.5)) < 0.04))
        grey = np.where(seams, f32(0.44), np.where(sidewalk, grey + f32(0.07), grey))
        reflectivity = np.where(road, 0.06, np.where(sidewalk, 0.18, 0.14))

        white = np.zeros(x.shape, bool)
        yellow = np.zeros(x.shape, bool)
        for across, a, along, this_road, crossing in (
            (u, abs_u, y, on_ns & ~on_ew, abs_v),
            (v, abs_v, x, on_ew & ~on_ns, abs_u),
        ):
            yellow |= this_road & (a > 0.1) & (a < 0.25)
            for k in range(1, self.lanes):
                white |= this_road & (np.abs(a - k * self.lane_width) < 0.08) & (_fraction(along, f32(9.0)) < 1 / 3)
            white |= this_road & (np.abs(a - lanes_edge) < 0.1)
            white |= self._crosswalk(a, crossing, this_road) & (_fraction(across, f32(1.0)) < 0.5)
        grey[white] = 0.86
        color = np.repeat(grey[:, None], 3, axis=1)
        color[~road & ~sidewalk] *= np.array([1.04, 1.0, 0.9], dtype=f32)  # warmer plazas
        color[yellow] = np.array([0.86, 0.72, 0.22], dtype=f32)
        reflectivity = np.where(white | yellow, 0.55, reflectivity)
        return color, reflectivity


def _fraction(x: np.ndarray, period) -> np.ndarray:
    """Position within the period, in [0, 1); faster than NumPy's float modulo."""
    scaled = x * (1 / period)
    return scaled - np.floor(scaled)


def _hash_noise(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Deterministic white noise in [0, 1) per integer cell."""
    value = np.sin(ix * np.float32(12.9898) + iy * np.float32(78.233)) * np.float32(43758.547)
    return value - np.floor(value)


# --------------------------------------------------------------------------------------------------
# Trajectories


@dataclass
class Trajectory:
    """Motion along a polyline at constant speed. ``xy`` (S, 2), ``yaw`` (S,) unwrapped and ``s``
    (S,) cumulative arc length; the object is at arc length ``speed * (t - t0)`` at time ``t`` and
    continues straight past either end."""

    xy: np.ndarray
    yaw: np.ndarray
    s: np.ndarray
    speed: float
    t0: float

    @classmethod
    def stationary(cls, x: float, y: float, yaw: float, t0: float) -> "Trajectory":
        return cls(np.array([[x, y]]), np.array([yaw]), np.array([0.0]), 0.0, t0)

    @classmethod
    def from_points(cls, xy: np.ndarray, speed: float, t0: float) -> "Trajectory":
        """Headings are the polyline's tangents (the mean direction of the segments at a vertex)."""
        xy = xy[np.concatenate([[True], np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-9])]  # no repeats
        steps = np.diff(xy, axis=0)
        segment_yaw = np.unwrap(np.arctan2(steps[:, 1], steps[:, 0]))
        yaw = np.concatenate([segment_yaw[:1], 0.5 * (segment_yaw[1:] + segment_yaw[:-1]), segment_yaw[-1:]])
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(steps, axis=1))])
        return cls(xy, yaw, s, speed, t0)

    def state(self, t: np.ndarray | float):
        """Position (..., 2), yaw (...) and velocity (..., 2) at times ``t`` (seconds). The velocity
        is the exact derivative of the position (along the current segment); the yaw follows the
        smooth tangent."""
        t = np.asarray(t, np.float64)
        s = self.speed * (t - self.t0)
        yaw = np.interp(s, self.s, self.yaw)
        xy = np.stack([np.interp(s, self.s, self.xy[:, 0]), np.interp(s, self.s, self.xy[:, 1])], -1)
        before, after = s < self.s[0], s > self.s[-1]
        for outside, anchor, heading in ((before, 0, self.yaw[0]), (after, -1, self.yaw[-1])):
            if np.any(outside):
                extra = (s - self.s[anchor])[..., None] * np.array([np.cos(heading), np.sin(heading)])
                xy = np.where(outside[..., None], self.xy[anchor] + extra, xy)
        if len(self.s) > 1:
            segment = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
            direction = self.xy[segment + 1] - self.xy[segment]
            direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
            ends = np.stack([np.cos(self.yaw[[0, -1]]), np.sin(self.yaw[[0, -1]])], -1)
            direction = np.where(before[..., None], ends[0], np.where(after[..., None], ends[1], direction))
        else:
            direction = np.stack([np.cos(yaw), np.sin(yaw)], -1)
        return xy, wrap_angle(yaw), self.speed * direction


def _axis_heading(axis: int, sign: int) -> np.ndarray:
    heading = np.zeros(2)
    heading[axis] = sign
    return heading


def lane_path(
    grid: RoadGrid, start: np.ndarray, axis: int, sign: int, lateral: float, length: float, turns: list[int]
) -> np.ndarray:
    """Points every ~0.25 m along a lane, starting at ``start`` heading along ``sign * e_axis``.

    ``lateral`` is the lane centre's signed offset from the road centreline along the left normal.
    At each intersection the next entry of ``turns`` says +1 (left), -1 (right) or 0 (straight);
    a turn is a circular arc that ends in the lane with the same offset on the crossing road.
    """
    points = [np.asarray(start, np.float64)]
    position, heading, total = points[0].copy(), _axis_heading(axis, sign), 0.0
    half = grid.half_width
    turns = list(turns)
    while total < length:
        left = np.array([-heading[1], heading[0]])
        axis = int(np.argmax(np.abs(heading)))
        sign = int(np.sign(heading[axis]))
        along = sign * position[axis]
        # The next intersection far enough ahead that its turn region has not started yet.
        threshold = along + half + 2.0
        if sign > 0:
            node_along = grid.origin[axis] + np.ceil((threshold - grid.origin[axis]) / grid.block - 1e-9) * grid.block
        else:
            node_along = -(grid.origin[axis] + np.floor((-threshold - grid.origin[axis]) / grid.block + 1e-9) * grid.block)
        turn_start = node_along - half - 2.0
        segment_end = position + (turn_start - along) * heading
        points.append(_segment(position, segment_end))
        total += turn_start - along
        position = segment_end
        turn = turns.pop(0) if turns else 0
        if turn == 0:
            end = position + 2 * (half + 2.0) * heading
            points.append(_segment(position, end))
            total += 2 * (half + 2.0)
            position = end
            continue
        radius = half + 2.0 - turn * lateral
        center = position + turn * radius * left
        start_angle = np.arctan2(*(position - center)[::-1])
        angles = start_angle + turn * np.linspace(0.0, 0.5 * np.pi, max(int(radius * np.pi / 2 / 0.25), 4))
        points.append(center + radius * np.stack([np.cos(angles), np.sin(angles)], -1)[1:])
        total += radius * np.pi / 2
        position = points[-1][-1].copy()
        heading = np.round(turn * left)
    return np.concatenate([p.reshape(-1, 2) for p in points])


def _segment(start: np.ndarray, end: np.ndarray, step: float = 0.25) -> np.ndarray:
    count = max(int(np.ceil(np.linalg.norm(end - start) / step)), 1)
    return start + np.linspace(0.0, 1.0, count + 1)[1:, None] * (end - start)


def arc_path(start: np.ndarray, yaw: float, curvature: float, length: float) -> np.ndarray:
    """Points along a circle of signed ``curvature`` (1/m), or a line where it is zero."""
    s = np.linspace(0.0, length, max(int(length / 0.1), 2))
    if abs(curvature) < 1e-9:
        return start + s[:, None] * np.array([np.cos(yaw), np.sin(yaw)])
    heading = yaw + curvature * s
    return start + np.stack(
        [(np.sin(heading) - np.sin(yaw)) / curvature, (np.cos(yaw) - np.cos(heading)) / curvature], -1
    )


# --------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Actor:
    """One annotated object. ``size`` is (length, width, height); the box centre sits at height/2."""

    instance: int
    class_name: str
    size: np.ndarray
    trajectory: Trajectory
    attribute: str
    color: np.ndarray

    @property
    def spec(self) -> ClassSpec:
        return CLASS_SPECS[self.class_name]

    @property
    def moving(self) -> bool:
        return self.trajectory.speed > 0


@dataclass
class Scene:
    """One simulated scene. Times are seconds relative to the first keyframe."""

    index: int
    seed: int
    grid: RoadGrid
    ego: Trajectory
    actors: list[Actor]
    buildings: np.ndarray  # (N, 7) global boxes
    building_colors: np.ndarray  # (N, 3)
    sun: np.ndarray  # (3,) unit vector towards the sun
    keyframe_times: np.ndarray  # (K,)
    start_time: float  # earliest sensor time (sweeps before the first keyframe)
    attempts: int = 1

    def global_from_ego(self, t: float) -> np.ndarray:
        """Ego frame: origin at the rear axle on the ground, x forward, y left, z up."""
        xy, yaw, _ = self.ego.state(t)
        return make_transform(rotation_z(yaw), np.array([xy[0], xy[1], 0.0]))

    def actor_boxes(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Global boxes (K, 7) and velocities (K, 2) of every actor at time ``t``."""
        boxes, velocities = np.zeros((len(self.actors), 7)), np.zeros((len(self.actors), 2))
        for k, actor in enumerate(self.actors):
            xy, yaw, velocity = actor.trajectory.state(t)
            boxes[k] = [xy[0], xy[1], 0.5 * actor.size[2], *actor.size, yaw]
            velocities[k] = velocity
        return boxes, velocities

    def world_at(self, t: float) -> WorldState:
        """Actors first (box index = actor index), then buildings."""
        boxes, _ = self.actor_boxes(t)
        return WorldState(
            boxes=np.concatenate([boxes, self.buildings]),
            colors=np.concatenate([np.stack([a.color for a in self.actors]), self.building_colors]),
            kinds=np.array([a.spec.kind for a in self.actors] + [KIND_BUILDING] * len(self.buildings)),
            reflectivity=np.array([a.spec.reflectivity for a in self.actors] + [0.25] * len(self.buildings)),
            ground=self.grid,
            sun=self.sun,
        )


def _rectangles(boxes: np.ndarray) -> np.ndarray:
    """BEV corners (..., 4, 2) of (..., 7) boxes."""
    shape = boxes.shape[:-1]
    return box_corners(boxes.reshape(-1, 7))[:, :4, :2].reshape(*shape, 4, 2)


def _overlaps(candidate: np.ndarray, others: np.ndarray) -> bool:
    """Whether BEV rectangles ``candidate`` (T, 4, 2) and ``others`` (N, T, 4, 2) intersect at any
    common time (separating-axis test)."""
    if len(others) == 0:
        return False
    a = np.broadcast_to(candidate, others.shape)
    edges = np.concatenate([a[..., [1, 2], :] - a[..., [0, 1], :], others[..., [1, 2], :] - others[..., [0, 1], :]], -2)
    axes = np.stack([-edges[..., 1], edges[..., 0]], -1)  # (N, T, 4, 2) edge normals
    project_a = np.einsum("ntkd,ntcd->ntkc", axes, a)
    project_b = np.einsum("ntkd,ntcd->ntkc", axes, others)
    separated = (project_a.max(-1) < project_b.min(-1)) | (project_b.max(-1) < project_a.min(-1))
    return bool((~separated.any(-1)).any())


class _Placer:
    """Places actors without overlaps with each other, buildings or the ego, at any sensor time."""

    def __init__(self, scene_times: np.ndarray, ego: Trajectory, buildings: np.ndarray, margin: float = 0.4):
        self.times = scene_times
        self.margin = margin
        xy, yaw, _ = ego.state(self.times)
        center = xy + (0.5 * EGO_LENGTH - EGO_REAR_OVERHANG) * np.stack([np.cos(yaw), np.sin(yaw)], -1)
        ego_boxes = np.concatenate(
            [center, np.full((len(yaw), 1), 1.0), np.tile([EGO_LENGTH + 2.0, EGO_WIDTH + 1.5, 2.0], (len(yaw), 1)),
             yaw[:, None]], 1)
        static = np.repeat(buildings[:, None], len(self.times), axis=1)
        self.occupied = [_rectangles(ego_boxes)[None]] + ([_rectangles(static)] if len(buildings) else [])

    def try_place(self, trajectory: Trajectory, size: np.ndarray) -> bool:
        xy, yaw, _ = trajectory.state(self.times)
        grown = size[:2] + self.margin
        boxes = np.concatenate([xy, np.zeros((len(yaw), 1)), np.tile([*grown, 1.0], (len(yaw), 1)), yaw[:, None]], 1)
        rectangles = _rectangles(boxes)
        for others in self.occupied:
            # Only pairs that come within 30 m of each other at some time need the exact test.
            near = np.linalg.norm(others[:, :, 0] - rectangles[None, :, 0], axis=-1).min(1) < 30.0
            if _overlaps(rectangles, others[near]):
                return False
        self.occupied.append(rectangles[None])
        return True


def _sample_size(spec: ClassSpec, rng: np.random.Generator) -> np.ndarray:
    mean, std = np.asarray(spec.size_mean), np.asarray(spec.size_std)
    return np.clip(mean + std * rng.standard_normal(3), 0.5 * mean, 1.6 * mean)


class _SceneBuilder:
    """Samples actor placements around the ego's path."""

    def __init__(self, grid: RoadGrid, ego: Trajectory, times: np.ndarray, keyframe_times: np.ndarray, rng):
        self.grid, self.ego, self.times, self.rng = grid, ego, times, rng
        self.ego_keyframe_xy = ego.state(keyframe_times)[0]
        self.lane_speeds: dict = {}

    def near_point(self, radius: float) -> np.ndarray:
        anchor = self.ego_keyframe_xy[self.rng.integers(len(self.ego_keyframe_xy))]
        angle, distance = self.rng.uniform(0, 2 * np.pi), radius * np.sqrt(self.rng.uniform(0.02, 1.0))
        return anchor + distance * np.array([np.cos(angle), np.sin(angle)])

    def on_road(self, point: np.ndarray):
        """Snap to the nearest road segment away from intersections: (axis, centreline point, along)."""
        u, v = self.grid.offsets(point[0], point[1])
        axis = 1 if abs(u) < abs(v) else 0  # a road along y has small |u|
        across = float(u if axis == 1 else v)
        crossing = float(v if axis == 1 else u)
        if abs(crossing) < self.grid.half_width + 4.0:
            return None
        center = point.copy()
        center[1 - axis] -= across
        return axis, center

    def lane_offset(self, lane: int) -> float:
        """Lateral offset (along the heading's left normal) of a lane's centre."""
        offset = (lane + 0.5) * self.grid.lane_width
        return offset if self.grid.drive_left else -offset

    def curb_offset(self, inset: float) -> float:
        """Lateral offset ``inset`` metres inside the curb on the driving side."""
        offset = self.grid.half_width - inset
        return offset if self.grid.drive_left else -offset

    def place(self, class_name: str, radius: float):
        """One candidate (trajectory, size, attribute) for ``class_name`` or None."""
        rng, grid = self.rng, self.grid
        spec = CLASS_SPECS[class_name]
        size = _sample_size(spec, rng)
        road = self.on_road(self.near_point(radius))
        if road is None:
            return None
        axis, center = road
        sign = int(rng.choice([-1, 1]))
        heading = _axis_heading(axis, sign)
        left = np.array([-heading[1], heading[0]])
        yaw = float(np.arctan2(heading[1], heading[0]))
        t0 = self.times[0]
        vehicle = spec.kind == KIND_VEHICLE
        roll = rng.uniform()

        if vehicle:
            if class_name == "construction_vehicle":
                mode = "parked" if roll < 0.6 else "stopped"
            elif class_name == "bus":
                mode = "moving" if roll < 0.6 else "stopped"
            else:
                parked_share = {"car": 0.45, "truck": 0.5, "trailer": 0.7}[class_name]
                mode = "parked" if roll < parked_share else ("moving" if roll < 0.92 else "stopped")
            if mode == "parked" or (mode == "stopped" and class_name in ("bus", "construction_vehicle")):
                lateral = self.curb_offset(0.5 * size[1] + 0.25)
                return Trajectory.stationary(*(center + lateral * left), yaw, t0), size, f"vehicle.{mode}"
            lane = int(rng.integers(grid.lanes))
            lateral = self.lane_offset(lane)
            start = center + lateral * left
            if mode == "stopped":
                return Trajectory.stationary(*start, yaw, t0), size, "vehicle.stopped"
            key = (axis, round(float(center[1 - axis]), 1), sign, lane)
            speed = self.lane_speeds.setdefault(key, float(rng.uniform(4.0, 11.0)))
            length = speed * (self.times[-1] - t0) + 1.0
            turns = [int(rng.choice([-1, 1]))] if (class_name == "car" and rng.uniform() < 0.2) else [0]
            path = lane_path(grid, start, axis, sign, lateral, length, turns)
            return Trajectory.from_points(path, speed, t0), size, "vehicle.moving"

        if spec.kind == KIND_CYCLE:
            if roll < 0.5:  # ridden along the outer lane's edge
                size[2] += 0.4  # the rider is inside the box
                lateral = self.lane_offset(grid.lanes - 1)
                if class_name == "bicycle":
                    lateral += 0.9 * (1.0 if lateral > 0 else -1.0)
                speed = float(rng.uniform(2.5, 6.0) if class_name == "bicycle" else rng.uniform(5.0, 11.0))
                length = speed * (self.times[-1] - t0) + 1.0
                path = lane_path(grid, center + lateral * left, axis, sign, lateral, length, [0])
                return Trajectory.from_points(path, speed, t0), size, "cycle.with_rider"
            lateral = self.curb_offset(-0.6 - 0.5 * size[0])  # on the sidewalk, across it
            return Trajectory.stationary(*(center + lateral * left), yaw + 0.5 * np.pi, t0), size, "cycle.without_rider"

        if class_name == "pedestrian":
            side = rng.choice([-1.0, 1.0])
            if roll < 0.1:  # crossing the road on a crosswalk
                along_node = center.copy()
                distance = grid.half_width + 2.0
                node = np.round((center[axis] - grid.origin[axis]) / grid.block) * grid.block + grid.origin[axis]
                along_node[axis] = node - sign * distance
                start = along_node + side * rng.uniform(0.0, grid.half_width) * left
                speed = float(rng.uniform(1.0, 1.6))
                path = arc_path(start, yaw + (0.5 if side < 0 else -0.5) * np.pi, 0.0, speed * (self.times[-1] - t0) + 1.0)
                return Trajectory.from_points(path, speed, t0), size, "pedestrian.moving"
            lateral = side * (grid.half_width + rng.uniform(0.6, grid.sidewalk - 0.6))
            start = center + lateral * left
            if roll < 0.65:
                speed = float(rng.uniform(0.9, 1.7))
                yaw_rate = float(rng.uniform(0.05, 0.2) * rng.choice([-1, 1])) if rng.uniform() < 0.3 else 0.0
                path = arc_path(start, yaw, yaw_rate / speed, speed * (self.times[-1] - t0) + 1.0)
                return Trajectory.from_points(path, speed, t0), size, "pedestrian.moving"
            if roll < 0.9:
                return Trajectory.stationary(*start, rng.uniform(-np.pi, np.pi), t0), size, "pedestrian.standing"
            size[2] = rng.uniform(1.0, 1.25)
            return Trajectory.stationary(*start, rng.uniform(-np.pi, np.pi), t0), size, "pedestrian.sitting_lying_down"

        # Traffic cones and barriers stand in the parking strip or on the lane edge.
        lateral = self.curb_offset(rng.uniform(0.3, grid.parking + 0.8))
        if class_name == "barrier":
            yaw += 0.5 * np.pi  # long side (width) along the road
        return Trajectory.stationary(*(center + lateral * left), yaw, t0), size, ""


def _buildings(grid: RoadGrid, region_min: np.ndarray, region_max: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Boxes filling parts of every block that touches the region."""
    boxes, colors = [], []
    edge = grid.half_width + grid.sidewalk + 1.5
    lo = np.floor((region_min - np.asarray(grid.origin)) / grid.block).astype(int)
    hi = np.floor((region_max - np.asarray(grid.origin)) / grid.block).astype(int)
    for i in range(lo[0], hi[0] + 1):
        for j in range(lo[1], hi[1] + 1):
            x0, y0 = grid.origin[0] + i * grid.block + edge, grid.origin[1] + j * grid.block + edge
            interior = grid.block - 2 * edge
            if interior <= 4 or rng.uniform() < 0.15:  # an open plaza
                continue
            cells = 2
            cell = interior / cells
            for a in range(cells):
                for b in range(cells):
                    if rng.uniform() < 0.25:
                        continue
                    length, width = cell * rng.uniform(0.55, 0.95), cell * rng.uniform(0.55, 0.95)
                    # Push each building towards the street it faces.
                    cx = x0 + (a * cell + (length / 2 if a == 0 else cell - length / 2))
                    cy = y0 + (b * cell + (width / 2 if b == 0 else cell - width / 2))
                    height = rng.uniform(6.0, 30.0)
                    boxes.append([cx, cy, height / 2, length, width, height, 0.0])
                    colors.append(hsv_to_rgb(rng.uniform(20, 50), rng.uniform(0.03, 0.15), rng.uniform(0.45, 0.8)))
    if not boxes:
        return np.zeros((0, 7)), np.zeros((0, 3))
    return np.asarray(boxes), np.asarray(colors)


def location_grid(seed: int, location: str) -> RoadGrid:
    """The road grid of a location: fixed by the seed, shared by every scene there."""
    rng = np.random.default_rng([seed, int(hashlib.md5(location.encode()).hexdigest()[:8], 16)])
    return RoadGrid(
        block=float(rng.choice([90.0, 110.0, 130.0])),
        origin=(float(rng.uniform(0, 30)), float(rng.uniform(0, 30))),
        lanes=int(rng.choice([1, 2], p=[0.3, 0.7])),
        drive_left=location.startswith("singapore"),
    )


def simulate_scene(
    index: int,
    seed: int,
    grid: RoadGrid,
    keyframe_times: np.ndarray,
    pre_roll: float,
    visibility_rig=None,
    required_classes: tuple[str, ...] = NUSCENES_DETECTION_CLASSES,
    max_attempts: int = 20,
) -> Scene:
    """Simulate one scene; deterministic for ``(seed, index)``.

    Every required class gets one instance within 25 m of the ego at some keyframe. If
    ``visibility_rig`` is given, the scene is re-drawn until each required class is hit by that
    rig's LiDAR at some keyframe, so every split that holds the scene can be evaluated per class.
    """
    for attempt in range(max_attempts):
        rng = np.random.default_rng([seed, index, attempt])
        scene = _draw_scene(index, seed, grid, keyframe_times, pre_roll, rng, required_classes)
        scene.attempts = attempt + 1
        if visibility_rig is None or _classes_hit(scene, visibility_rig) >= set(required_classes):
            return scene
    raise RuntimeError(f"scene {index}: no draw in {max_attempts} attempts showed every class to the LiDAR")


def _classes_hit(scene: Scene, rig) -> set[str]:
    hit = set()
    for t in scene.keyframe_times:
        world = scene.world_at(t)
        scan = cast_lidar(world, scene.global_from_ego(t) @ rig.lidar.ego_from_lidar, rig.lidar.elevations,
                          rig.lidar.azimuths, rig.lidar.max_range)
        owners = np.unique(scan.owner[scan.owner >= 0])
        hit |= {scene.actors[k].class_name for k in owners if k < len(scene.actors)}
    return hit


def _draw_scene(index, seed, grid, keyframe_times, pre_roll, rng, required_classes) -> Scene:
    times = np.arange(keyframe_times[0] - pre_roll, keyframe_times[-1] + 0.51, 0.25)

    # Ego: in a lane, heading along a road, turning at some intersections; 10% of scenes stand still.
    axis, sign = int(rng.integers(2)), int(rng.choice([-1, 1]))
    lane = int(rng.integers(grid.lanes))
    lateral = (lane + 0.5) * grid.lane_width * (1 if grid.drive_left else -1)
    # Far enough from the global origin that everything stays at positive coordinates, where the
    # devkit's map masks live, even if the ego drives towards the origin all scene long.
    max_travel = 11.0 * (times[-1] - times[0]) + 5.0
    first_block = int(np.ceil((max_travel + 150.0) / grid.block))
    block_index = first_block + rng.integers(0, 3, size=2)
    start = np.asarray(grid.origin) + block_index * grid.block
    start[axis] += rng.uniform(grid.half_width + 4.0, grid.block - grid.half_width - 4.0)
    left = np.array([-_axis_heading(axis, sign)[1], _axis_heading(axis, sign)[0]])
    start = start + lateral * left
    speed = 0.0 if rng.uniform() < 0.1 else float(rng.uniform(4.0, 11.0))  # max_travel assumes <= 11
    turns = [int(t) for t in rng.choice([0, 0, 1, -1], size=8)]
    path = lane_path(grid, start, axis, sign, lateral, max(speed * (times[-1] - times[0]) + 5.0, 5.0), turns)
    ego = Trajectory.from_points(path, speed, times[0])

    ego_xy = ego.state(times)[0]
    region_min, region_max = ego_xy.min(0) - 90.0, ego_xy.max(0) + 90.0
    buildings, building_colors = _buildings(grid, region_min, region_max, rng)
    placer = _Placer(times, ego, buildings)
    builder = _SceneBuilder(grid, ego, times, keyframe_times, rng)

    actors: list[Actor] = []

    def add(class_name: str, radius: float, tries: int = 60) -> bool:
        for _ in range(tries):
            candidate = builder.place(class_name, radius)
            if candidate is None:
                continue
            trajectory, size, attribute = candidate
            if attribute and attribute not in DETECTION_CLASS_ATTRIBUTES[class_name]:
                raise AssertionError(f"{class_name} got attribute {attribute}")
            if not placer.try_place(trajectory, size):
                continue
            spec = CLASS_SPECS[class_name]
            color = hsv_to_rgb(spec.hue + rng.uniform(-6, 6), rng.uniform(0.65, 0.95), rng.uniform(0.55, 0.95))
            actors.append(Actor(len(actors), class_name, size, trajectory, attribute, color))
            if class_name in ("traffic_cone", "barrier"):  # a short row of the same kind
                _extend_row(actors, placer, trajectory, size, class_name, rng)
            return True
        return False

    for class_name in required_classes:  # one of each close to the ego
        add(class_name, 25.0, tries=400)
    for class_name, spec in CLASS_SPECS.items():
        for _ in range(rng.poisson(spec.mean_count)):
            add(class_name, 70.0)

    sun_azimuth, sun_elevation = rng.uniform(-np.pi, np.pi), rng.uniform(0.35, 1.2)
    sun = np.array([np.cos(sun_elevation) * np.cos(sun_azimuth), np.cos(sun_elevation) * np.sin(sun_azimuth),
                    np.sin(sun_elevation)])
    return Scene(index, seed, grid, ego, actors, buildings, building_colors, sun, np.asarray(keyframe_times),
                 float(times[0]))


def _extend_row(actors, placer, trajectory, size, class_name, rng):
    """Cones and barriers come in rows along the road."""
    xy, yaw, _ = trajectory.state(trajectory.t0)
    along_yaw = yaw if class_name == "traffic_cone" else yaw - 0.5 * np.pi
    step = (rng.uniform(1.5, 3.0) if class_name == "traffic_cone" else size[1] + 0.3) * np.array(
        [np.cos(along_yaw), np.sin(along_yaw)])
    first = actors[-1]
    for k in range(1, int(rng.integers(2, 6))):
        member = Trajectory.stationary(*(xy + k * step), float(yaw), trajectory.t0)
        member_size = _sample_size(CLASS_SPECS[class_name], rng)
        if not placer.try_place(member, member_size):
            break
        color = np.clip(first.color * rng.uniform(0.9, 1.1), 0, 1)
        actors.append(Actor(len(actors), class_name, member_size, member, "", color))
