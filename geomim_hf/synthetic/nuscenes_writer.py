"""Write simulated scenes as a nuScenes v1.0 release: the 13 JSON tables, keyframe and sweep
JPEGs, LIDAR_TOP ``.pcd.bin`` files and semantic-prior map masks, all laid out as the devkit
expects (``NuScenes(version, dataroot)`` loads the result).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.classes import (
    DETECTION_CLASS_TO_CATEGORY,
    NUSCENES_ATTRIBUTES,
    NUSCENES_CATEGORIES,
    NUSCENES_VISIBILITY_LEVELS,
)
from ..data.geometry import matrix_to_quaternion, rotation_z
from .raycast import render_camera
from .map_expansion import make_token, write_map_expansion
from .sensors import NUSCENES_CAMERAS, SensorRig, cast_lidar_settled, nuscenes_rig
from .world import Scene, location_grid, simulate_scene

KEYFRAME_INTERVAL = 0.5  # seconds: nuScenes annotates at 2 Hz
ANNOTATION_RANGE = 70.0  # metres from the ego within which objects are annotated
MAP_RESOLUTION = 0.1  # metres per pixel of the semantic prior, as the devkit requires
MINI_SCENES = ("scene-0103", "scene-0916", "scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796",
               "scene-1077", "scene-1094", "scene-1100")
LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")
LIDAR_CHANNEL = "LIDAR_TOP"
RADAR_CHANNELS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")


def scene_names(version: str, num_scenes: int) -> list[str]:
    """Real scene names, so the devkit's ``create_splits_scenes`` puts each scene in a split.

    v1.0-mini: mini_val's two scenes first, then mini_train's. v1.0-trainval: every fifth scene
    from the val list, the rest from train.
    """
    if version == "v1.0-mini":
        if num_scenes > len(MINI_SCENES):
            raise ValueError(f"v1.0-mini has {len(MINI_SCENES)} scenes, asked for {num_scenes}")
        return list(MINI_SCENES[:num_scenes])
    if version == "v1.0-trainval":
        from nuscenes.utils.splits import train, val

        names, train_iter, val_iter = [], iter(train), iter(val)
        for index in range(num_scenes):
            names.append(next(val_iter) if index % 5 == 0 else next(train_iter))
        return names
    raise ValueError(f"version must be v1.0-mini or v1.0-trainval, got {version!r}")


@dataclass
class SensorFrame:
    """One sample_data record to simulate."""

    channel: str
    time: float  # seconds, scene clock
    is_key_frame: bool
    sample_index: int  # the keyframe this frame belongs to (the next one for sweeps)
    filename: str


def _schedule(scene: Scene, rig: SensorRig, logfile: str, start_us: int, camera_sweeps: int, lidar_sweeps: int):
    """Every sensor frame of the scene, grouped by keyframe interval."""
    groups = []
    for k, key_time in enumerate(scene.keyframe_times):
        group = []
        sensors = [(LIDAR_CHANNEL, 0.0, lidar_sweeps)] + [(c.name, c.time_offset, camera_sweeps) for c in rig.cameras]
        for channel, offset, sweeps in sensors:
            extension = "pcd.bin" if channel == LIDAR_CHANNEL else "jpg"
            times = [key_time - KEYFRAME_INTERVAL + j * KEYFRAME_INTERVAL / (sweeps + 1) for j in range(1, sweeps + 1)]
            if k == 0:
                times = [t for t in times if t >= scene.start_time]
            for time, is_key in [(t, False) for t in times] + [(key_time, True)]:
                stamp = start_us + int(round((time + offset) * 1e6))
                folder = "samples" if is_key else "sweeps"
                filename = f"{folder}/{channel}/{logfile}__{channel}__{stamp}.{extension}"
                group.append(SensorFrame(channel, time + offset, is_key, k, filename))
        groups.append(group)
    return groups


def _render_group(args):
    """Simulate one keyframe interval's sensor frames and write their files. Runs in a worker."""
    dataroot, scene, rig, frames, seed = args
    cameras = {c.name: c for c in rig.cameras}
    results = []
    for frame in frames:
        world = scene.world_at(frame.time)
        global_from_ego = scene.global_from_ego(frame.time)
        path = os.path.join(dataroot, frame.filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if frame.channel == LIDAR_CHANNEL:
            rng = np.random.default_rng([seed, scene.index, int(round(frame.time * 1e6)) + 10**9])
            scan, inside = cast_lidar_settled(scene, rig.lidar, frame.time, rng)
            points, intensity, beam = scan.points()
            # x, y, z, intensity, ring index: the five float32 channels of a nuScenes .pcd.bin
            cloud = np.concatenate([points, intensity[:, None], beam[:, None]], axis=1).astype(np.float32)
            cloud.tofile(path)
            counts = np.bincount(inside[inside >= 0], minlength=len(scene.actors))
            results.append({"lidar_points": counts, "num_points": len(cloud)})
        else:
            camera = cameras[frame.channel]
            image, visible, unoccluded = render_camera(
                world, global_from_ego @ camera.ego_from_camera, camera.intrinsics, camera.width, camera.height
            )
            Image.fromarray(image).save(path, format="JPEG", quality=90)
            actors = len(scene.actors)
            results.append({"visible": visible[:actors], "unoccluded": unoccluded[:actors]})
    return results


def _visibility_token(visible: int, unoccluded: int) -> str:
    fraction = visible / unoccluded if unoccluded > 0 else 0.0
    for token, bound in (("1", 0.4), ("2", 0.6), ("3", 0.8)):
        if fraction < bound:
            return token
    return "4"


def write_nuscenes(
    dataroot: str,
    num_scenes: int = 10,
    samples_per_scene: int = 10,
    seed: int = 0,
    version: str = "v1.0-mini",
    camera_sweeps: int = 1,
    lidar_sweeps: int = 4,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Simulate ``num_scenes`` scenes of ``samples_per_scene`` keyframes and write them under
    ``dataroot`` as nuScenes ``version``. Returns a summary of what was written."""
    names = scene_names(version, num_scenes)
    os.makedirs(os.path.join(dataroot, version), exist_ok=True)
    tables = {name: [] for name in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
                                    "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")}

    category_tokens = {name: make_token("category", name) for name in NUSCENES_CATEGORIES}
    tables["category"] = [{"token": category_tokens[n], "name": n, "description": d}
                          for n, d in NUSCENES_CATEGORIES.items()]
    attribute_tokens = {name: make_token("attribute", name) for name in NUSCENES_ATTRIBUTES}
    tables["attribute"] = [{"token": attribute_tokens[n], "name": n, "description": d}
                           for n, d in NUSCENES_ATTRIBUTES.items()]
    tables["visibility"] = [{"token": t, "level": lvl, "description": d} for t, lvl, d in NUSCENES_VISIBILITY_LEVELS]
    sensor_tokens = {}
    for channel in [c[0] for c in NUSCENES_CAMERAS] + [LIDAR_CHANNEL] + list(RADAR_CHANNELS):
        modality = "lidar" if channel == LIDAR_CHANNEL else ("radar" if channel.startswith("RADAR") else "camera")
        sensor_tokens[channel] = make_token("sensor", channel)
        tables["sensor"].append({"token": sensor_tokens[channel], "channel": channel, "modality": modality})

    # Simulate the scenes (cheap) and plan every sensor frame.
    scenes, jobs, plans = [], [], []
    for index, name in enumerate(tqdm(names, desc="simulating scenes", disable=not progress)):
        location = LOCATIONS[index % len(LOCATIONS)]
        rig = nuscenes_rig(np.random.default_rng([seed, index, 7]))
        keyframe_times = np.arange(samples_per_scene) * KEYFRAME_INTERVAL
        pre_roll = KEYFRAME_INTERVAL if (camera_sweeps or lidar_sweeps) else 0.0
        scene = simulate_scene(index, seed, location_grid(seed, location), keyframe_times, pre_roll, visibility_rig=rig)
        captured = dt.datetime(2018, 7, 24, 11, 22, 45) + dt.timedelta(days=index % 28, hours=index)
        vehicle = "n008" if location.startswith("boston") else "n015"
        logfile = f"{vehicle}-{captured:%Y-%m-%d-%H-%M-%S}{'-0400' if vehicle == 'n008' else '+0800'}"
        start_us = int(captured.replace(tzinfo=dt.timezone.utc).timestamp() * 1e6) + 400_000
        groups = _schedule(scene, rig, logfile, start_us, camera_sweeps, lidar_sweeps)
        scenes.append(scene)
        plans.append((name, location, rig, logfile, captured, start_us, groups))
        jobs.extend((dataroot, scene, rig, group, seed) for group in groups)

    # Render every frame, in parallel; results come back in job order.
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_render_group, jobs), total=len(jobs), desc="rendering sensors",
                                disable=not progress))
    else:
        results = [_render_group(job) for job in tqdm(jobs, desc="rendering sensors", disable=not progress)]

    job_index = 0
    num_points = 0
    for scene, (name, location, rig, logfile, captured, start_us, groups) in zip(scenes, plans):
        num_points += _scene_tables(tables, scene, name, location, rig, logfile, captured, start_us, groups,
                                    results[job_index:job_index + len(groups)], seed, sensor_tokens,
                                    category_tokens, attribute_tokens)
        job_index += len(groups)

    map_files = _write_maps(dataroot, tables, scenes, plans, seed)
    for table, records in tables.items():
        with open(os.path.join(dataroot, version, f"{table}.json"), "w") as handle:
            json.dump(records, handle, indent=0)
    return {
        "version": version,
        "scenes": len(names),
        "samples": len(tables["sample"]),
        "sample_data": len(tables["sample_data"]),
        "annotations": len(tables["sample_annotation"]),
        "instances": len(tables["instance"]),
        "maps": len(map_files),
        "lidar_points_per_keyframe": round(num_points / max(len(tables["sample"]), 1)),
    }


def _scene_tables(tables, scene, name, location, rig, logfile, captured, start_us, groups, group_results, seed,
                  sensor_tokens, category_tokens, attribute_tokens) -> int:
    """Fill every table for one scene; returns the keyframe LiDAR points written."""
    scene_token = make_token(seed, "scene", name)
    log_token = make_token(seed, "log", name)
    tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": logfile[:4],
                          "date_captured": f"{captured:%Y-%m-%d}", "location": location})

    calibration = {}
    for camera in rig.cameras:
        calibration[camera.name] = {
            "token": make_token(seed, "calibrated_sensor", name, camera.name),
            "sensor_token": sensor_tokens[camera.name],
            "translation": camera.ego_from_camera[:3, 3].tolist(),
            "rotation": matrix_to_quaternion(camera.ego_from_camera[:3, :3]).tolist(),
            "camera_intrinsic": camera.intrinsics.tolist(),
        }
    calibration[LIDAR_CHANNEL] = {
        "token": make_token(seed, "calibrated_sensor", name, LIDAR_CHANNEL),
        "sensor_token": sensor_tokens[LIDAR_CHANNEL],
        "translation": rig.lidar.ego_from_lidar[:3, 3].tolist(),
        "rotation": matrix_to_quaternion(rig.lidar.ego_from_lidar[:3, :3]).tolist(),
        "camera_intrinsic": [],
    }
    tables["calibrated_sensor"].extend(calibration.values())

    # Samples.
    sample_tokens = [make_token(seed, "sample", name, k) for k in range(len(scene.keyframe_times))]
    for k, key_time in enumerate(scene.keyframe_times):
        tables["sample"].append({
            "token": sample_tokens[k],
            "timestamp": start_us + int(round(key_time * 1e6)),
            "prev": sample_tokens[k - 1] if k > 0 else "",
            "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else "",
            "scene_token": scene_token,
        })
    tables["scene"].append({
        "token": scene_token, "log_token": log_token, "nbr_samples": len(sample_tokens),
        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1], "name": name,
        "description": f"Synthetic {location}: ego at {scene.ego.speed:.1f} m/s, {len(scene.actors)} objects",
    })

    # Sample data and ego poses, chained per channel in time order.
    chains: dict[str, list] = {}
    keyframe_results: dict[tuple[int, str], dict] = {}
    for group, results in zip(groups, group_results):
        for frame, result in zip(group, results):
            chains.setdefault(frame.channel, []).append(frame)
            if frame.is_key_frame:
                keyframe_results[(frame.sample_index, frame.channel)] = result
    cameras = {c.name: c for c in rig.cameras}
    for channel, frames in chains.items():
        frames.sort(key=lambda f: f.time)
        tokens = [make_token(seed, "sample_data", f.filename) for f in frames]
        for i, frame in enumerate(frames):
            stamp = start_us + int(round(frame.time * 1e6))
            global_from_ego = scene.global_from_ego(frame.time)
            pose_token = make_token(seed, "ego_pose", frame.filename)
            tables["ego_pose"].append({
                "token": pose_token, "timestamp": stamp,
                "rotation": matrix_to_quaternion(global_from_ego[:3, :3]).tolist(),
                "translation": global_from_ego[:3, 3].tolist(),
            })
            camera = cameras.get(channel)
            tables["sample_data"].append({
                "token": tokens[i], "sample_token": sample_tokens[frame.sample_index], "ego_pose_token": pose_token,
                "calibrated_sensor_token": calibration[channel]["token"], "timestamp": stamp,
                "fileformat": "pcd" if camera is None else "jpg", "is_key_frame": frame.is_key_frame,
                "height": 0 if camera is None else camera.height, "width": 0 if camera is None else camera.width,
                "filename": frame.filename,
                "prev": tokens[i - 1] if i > 0 else "", "next": tokens[i + 1] if i + 1 < len(tokens) else "",
            })

    # Annotations: every actor within range, from its first to its last keyframe in range.
    boxes_per_key = [scene.actor_boxes(t)[0] for t in scene.keyframe_times]
    ego_xy = np.stack([scene.global_from_ego(t)[:2, 3] for t in scene.keyframe_times])
    in_range = np.stack([np.linalg.norm(b[:, :2] - xy, axis=1) < ANNOTATION_RANGE for b, xy in zip(boxes_per_key,
                                                                                                   ego_xy)])
    for actor_index, actor in enumerate(scene.actors):
        keys = np.flatnonzero(in_range[:, actor_index])
        if len(keys) == 0:
            continue
        keys = list(range(keys[0], keys[-1] + 1))
        instance_token = make_token(seed, "instance", name, actor.instance)
        tokens = [make_token(seed, "sample_annotation", name, actor.instance, k) for k in keys]
        for i, k in enumerate(keys):
            box = boxes_per_key[k][actor_index]
            visible = sum(int(keyframe_results[(k, c)]["visible"][actor_index]) for c in cameras)
            unoccluded = sum(int(keyframe_results[(k, c)]["unoccluded"][actor_index]) for c in cameras)
            quaternion = matrix_to_quaternion(rotation_z(box[6]))
            tables["sample_annotation"].append({
                "token": tokens[i], "sample_token": sample_tokens[k], "instance_token": instance_token,
                "visibility_token": _visibility_token(visible, unoccluded),
                "attribute_tokens": [attribute_tokens[actor.attribute]] if actor.attribute else [],
                "translation": box[:3].tolist(), "size": [float(box[4]), float(box[3]), float(box[5])],
                "rotation": quaternion.tolist(),
                "prev": tokens[i - 1] if i > 0 else "", "next": tokens[i + 1] if i + 1 < len(tokens) else "",
                "num_lidar_pts": int(keyframe_results[(k, LIDAR_CHANNEL)]["lidar_points"][actor_index]),
                "num_radar_pts": 0,
            })
        tables["instance"].append({
            "token": instance_token, "category_token": category_tokens[DETECTION_CLASS_TO_CATEGORY[actor.class_name]],
            "nbr_annotations": len(tokens), "first_annotation_token": tokens[0], "last_annotation_token": tokens[-1],
        })
    return sum(int(keyframe_results[(k, LIDAR_CHANNEL)]["num_points"]) for k in range(len(scene.keyframe_times)))


def _write_maps(dataroot, tables, scenes, plans, seed) -> list[str]:
    """Per location, a semantic-prior mask (drivable surface = 255) at 0.1 m per pixel with the origin
    at the bottom-left corner, as the devkit's MapMask reads it, and the map expansion
    (``maps/expansion/<location>.json``, :mod:`geomim_hf.synthetic.map_expansion`) over the same square."""
    os.makedirs(os.path.join(dataroot, "maps"), exist_ok=True)
    extents: dict[str, float] = {}
    logs: dict[str, list[str]] = {}
    for scene, plan, log in zip(scenes, plans, tables["log"]):
        location = plan[1]
        ego_xy = scene.ego.state(np.array([scene.start_time, scene.keyframe_times[-1]]))[0]
        extents[location] = max(extents.get(location, 0.0), float(ego_xy.max()) + 150.0)
        logs.setdefault(location, []).append(log["token"])
    files = []
    for location, extent in extents.items():
        grid = location_grid(seed, location)
        size = int(np.ceil(extent / MAP_RESOLUTION))
        mask = np.zeros((size, size), dtype=np.uint8)
        x = (np.arange(size) + 0.5) * MAP_RESOLUTION
        for row in range(0, size, 1024):  # row 0 is the top (largest y)
            rows = np.arange(row, min(row + 1024, size))
            y = (size - rows - 0.5) * MAP_RESOLUTION
            mask[rows] = np.where(grid.drivable(x[None, :], y[:, None]), 255, 0)
        token = make_token(seed, "map", location)
        filename = f"maps/{token}.png"
        Image.fromarray(mask).save(os.path.join(dataroot, filename), optimize=False, compress_level=1)
        tables["map"].append({"token": token, "log_tokens": logs[location], "category": "semantic_prior",
                              "filename": filename})
        files.extend([filename, write_map_expansion(dataroot, grid, location, size * MAP_RESOLUTION, seed)])
    return files
