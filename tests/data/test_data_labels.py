import numpy as np
import pytest

from elalora_vit.data import DataError
from elalora_vit.data.labels import (
    LABEL_RULES,
    bin_index,
    clevr_count_label,
    clevr_distance_label,
    dsprites_location_label,
    dsprites_orientation_label,
    kitti_distance_label,
    label_rule,
    plain_label,
    smallnorb_azimuth_label,
    smallnorb_elevation_label,
)


def clevr_example(depths):
    coords = np.array([[10.0, 20.0, depth] for depth in depths], dtype=np.float32).reshape(-1, 3)
    return {"objects": {"size": np.zeros(len(depths), dtype=np.int64), "pixel_coords": coords}}


def kitti_example(types, depths):
    location = np.array([[1.0, 1.5, depth] for depth in depths], dtype=np.float32).reshape(-1, 3)
    return {"objects": {"type": np.array(types, dtype=np.int64), "location": location}}


def test_plain_label():
    assert plain_label({"label": np.int64(7)}) == 7


@pytest.mark.parametrize("count, label", [(3, 0), (5, 2), (10, 7)])
def test_clevr_count_is_objects_minus_three(count, label):
    assert clevr_count_label(clevr_example([9.0] * count)) == label


@pytest.mark.parametrize(
    "depths, label",
    [
        ([12.0, 9.2], 3),  # closest 9.2: thresholds 0, 8, 8.5, 9 are below it
        ([7.9], 0),
        ([8.0], 0),  # strict: 8 is not below 8
        ([8.25, 30.0], 1),
        ([9.75], 4),
        ([50.0], 5),
    ],
)
def test_clevr_distance_bins_the_closest_object(depths, label):
    assert clevr_distance_label(clevr_example(depths)) == label


def test_clevr_distance_below_the_lowest_threshold_is_an_error():
    with pytest.raises(DataError, match="lowest threshold 0.0"):
        clevr_distance_label(clevr_example([0.0]))


@pytest.mark.parametrize(
    "types, depths, label",
    [
        ([3, 0, 2], [2.0, 15.0, 30.0], 1),  # pedestrian at 2 m ignored; closest vehicle 15 m
        ([1], [5.0], 0),
        ([0], [8.0], 0),  # strict: 8 is not below 8
        ([2], [25.0], 2),
        ([0], [999.5], 3),
        ([3, 4, 7], [2.0, 3.0, 4.0], 3),  # no vehicle -> 1000 -> above 999 -> 3
        ([], [], 3),  # no objects at all
    ],
)
def test_kitti_bins_the_closest_vehicle(types, depths, label):
    assert kitti_distance_label(kitti_example(types, depths)) == label


@pytest.mark.parametrize("x, label", [(0, 0), (1, 0), (5, 2), (31, 15)])
def test_dsprites_location_halves_x(x, label):
    assert dsprites_location_label({"label_x_position": np.int64(x)}) == label


@pytest.mark.parametrize("orientation, label", [(0, 0), (2, 0), (3, 1), (5, 2), (39, 15)])
def test_dsprites_orientation_divides_by_2_5(orientation, label):
    assert dsprites_orientation_label({"label_orientation": np.int64(orientation)}) == label


def test_smallnorb_rules_read_their_own_feature():
    example = {"label_azimuth": np.int64(17), "label_elevation": np.int64(8), "label_category": 1}
    assert smallnorb_azimuth_label(example) == 17
    assert smallnorb_elevation_label(example) == 8


def test_bin_index_picks_the_largest_threshold_below():
    assert bin_index(1000.0, (-100.0, 8.0, 20.0, 999.0)) == 3
    assert bin_index(-50.0, (-100.0, 8.0, 20.0, 999.0)) == 0


def test_label_rule_lookup():
    assert label_rule("kitti") is kitti_distance_label
    assert set(LABEL_RULES) >= {"label", "clevr_count", "clevr_dist", "kitti", "dsprites_loc",
                                "dsprites_ori", "smallnorb_azi", "smallnorb_ele"}
    with pytest.raises(DataError, match="unknown label rule 'nope'.*clevr_count"):
        label_rule("nope")

