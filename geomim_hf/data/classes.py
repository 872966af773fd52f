"""Class lists and the nuScenes taxonomy they map to.

The detection classes are nuScenes' ten detection names in the order mmdetection3d and BEVDet use,
so label ids agree with their checkpoints.
"""

from __future__ import annotations

NUSCENES_DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

# The 23 categories of nuScenes v1.0 with a short description of our own.
NUSCENES_CATEGORIES = {
    "animal": "All animals.",
    "human.pedestrian.adult": "Adult pedestrian.",
    "human.pedestrian.child": "Child pedestrian.",
    "human.pedestrian.construction_worker": "Worker in a construction zone.",
    "human.pedestrian.personal_mobility": "Person on a scooter, skateboard or similar.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.stroller": "Stroller.",
    "human.pedestrian.wheelchair": "Wheelchair.",
    "movable_object.barrier": "Temporary road barrier.",
    "movable_object.debris": "Debris on the road.",
    "movable_object.pushable_pullable": "Objects a pedestrian can push or pull.",
    "movable_object.trafficcone": "Traffic cone.",
    "static_object.bicycle_rack": "Area where bicycles are parked.",
    "vehicle.bicycle": "Bicycle, with or without rider.",
    "vehicle.bus.bendy": "Articulated bus.",
    "vehicle.bus.rigid": "Rigid bus.",
    "vehicle.car": "Passenger car, van, SUV or pick-up.",
    "vehicle.construction": "Construction vehicle.",
    "vehicle.emergency.ambulance": "Ambulance.",
    "vehicle.emergency.police": "Police vehicle.",
    "vehicle.motorcycle": "Motorcycle or scooter, with or without rider.",
    "vehicle.trailer": "Trailer, towed or parked.",
    "vehicle.truck": "Truck.",
}

# Where each detection class comes from (the devkit's category_to_detection_name, inverted to one
# representative category that the simulator writes).
DETECTION_CLASS_TO_CATEGORY = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}

NUSCENES_ATTRIBUTES = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver, is stationary (e.g. at a light).",
    "vehicle.parked": "Vehicle is stationary with no intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is no rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The pedestrian is sitting or lying down.",
    "pedestrian.standing": "The pedestrian is standing.",
    "pedestrian.moving": "The pedestrian is moving.",
}

# The attributes valid for each detection class (empty: the class has none).
DETECTION_CLASS_ATTRIBUTES = {
    "car": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "truck": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "construction_vehicle": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "bus": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "trailer": ("vehicle.moving", "vehicle.stopped", "vehicle.parked"),
    "barrier": (),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "traffic_cone": (),
}

# nuScenes visibility bins: the share of an annotation visible over all six camera images.
NUSCENES_VISIBILITY_LEVELS = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

# BEVFusion's BEV map-segmentation classes (drawn from the nuScenes map expansion: geomim_hf.data.maps).
MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")

# Waymo's detection classes (its label types 1, 2 and 4; signs are not detected), in the order labels index.
WAYMO_CLASSES = ("vehicle", "pedestrian", "cyclist")
