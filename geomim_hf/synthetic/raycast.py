"""Sensor simulation by ray casting: a z-buffered camera render and a spinning LiDAR.

The world is a flat ground plane (``z = 0`` in the global frame) whose appearance comes from a
``ground`` object (``appearance(x, y) -> (rgb, reflectivity)``), plus solid oriented boxes: the
annotated actors (a vehicle is two boxes, body and cabin) and unannotated buildings. Every ray is
intersected exactly with the boxes it can reach; a box is only tested against the pixels (or LiDAR
beams and columns) inside its projected extent, so the cost follows what is visible rather than
image size times box count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from ..data.geometry import box_corners, clip_edges, invert_rigid, rotation_z, transform_points

# Surface kinds: they choose the texture painted on a box face.
KIND_VEHICLE, KIND_PERSON, KIND_CYCLE, KIND_CONE, KIND_BARRIER, KIND_BUILDING = range(6)

SKY_HORIZON = np.array([0.86, 0.88, 0.91], dtype=np.float32)
SKY_ZENITH = np.array([0.62, 0.72, 0.86], dtype=np.float32)
HAZE = np.array([0.80, 0.83, 0.87], dtype=np.float32)
HAZE_DISTANCE = 350.0  # metres over which haze covers 63% of a surface's colour
NEAR_PLANE = 0.05  # metres in front of the camera


class Ground(Protocol):
    def appearance(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour (P, 3) in [0, 1] and LiDAR reflectivity (P,) in [0, 1] at global (x, y)."""


@dataclass
class WorldState:
    """Everything a sensor sees at one instant.

    boxes: (K, 7) global ``(x, y, z, l, w, h, yaw)``; colors: (K, 3) base colours in [0, 1];
    kinds: (K,) surface kinds; reflectivity: (K,) in [0, 1]; sun: (3,) unit vector towards the sun.
    """

    boxes: np.ndarray
    colors: np.ndarray
    kinds: np.ndarray
    reflectivity: np.ndarray
    ground: Ground
    sun: np.ndarray


def intersect_box(origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, box: np.ndarray):
    """Exact ray / oriented-box intersection by the slab method.

    origin: (3,) shared ray origin; dx, dy, dz: ray direction components, any shape, any length;
    box: (7,). Returns ``t`` (hit points are ``origin + t * direction``; inf where missed or the
    origin is inside) and a :class:`BoxHits` that describes the surface at any subset of the rays.
    """
    cos, sin = np.float32(np.cos(box[6])), np.float32(np.sin(box[6]))
    offset = origin - box[:3]
    origin_box = (cos * offset[0] + sin * offset[1], -sin * offset[0] + cos * offset[1], offset[2])
    directions_box = (cos * dx + sin * dy, -sin * dx + cos * dy, dz)
    enter, leave = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, d, h in zip(origin_box, directions_box, 0.5 * box[3:6]):
            inverse = np.float32(1.0) / d
            low, high = np.float32(-h - o) * inverse, np.float32(h - o) * inverse
            enter.append(np.minimum(low, high))
            leave.append(np.maximum(low, high))
    t_near = np.maximum(np.maximum(enter[0], enter[1]), enter[2])
    t_far = np.minimum(np.minimum(leave[0], leave[1]), leave[2])
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.float32(np.inf))
    return t, BoxHits(origin_box, directions_box, enter, t_near)


@dataclass
class BoxHits:
    """Where rays enter a box, computed only for the rays asked about."""

    origin_box: tuple
    directions_box: tuple
    enter: list
    t_near: np.ndarray

    def surface(self, rays):
        """For the rays selected by ``rays`` (a mask or index into the ray arrays): the entered
        face as ``(axis, sign)`` of its outward box-frame normal, and the hit point in the box
        frame as three arrays."""
        enter = [e[rays] for e in self.enter]
        directions = [d[rays] for d in self.directions_box]
        axis = np.where(enter[0] >= np.maximum(enter[1], enter[2]), 0, np.where(enter[1] >= enter[2], 1, 2))
        sign = -np.sign(np.choose(axis, directions))
        t = self.t_near[rays]
        hit_box = [np.float32(o) + t * d for o, d in zip(self.origin_box, directions)]
        return axis, sign, hit_box


