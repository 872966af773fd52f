"""A deterministic synthetic driving world, written in the real nuScenes v1.0 and Waymo v2 formats.

:mod:`.world` simulates scenes (a city grid of roads with buildings in the blocks, an ego vehicle that
follows its lane, and objects of all ten nuScenes detection classes, parked, driving, walking or
turning); :mod:`.sensors` holds the nuScenes and Waymo rigs; :mod:`.raycast` renders them exactly
(z-buffered camera images, a spinning LiDAR whose returns are the real surfaces); and the two writers
lay the same scenes out as the devkit and the Waymo v2 parquet readers expect, so a loader that reads
either format must recover the simulator's geometry. Not imported by ``import geomim_hf``.

Command line::

    python -m geomim_hf.synthetic --format nuscenes --out DIR --scenes 10 --samples-per-scene 10
    python -m geomim_hf.synthetic --format waymo --out DIR --scenes 4 --samples-per-scene 20
"""

from .nuscenes_writer import write_nuscenes
from .waymo_writer import write_waymo
from .world import simulate_scene

__all__ = ["simulate_scene", "write_nuscenes", "write_waymo"]
