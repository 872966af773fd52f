"""The nuScenes map expansion (v1.3) of a synthetic location, written from its road grid.

``maps/expansion/<location>.json`` holds what ``nuscenes.map_expansion.map_api.NuScenesMap`` loads:
nodes, lines and polygons in the global frame of the ego poses, and the layers built on them. Every
element comes from the geometry the simulator draws (:meth:`RoadGrid.surfaces` and its markings):

- ``road_segment``: each stretch of road between two intersections, and each intersection
  (``is_intersection``); ``drivable_area``: all of them; ``road_block``: each stretch's two
  directions, centreline to curb;
- ``lane``: each driving lane of a stretch, with its straight ``arcline_path_3``;
- ``carpark_area``: the parking strips between the outer lane and the curb;
- ``ped_crossing``: the zebra crossings before each intersection; ``walkway``: the sidewalks;
- ``stop_line``: the inbound lanes' 2 m before each crossing (``PED_CROSSING``; the simulator paints
  no stop line, so this layer is a label of the geometry, not of anything a camera sees);
- ``road_divider``: the yellow centre lines; ``lane_divider``: the white lines between lanes and
  between the outer lane and the parking strip.

Left out against the real expansion: lane connectors and turn paths through intersections
(``lane_connector`` is empty and ``connectivity`` has no neighbours), traffic lights, and curved or
merged geometry (every element is a rectangle or a straight line, clipped to the map's canvas).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .world import RoadGrid

MAP_EXPANSION_VERSION = "1.3"
STOP_LINE_DEPTH = 2.0  # metres of lane before a crossing that make its stop line
POLYGON_LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line",
                  "carpark_area", "lane_connector")
LINE_LAYERS = ("road_divider", "lane_divider", "traffic_light")


def make_token(*parts) -> str:
    """Deterministic 32-hex token, like nuScenes' (every table of the synthetic world uses these)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