# A vehicle's silhouette: a bonnet lower than the cabin, so that its shape (not only its paint) shows the
# front, to the LiDAR as to a camera. The cabin runs from the back to the bonnet.
BONNET_LENGTH = 1.3  # metres, at most BONNET_SHARE of the vehicle's length
BONNET_SHARE = 0.3
BONNET_HEIGHT = 0.6  # of the vehicle's height


def vehicle_solids(box: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The boxes whose union is the vehicle annotated by ``box`` (7,), each with its centre (3,) in the
    annotation box's frame: the body, full length and ``BONNET_HEIGHT`` of the height, and the cabin, full
    height from the back to the bonnet."""
    length, height = box[3], box[5]
    bonnet = min(BONNET_LENGTH, BONNET_SHARE * length)
    body = ((0.0, 0.0, -0.5 * (1.0 - BONNET_HEIGHT) * height), (length, box[4], BONNET_HEIGHT * height))
    cabin = ((-0.5 * bonnet, 0.0, 0.0), (length - bonnet, box[4], height))
    global_from_box = rotation_z(box[6])
    solids = []
    for center_box, size in (body, cabin):
        center = box[:3] + global_from_box @ np.array(center_box)
        solids.append((np.array([*center, *size, box[6]]), np.array(center_box)))
    return solids


def intersect_solid(origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, box: np.ndarray,
                    kind: int):
    """:func:`intersect_box` for the solid that ``box`` annotates: the box itself, or for a vehicle the union
    of its :func:`vehicle_solids`, whose hits' surface is reported in the annotation box's frame."""
    if kind != KIND_VEHICLE:
        return intersect_box(origin, dx, dy, dz, box)
    (body, body_center), (cabin, cabin_center) = vehicle_solids(box)
    t_body, body_hits = intersect_box(origin, dx, dy, dz, body)
    t_cabin, cabin_hits = intersect_box(origin, dx, dy, dz, cabin)
    which = (t_cabin < t_body).astype(np.int64)  # 0: the body is hit first, 1: the cabin
    return np.minimum(t_body, t_cabin), UnionHits([body_hits, cabin_hits], [body_center, cabin_center], which)


@dataclass
class UnionHits:
    """:class:`BoxHits` of several axis-aligned solids in one box's frame; ``which`` (R,) names the solid each
    ray hits first, and ``offsets`` place each solid's centre in the shared frame."""

    parts: list
    offsets: list
    which: np.ndarray

    def surface(self, rays):
        index = np.arange(len(self.which))[rays]
        which = self.which[index]
        axis = np.empty(len(index), dtype=np.int64)
        sign = np.empty(len(index), dtype=np.float32)
        hit_box = [np.empty(len(index), dtype=np.float32) for _ in range(3)]
        for part, (hits, offset) in enumerate(zip(self.parts, self.offsets)):
            selected = which == part
            part_axis, part_sign, part_hit = hits.surface(index[selected])
            axis[selected], sign[selected] = part_axis, part_sign
            for c in range(3):
                hit_box[c][selected] = part_hit[c] + np.float32(offset[c])
        return axis, sign, hit_box


def _world_normals(box: np.ndarray, axis: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, ...]:
    """World-frame normals, as (nx, ny, nz), of the box faces given by ``(axis, sign)``."""
    cos, sin = np.float32(np.cos(box[6])), np.float32(np.sin(box[6]))
    local_x, local_y = np.where(axis == 0, sign, 0).astype(np.float32), np.where(axis == 1, sign, 0).astype(np.float32)
    return cos * local_x - sin * local_y, sin * local_x + cos * local_y, np.where(axis == 2, sign, 0).astype(np.float32)


def _vehicle_parts(box: np.ndarray, axis: np.ndarray, hit_box) -> dict[str, np.ndarray]:
    """Where the rays hit a vehicle's parts (masks over the hits on :func:`vehicle_solids`, in the annotation box's
    frame). Front and back differ, as on a real car: the cabin sits towards the back behind a lower bonnet, lamps
    and a bumper mark the front, tail lamps and the plate the back. A cuboid painted alike at both ends leaves the
    sign of its heading unobservable to any sensor, and a detector's yaw regression then collapses to no direction
    at all."""
    hx, hy, hz = hit_box
    half = 0.5 * box[3:6]
    height = (hz + half[2]) / box[5]  # 0 at the bottom, 1 at the top
    across = hy / max(half[1], 1e-6)  # -1 to 1 across the front and back faces
    from_rear = hx / half[0]  # -1 at the back, +1 at the front (side faces)
    front, rear = (axis == 0) & (hx > 0), (axis == 0) & (hx < 0)
    glass = (height > 0.6) & (height < 0.86)
    return {
        "glass": ((axis == 1) & glass & (from_rear > -0.8) & (from_rear < 0.35))
        | ((axis == 0) & glass & (np.abs(across) < 0.8)),  # side windows, windscreen, rear window
        "wheels": (axis != 2) & (height < 0.2),  # and the shadow under the body
        "bumper": front & (height >= 0.2) & (height < 0.3),
        "headlamps": front & (height > 0.3) & (height < 0.45) & (np.abs(across) > 0.55),
        "tail_lamps": rear & (height > 0.4) & (height < 0.58) & (np.abs(across) > 0.55),
        "plate": rear & (height > 0.25) & (height < 0.38) & (np.abs(across) < 0.25),
        "roof": axis == 2,
        "bonnet": (axis == 2) & (height < 0.9),  # the body's top, in front of the cabin
    }


# A vehicle part's brightness factor in the camera, in painting order (later parts over earlier ones).
VEHICLE_BRIGHTNESS = {"glass": 0.35, "wheels": 0.3, "bumper": 0.5, "headlamps": 1.8, "tail_lamps": 0.15,
                      "plate": 1.3, "roof": 0.85, "bonnet": 1.05}
# A vehicle part's LiDAR reflectivity where it is not the body's: glass returns little, the rear reflectors
# in the tail lamps and the plate are retroreflective.
VEHICLE_REFLECTIVITY = {"glass": 0.05, "tail_lamps": 0.95, "plate": 0.95}


def _surface_pattern(kind: int, box: np.ndarray, axis: np.ndarray, hit_box) -> np.ndarray:
    """Brightness factor that paints a texture on a box; hue is never changed, so a class keeps its
    colour under any pattern."""
    hx, hy, hz = hit_box
    half = 0.5 * box[3:6]
    height = (hz + half[2]) / box[5]  # 0 at the bottom, 1 at the top
    factor = np.ones(axis.shape, dtype=np.float32)
    if kind == KIND_VEHICLE:
        parts = _vehicle_parts(box, axis, hit_box)
        for part, brightness in VEHICLE_BRIGHTNESS.items():
            factor[parts[part]] = brightness
    elif kind == KIND_PERSON:
        factor[height < 0.42] = 0.55  # trousers
        factor[height > 0.86] = 1.25  # head, lighter
    elif kind == KIND_CYCLE:
        factor[height < 0.35] = 0.45
        factor[(axis == 0) & (hx > 0) & (height > 0.45) & (height < 0.6)] = 1.6  # headlamp
        factor[(axis == 0) & (hx < 0) & (height > 0.45) & (height < 0.6)] = 0.2  # tail lamp
    elif kind == KIND_CONE:
        factor[(height > 0.62) & (height < 0.76)] = 1.35
    elif kind == KIND_BARRIER:
        factor[np.floor((hx + hy + hz) / 0.35) % 2 == 1] = 0.55
    elif kind == KIND_BUILDING:
        metres_up = hz + half[2]
        along_metres = np.where(axis == 1, hx, hy)
        floor_position = metres_up % 3.2
        window = (axis != 2) & (floor_position > 1.0) & (floor_position < 2.3) & (along_metres % 2.6 < 1.5) \
            & (metres_up > 1.0)
        factor[window] = 0.45
    return factor


@lru_cache(maxsize=32)
def _pixel_rays(fx: float, fy: float, cx: float, cy: float, width: int, height: int):
    """Camera-frame ray components (H, W) through every pixel centre, scaled to unit depth, and
    their lengths (H, W).

    Pixel (i, j) is centred at image coordinates (i, j), OpenCV's convention, so a point that
    projects to (u, v) lies in pixel (round(u), round(v)).
    """
    x = ((np.arange(width) - cx) / fx).astype(np.float32)[None, :].repeat(height, 0)
    y = ((np.arange(height) - cy) / fy).astype(np.float32)[:, None].repeat(width, 1)
    return x, y, np.sqrt(x * x + y * y + 1.0)


def _projected_extent(box: np.ndarray, camera_from_global: np.ndarray, intrinsics: np.ndarray, width, height):
    """Pixel rectangle (u0, u1, v0, v1), end-exclusive, that holds the box's projection, clipped
    to the image, and the box's nearest depth; None if the box is behind the camera or off-image."""
    corners = transform_points(camera_from_global, box_corners(box[None])[0])  # (8, 3)
    in_front = corners[:, 2] > NEAR_PLANE
    if not in_front.any():
        return None
    points = np.concatenate([np.stack(segment) for segment in clip_edges(corners, NEAR_PLANE)])  # the 12 edges
    pixels = points @ intrinsics.T
    u, v = pixels[:, 0] / pixels[:, 2], pixels[:, 1] / pixels[:, 2]
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return (u0, u1, v0, v1), max(corners[:, 2].min(), NEAR_PLANE)


def render_camera(world: WorldState, global_from_camera: np.ndarray, intrinsics: np.ndarray, width: int, height: int):
    """Render one camera image (camera frame: x right, y down, z forward).

    Returns ``image`` (H, W, 3) uint8, ``visible_pixels`` (K,) and ``unoccluded_pixels`` (K,):
    per box, the pixels it wins in the z-buffer and the pixels it would cover alone (counted for
    every kind but buildings).
    """
    x_camera, y_camera, ray_length = _pixel_rays(
        intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2], width, height
    )
    r = global_from_camera[:3, :3].astype(np.float32)
    origin = global_from_camera[:3, 3]
    # Global ray directions (H, W); the parameter t along a ray is the camera depth.
    dx = r[0, 0] * x_camera + r[0, 1] * y_camera + r[0, 2]
    dy = r[1, 0] * x_camera + r[1, 1] * y_camera + r[1, 2]
    dz = r[2, 0] * x_camera + r[2, 1] * y_camera + r[2, 2]

    # Ground below the horizon, sky above; only the rows that hold each are shaded.
    down = dz < -1e-7
    with np.errstate(divide="ignore"):
        depth = np.where(down, np.float32(-origin[2]) / dz, np.float32(np.inf)).astype(np.float32)
    color = np.empty((3, height, width), dtype=np.float32)  # channel-first: each plane contiguous
    rows_down = np.flatnonzero(down.any(1))
    rows_sky = np.flatnonzero((~down).any(1))
    if len(rows_sky):
        sky = slice(rows_sky[0], rows_sky[-1] + 1)
        blend = np.sqrt(np.clip(dz[sky] / ray_length[sky], 0.0, 1.0))
        for c in range(3):
            color[c, sky] = SKY_HORIZON[c] + blend * (SKY_ZENITH[c] - SKY_HORIZON[c])
    if len(rows_down):
        ground = slice(rows_down[0], rows_down[-1] + 1)
        mask = down[ground]
        t = depth[ground][mask]
        ground_color, _ = world.ground.appearance(origin[0] + t * dx[ground][mask], origin[1] + t * dy[ground][mask])
        for c in range(3):
            color[c, ground][mask] = ground_color[:, c]

    # Boxes write depth, owner and a brightness factor; their colours are composed once at the end.
    num_boxes = len(world.boxes)
    owner = np.full((height, width), -1, dtype=np.int32)
    brightness = np.zeros((height, width), dtype=np.float32)
    unoccluded = np.zeros(num_boxes, dtype=np.int64)
    camera_from_global = invert_rigid(global_from_camera)
    for index in range(num_boxes):
        box = world.boxes[index]
        projected = _projected_extent(box, camera_from_global, intrinsics, width, height)
        if projected is None:
            continue
        (u0, u1, v0, v1), nearest = projected
        window = (slice(v0, v1), slice(u0, u1))
        if world.kinds[index] == KIND_BUILDING:
            # Unannotated: no unoccluded count needed, so skip pixels already nearer than the box.
            rays = depth[window] > nearest
            t, hits = intersect_box(origin, dx[window][rays], dy[window][rays], dz[window][rays], box)
            wins = t < depth[window][rays]
        else:
            rays = np.ones((v1 - v0, u1 - u0), dtype=bool)
            t, hits = intersect_solid(origin, dx[window].ravel(), dy[window].ravel(), dz[window].ravel(), box,
                                      int(world.kinds[index]))
            unoccluded[index] = np.count_nonzero(np.isfinite(t))
            wins = t < depth[window].ravel()
        if not wins.any():
            continue
        axis, sign, hit_box = hits.surface(wins)
        nx, ny, nz = _world_normals(box, axis, sign)
        shade = 0.5 + 0.5 * np.clip(nx * world.sun[0] + ny * world.sun[1] + nz * world.sun[2], 0.0, 1.0)
        won = np.zeros_like(rays)
        won[rays] = wins
        depth[window][won] = t[wins]
        owner[window][won] = index
        brightness[window][won] = shade * _surface_pattern(int(world.kinds[index]), box, axis, hit_box)

    owned = owner >= 0
    box_colors = world.colors.astype(np.float32)[owner[owned]] * brightness[owned][:, None]
    # Aerial perspective: distant surfaces fade towards the haze colour; the sky keeps its own.
    distance = np.where(np.isfinite(depth), depth * ray_length, np.float32(0.0))
    fade = 1.0 - np.exp(distance * np.float32(-1.0 / HAZE_DISTANCE))
    for c in range(3):
        plane = color[c]
        plane[owned] = np.minimum(box_colors[:, c], 1.0)
        plane += fade * (HAZE[c] - plane)
    color *= 255.0
    color += 0.5
    np.clip(color, 0.0, 255.0, out=color)
    image = np.ascontiguousarray(color.astype(np.uint8).transpose(1, 2, 0))
    visible = np.bincount(owner[owned], minlength=num_boxes)
    return image, visible, unoccluded


