"""VTAB-1k label rules, applied to one decoded TFDS example.

A decoded example is a dict of numpy arrays as `tfds.data_source` returns it.
Sequence features are nested dicts of arrays, one row per object: the sizes of
the CLEVR objects are `example["objects"]["size"]` with shape (n,), their pixel
coordinates `example["objects"]["pixel_coords"]` with shape (n, 3).

The rules follow the VTAB reference code (google-research/task_adaptation);
`LABEL_RULES` maps the rule names used by `tasks.VTabTask.label_rule` to them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from elalora_vit.data.errors import DataError

Example = Mapping[str, Any]

CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
KITTI_NO_VEHICLE_DISTANCE = 1000.0
KITTI_VEHICLE_TYPES = 3  # object types 0, 1, 2 are Car, Van, Truck


def bin_index(value: float, thresholds: tuple[float, ...]) -> int:
    """The largest i with thresholds[i] < value (the VTAB binning of distances)."""
    below = [i for i, threshold in enumerate(thresholds) if threshold < value]
    if not below:
        raise DataError(
            f"value {value} is not above the lowest threshold {thresholds[0]} "
            f"of {list(thresholds)}, so it falls in no class; the example is "
            "outside what the VTAB rule covers."
        )
    return below[-1]


def plain_label(example: Example) -> int:
    """The example's own `label` feature."""
    return int(example["label"])


def clevr_count_label(example: Example) -> int:
    """Number of objects minus 3 (CLEVR scenes hold 3 to 10 objects -> 8 classes)."""
    return len(example["objects"]["size"]) - 3


def clevr_distance_label(example: Example) -> int:
    """Bin of the depth of the closest object, d = min(objects.pixel_coords[:, 2])."""
    depths = np.asarray(example["objects"]["pixel_coords"], dtype=np.float64).reshape(-1, 3)[:, 2]
    if depths.size == 0:
        raise DataError("CLEVR example has no objects, so clevr_dist has no closest object to bin.")
    return bin_index(float(depths.min()), CLEVR_DISTANCE_THRESHOLDS)


def kitti_distance_label(example: Example) -> int:
    """Bin of the distance to the closest vehicle (1000 when the image has none)."""
    objects = example["objects"]
    types = np.asarray(objects["type"]).reshape(-1)
    depths = np.asarray(objects["location"], dtype=np.float64).reshape(-1, 3)[:, 2]
    vehicle_depths = depths[types < KITTI_VEHICLE_TYPES]
    distance = min([KITTI_NO_VEHICLE_DISTANCE, *vehicle_depths.tolist()])
    return bin_index(distance, KITTI_DISTANCE_THRESHOLDS)


def dsprites_location_label(example: Example) -> int:
    """x position (32 values) folded into 16 classes: floor(label_x_position / 2)."""
    return int(example["label_x_position"]) // 2


def dsprites_orientation_label(example: Example) -> int:
    """Orientation (40 values) folded into 16 classes: floor(label_orientation / 2.5)."""
    return int(np.floor(int(example["label_orientation"]) / 2.5))


def smallnorb_azimuth_label(example: Example) -> int:
    """The azimuth class (18 values)."""
    return int(example["label_azimuth"])


def smallnorb_elevation_label(example: Example) -> int:
    """The elevation class (9 values)."""
    return int(example["label_elevation"])


LABEL_RULES: dict[str, Callable[[Example], int]] = {
    "label": plain_label,
    "clevr_count": clevr_count_label,
    "clevr_dist": clevr_distance_label,
    "kitti": kitti_distance_label,
    "dsprites_loc": dsprites_location_label,
    "dsprites_ori": dsprites_orientation_label,
    "smallnorb_azi": smallnorb_azimuth_label,
    "smallnorb_ele": smallnorb_elevation_label,
}


def label_rule(name: str) -> Callable[[Example], int]:
    """The label function registered under `name` in `LABEL_RULES`."""
    try:
        return LABEL_RULES[name]
    except KeyError:
        raise DataError(
            f"unknown label rule {name!r}; known rules: {', '.join(LABEL_RULES)}."
        ) from None