class _MapBuilder:
    """Accumulates the records of one map; tokens are deterministic for (seed, location)."""

    def __init__(self, seed: int, location: str, extent: float):
        self.make_token = lambda kind, index: make_token(seed, "map-expansion", location, kind, index)
        self.extent = extent
        self.records: dict[str, list] = {name: [] for name in ("node", "line", "polygon", *POLYGON_LAYERS,
                                                               *LINE_LAYERS)}
        self.node_of: dict[tuple[float, float], str] = {}
        self.arclines: dict[str, list] = {}  # lane token -> its arcline path

    def add(self, layer: str, **fields) -> str:
        token = self.make_token(layer, len(self.records[layer]))
        self.records[layer].append({"token": token, **fields})
        return token

    def node(self, x: float, y: float) -> str:
        key = (round(float(x), 6), round(float(y), 6))
        if key not in self.node_of:
            self.node_of[key] = self.add("node", x=key[0], y=key[1])
        return self.node_of[key]

    def clip(self, x0, y0, x1, y1):
        """An axis-aligned rectangle clipped to the canvas [0, extent]^2, or None if nothing is left."""
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, self.extent), min(y1, self.extent)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def polygon(self, rectangle) -> str:
        x0, y0, x1, y1 = rectangle
        corners = [self.node(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]  # counter-clockwise
        return self.add("polygon", exterior_node_tokens=corners, holes=[])

    def line(self, start, end) -> str | None:
        """A straight line clipped to the canvas (lines here are axis-aligned), or None."""
        box = self.clip(min(start[0], end[0]), min(start[1], end[1]), max(start[0], end[0]) + 1e-9,
                        max(start[1], end[1]) + 1e-9)
        if box is None:
            return None
        (x0, y0), (x1, y1) = np.clip(start, 0, self.extent), np.clip(end, 0, self.extent)
        return self.add("line", node_tokens=[self.node(x0, y0), self.node(x1, y1)])


def _xy(axis: int, along: float, across: float) -> tuple[float, float]:
    """A point given along a road that runs along ``axis`` (0: x, 1: y) and across it."""
    return (along, across) if axis == 0 else (across, along)


def _rectangle(axis: int, along: tuple[float, float], across: tuple[float, float]):
    (x0, y0), (x1, y1) = _xy(axis, along[0], across[0]), _xy(axis, along[1], across[1])
    return x0, y0, x1, y1


def map_expansion(grid: RoadGrid, location: str, extent: float, seed: int) -> dict:
    """The map expansion of ``grid`` over the canvas [0, extent]^2 (metres), as the JSON object."""
    builder = _MapBuilder(seed, location, extent)
    half = grid.half_width
    # Centrelines of the roads along y (at x = lines[0]) and along x (at y = lines[1]) that touch the canvas.
    lines = [grid.origin[a] + grid.block * np.arange(np.floor((-grid.block - grid.origin[a]) / grid.block),
                                                     np.ceil((extent + grid.block - grid.origin[a]) / grid.block) + 1)
             for a in (0, 1)]

    segment_polygons = []
    for cx in lines[0]:  # intersections
        for cy in lines[1]:
            box = builder.clip(cx - half, cy - half, cx + half, cy + half)
            if box:
                polygon = builder.polygon(box)
                segment_polygons.append(polygon)
                builder.add("road_segment", polygon_token=polygon, is_intersection=True, drivable_area_token="")

    for axis in (0, 1):  # the stretches of the roads along x (axis 0) and along y (axis 1)
        for center in lines[1 - axis]:
            crossings = lines[axis]
            for start, end in zip(crossings[:-1] + half, crossings[1:] - half):
                box = builder.clip(*_rectangle(axis, (start, end), (center - half, center + half)))
                if box is None:
                    continue
                polygon = builder.polygon(box)
                segment_polygons.append(polygon)
                segment = builder.add("road_segment", polygon_token=polygon, is_intersection=False,
                                      drivable_area_token="")
                _stretch(builder, grid, axis, center, start, end, segment)

    for cx0, cx1 in zip(lines[0][:-1], lines[0][1:]):  # sidewalks: a ring inside each block, as four strips
        for cy0, cy1 in zip(lines[1][:-1], lines[1][1:]):
            x0, x1, y0, y1 = cx0 + half, cx1 - half, cy0 + half, cy1 - half
            s = grid.sidewalk
            for strip in ((x0, y0, x0 + s, y1), (x1 - s, y0, x1, y1), (x0 + s, y0, x1 - s, y0 + s),
                          (x0 + s, y1 - s, x1 - s, y1)):
                box = builder.clip(*strip)
                if box:
                    builder.add("walkway", polygon_token=builder.polygon(box))

    drivable = builder.add("drivable_area", polygon_tokens=segment_polygons)
    for record in builder.records["road_segment"]:
        record["drivable_area_token"] = drivable
    lane_tokens = [lane["token"] for lane in builder.records["lane"]]
    return {
        "version": MAP_EXPANSION_VERSION,
        "canvas_edge": [float(extent), float(extent)],
        **builder.records,
        "arcline_path_3": builder.arclines,
        "connectivity": {token: {"incoming": [], "outgoing": []} for token in lane_tokens},
    }


def _stretch(builder: _MapBuilder, grid: RoadGrid, axis: int, center: float, start: float, end: float,
             segment: str) -> None:
    """The lanes, blocks, parking, crossings, stop lines and dividers of one stretch of road from
    ``start`` to ``end`` (along ``axis``) about the centreline at ``center``."""
    half, width, lanes_edge = grid.half_width, grid.lane_width, grid.lanes * grid.lane_width
    crossings = {}
    for name, (lo, hi) in (("start", (start + 0.5, start + 3.5)), ("end", (end - 3.5, end - 0.5))):
        box = builder.clip(*_rectangle(axis, (lo, hi), (center - lanes_edge, center + lanes_edge)))
        if box:
            crossings[name] = builder.add("ped_crossing", polygon_token=builder.polygon(box),
                                          road_segment_token=segment)
    divider = builder.line(_xy(axis, start, center), _xy(axis, end, center))
    if divider:
        builder.add("road_divider", line_token=divider, road_segment_token=segment)

    for side in (-1.0, 1.0):  # the two directions, by the side of the centreline they drive on
        # Right-hand traffic drives on the right of its heading: heading +axis is on the +x side of a road
        # along y and on the -y side of a road along x.
        travel = (side if axis == 1 else -side) * (-1.0 if grid.drive_left else 1.0)
        first, last = (start, end) if travel > 0 else (end, start)
        yaw = float(np.arctan2(*(_xy(axis, travel, 0.0)[::-1])))
        box = builder.clip(*_rectangle(axis, (start, end), (center, center + side * half)))
        if box is None:
            continue
        block = builder.add("road_block", polygon_token=builder.polygon(box),
                            from_edge_line_token=builder.line(_xy(axis, first, center),
                                                              _xy(axis, first, center + side * half)) or "",
                            to_edge_line_token=builder.line(_xy(axis, last, center),
                                                            _xy(axis, last, center + side * half)) or "",
                            road_segment_token=segment)
        parking = builder.clip(*_rectangle(axis, (start, end), (center + side * lanes_edge, center + side * half)))
        if parking:
            builder.add("carpark_area", polygon_token=builder.polygon(parking), orientation=yaw,
                        road_block_token=block)
        for k in range(1, grid.lanes + 1):  # the white lines: between lanes (dashed) and at the parking strip
            line = builder.line(_xy(axis, start, center + side * k * width), _xy(axis, end, center + side * k * width))
            if line:
                kind = "SINGLE_SOLID_WHITE" if k == grid.lanes else "DOUBLE_DASHED_WHITE"
                nodes = builder.records["line"][-1]["node_tokens"]
                builder.add("lane_divider", line_token=line,
                            lane_divider_segments=[{"node_token": n, "segment_type": kind} for n in nodes])
        for lane in range(grid.lanes):
            inner, outer = center + side * lane * width, center + side * (lane + 1) * width
            box = builder.clip(*_rectangle(axis, (start, end), (inner, outer)))
            if box is None:
                continue
            middle = 0.5 * (inner + outer)
            (x0, y0), (x1, y1) = _xy(axis, first, middle), _xy(axis, last, middle)
            boundaries = []
            for across, kind in ((inner, "DOUBLE_SOLID_YELLOW" if lane == 0 else "DOUBLE_DASHED_WHITE"),
                                 (outer, "SINGLE_SOLID_WHITE" if lane == grid.lanes - 1 else "DOUBLE_DASHED_WHITE")):
                x, y = _xy(axis, first, across)
                boundaries.append([{"node_token": builder.node(*np.clip((x, y), 0, builder.extent)),
                                    "segment_type": kind}])
            # The lane's left boundary is the one nearer the centreline under right-hand traffic.
            left, right = boundaries if not grid.drive_left else boundaries[::-1]
            token = builder.add("lane", polygon_token=builder.polygon(box), lane_type="CAR",
                                from_edge_line_token=builder.line(_xy(axis, first, inner), _xy(axis, first, outer)) or "",
                                to_edge_line_token=builder.line(_xy(axis, last, inner), _xy(axis, last, outer)) or "",
                                left_lane_divider_segments=left, right_lane_divider_segments=right)
            length = float(abs(end - start))
            builder.arclines[token] = [{"start_pose": [x0, y0, yaw], "end_pose": [x1, y1, yaw], "shape": "LSR",
                                        "radius": 999.999, "segment_length": [0.0, length, 0.0]}]
        # Stop lines: the inbound lanes' last metres before the crossing they reach.
        reached = "end" if travel > 0 else "start"
        if reached in crossings:
            lo, hi = ((end - 3.5 - STOP_LINE_DEPTH, end - 3.5) if travel > 0 else (start + 3.5, start + 3.5 + STOP_LINE_DEPTH))
            box = builder.clip(*_rectangle(axis, (lo, hi), (center, center + side * lanes_edge)))
            if box:
                builder.add("stop_line", polygon_token=builder.polygon(box), stop_line_type="PED_CROSSING",
                            ped_crossing_tokens=[crossings[reached]], traffic_light_tokens=[], road_block_token=block)


def write_map_expansion(dataroot: str, grid: RoadGrid, location: str, extent: float, seed: int) -> str:
    """Write ``maps/expansion/<location>.json`` under ``dataroot``; returns its path relative to it."""
    filename = f"maps/expansion/{location}.json"
    os.makedirs(os.path.join(dataroot, "maps", "expansion"), exist_ok=True)
    with open(os.path.join(dataroot, filename), "w") as handle:
        json.dump(map_expansion(grid, location, extent, seed), handle)
    return filename