@dataclass
class LidarScan:
    """One LiDAR revolution on its (beam, column) grid, sensor frame.

    range: (B, A) metres along the ray, 0 where there is no return; intensity: (B, A) in [0, 255];
    owner: (B, A) index of the box hit, -1 for ground or no return; directions: (B, A, 3) unit rays.
    """

    range: np.ndarray
    intensity: np.ndarray
    owner: np.ndarray
    directions: np.ndarray

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The returns as ``points`` (P, 3) in the sensor frame, ``intensity`` (P,) and ``beam`` (P,)."""
        valid = self.range > 0
        points = self.directions[valid] * self.range[valid][:, None]
        beam = np.broadcast_to(np.arange(self.range.shape[0])[:, None], self.range.shape)[valid]
        return points, self.intensity[valid], beam


def lidar_directions(elevations: np.ndarray, azimuths: np.ndarray) -> np.ndarray:
    """Unit ray directions (B, A, 3) for beam elevations (B,) and column azimuths (A,), both radians,
    azimuth measured from +x towards +y of the sensor frame."""
    el, az = np.meshgrid(elevations, azimuths, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def cast_lidar(
    world: WorldState,
    global_from_lidar: np.ndarray,
    elevations: np.ndarray,
    azimuths: np.ndarray,
    max_range: float,
    range_noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> LidarScan:
    """Cast one revolution: every (beam, column) ray returns its nearest surface within ``max_range``.

    Columns must be sorted by azimuth in either direction; a box is tested only against the beams and
    columns inside its angular extent as seen from the sensor.
    """
    directions = lidar_directions(elevations, azimuths)  # (B, A, 3) sensor frame
    num_beams, num_columns = directions.shape[:2]
    rotation, origin = global_from_lidar[:3, :3], global_from_lidar[:3, 3]
    rays_global = directions.reshape(-1, 3) @ rotation.T

    distance = np.full(num_beams * num_columns, np.inf)
    down = rays_global[:, 2] < -1e-9
    distance[down] = -origin[2] / rays_global[down, 2]
    owner = np.full(num_beams * num_columns, -1, dtype=np.int32)
    incidence = np.zeros(num_beams * num_columns)
    incidence[down] = -rays_global[down, 2]  # cosine to the ground normal (0, 0, 1)
    surface_reflectivity = np.zeros(num_beams * num_columns)  # of the nearest box hit so far

    lidar_from_global = invert_rigid(global_from_lidar)
    azimuth_order = np.argsort(azimuths)
    azimuth_sorted = azimuths[azimuth_order]
    centers_lidar = transform_points(lidar_from_global, world.boxes[:, :3])
    reach = np.linalg.norm(centers_lidar[:, :2], axis=1) - 0.5 * np.linalg.norm(world.boxes[:, 3:5], axis=1)
    for index in np.flatnonzero(reach < max_range):
        box = world.boxes[index]
        corners = transform_points(lidar_from_global, box_corners(box[None])[0])
        horizontal = np.linalg.norm(corners[:, :2], axis=1)
        if reach[index] < 0.5:  # sensor (almost) inside the footprint: test every column
            columns = np.arange(num_columns)
        else:
            center_azimuth = np.arctan2(centers_lidar[index, 1], centers_lidar[index, 0])
            offsets = (np.arctan2(corners[:, 1], corners[:, 0]) - center_azimuth + np.pi) % (2 * np.pi) - np.pi
            low, high = center_azimuth + offsets.min(), center_azimuth + offsets.max()
            columns = _columns_between(azimuth_sorted, azimuth_order, low, high)
        corner_elevation = np.arctan2(corners[:, 2], np.maximum(horizontal, 1e-6))
        beams = np.flatnonzero(
            (elevations >= corner_elevation.min() - 0.02) & (elevations <= corner_elevation.max() + 0.02)
        )
        if len(columns) == 0 or len(beams) == 0:
            continue
        ray_ids = (beams[:, None] * num_columns + columns[None, :]).ravel()
        rays = rays_global[ray_ids]
        t, hits = intersect_solid(origin, rays[:, 0], rays[:, 1], rays[:, 2], box, int(world.kinds[index]))
        wins = t < distance[ray_ids]
        if not wins.any():
            continue
        axis, sign, hit_box = hits.surface(wins)
        ray_ids, rays = ray_ids[wins], rays[wins]
        nx, ny, nz = _world_normals(box, axis, sign)
        distance[ray_ids] = t[wins]
        owner[ray_ids] = index
        incidence[ray_ids] = np.abs(nx * rays[:, 0] + ny * rays[:, 1] + nz * rays[:, 2])
        surface_reflectivity[ray_ids] = world.reflectivity[index]
        if world.kinds[index] == KIND_VEHICLE:
            parts = _vehicle_parts(box, axis, hit_box)
            for part, value in VEHICLE_REFLECTIVITY.items():
                surface_reflectivity[ray_ids[parts[part]]] = value

    valid = distance <= max_range
    reflectivity = np.zeros(num_beams * num_columns)
    on_ground = valid & (owner < 0)
    hits_ground = origin + distance[on_ground, None] * rays_global[on_ground]
    reflectivity[on_ground] = world.ground.appearance(hits_ground[:, 0], hits_ground[:, 1])[1]
    on_box = valid & (owner >= 0)
    reflectivity[on_box] = surface_reflectivity[on_box]
    intensity = np.clip(255.0 * reflectivity * (0.35 + 0.65 * incidence), 0.0, 255.0)
    if range_noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        distance = distance + range_noise * rng.standard_normal(distance.shape)
    distance = np.where(valid, distance, 0.0)
    owner = np.where(on_box, owner, -1)
    shape = (num_beams, num_columns)
    return LidarScan(
        range=distance.reshape(shape).astype(np.float32),
        intensity=np.where(valid, intensity, 0.0).reshape(shape).astype(np.float32),
        owner=owner.reshape(shape),
        directions=directions,
    )


def _columns_between(azimuth_sorted, azimuth_order, low: float, high: float) -> np.ndarray:
    """Column indices whose azimuth lies in [low, high] modulo 2 pi (low <= high)."""
    selected = []
    for shift in (-2 * np.pi, 0.0, 2 * np.pi):
        start = np.searchsorted(azimuth_sorted, low + shift - 1e-3, side="left")
        stop = np.searchsorted(azimuth_sorted, high + shift + 1e-3, side="right")
        selected.append(azimuth_order[start:stop])
    return np.unique(np.concatenate(selected))
