import dataclasses

import pytest

from elalora_vit.data import GROUPS, SPLITS, TASKS, DataError, UnknownTaskError, get_task, task_names
from elalora_vit.data.errors import UnknownSplitError
from elalora_vit.data.labels import LABEL_RULES

TABLE_ORDER = [
    "cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
    "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy",
    "clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
    "smallnorb_azi", "smallnorb_ele",
]


def test_tasks_follow_the_vtab_table_order():
    assert task_names() == TABLE_ORDER
    assert [task.name for task in TASKS] == TABLE_ORDER


def test_groups_partition_the_tasks():
    assert list(GROUPS) == ["natural", "specialized", "structured"]
    assert [len(names) for names in GROUPS.values()] == [7, 4, 8]
    assert sum(GROUPS.values(), ()) == tuple(TABLE_ORDER)
    assert all(get_task(name).group == group for group, names in GROUPS.items() for name in names)


@pytest.mark.parametrize(
    "name, num_classes, tfds_name",
    [
        ("cifar", 100, "cifar100:3.*.*"),
        ("sun397", 397, "sun397/tfds:4.*.*"),
        ("eurosat", 10, "eurosat/rgb:2.*.*"),
        ("diabetic_retinopathy", 5, "diabetic_retinopathy_detection/btgraham-300:3.*.*"),
        ("clevr_count", 8, "clevr:3.*.*"),
        ("clevr_dist", 6, "clevr:3.*.*"),
        ("dmlab", 6, "dmlab:2.0.1"),
        ("kitti", 4, "kitti:3.*.*"),
        ("dsprites_ori", 16, "dsprites:2.*.*"),
        ("smallnorb_azi", 18, "smallnorb:2.*.*"),
        ("smallnorb_ele", 9, "smallnorb:2.*.*"),
    ],
)
def test_task_facts(name, num_classes, tfds_name):
    task = get_task(name)
    assert task.num_classes == num_classes
    assert task.tfds_name == tfds_name


def test_split_strings_and_their_union():
    cifar = get_task("cifar")
    assert (cifar.train800, cifar.val200, cifar.test) == ("train[:800]", "train[45000:45200]", "test")
    assert cifar.train800val200 == "train[:800]+train[45000:45200]"
    assert get_task("dtd").tfds_split("train800val200") == "train[:800]+validation[:200]"
    assert get_task("eurosat").tfds_split("test") == "train[21600:]"
    assert get_task("resisc45").tfds_split("val200") == "train[18900:19100]"
    assert get_task("dsprites_loc").tfds_split("test") == "train[663552:]"
    assert get_task("smallnorb_ele").tfds_split("val200") == "test[:200]"
    assert get_task("smallnorb_ele").tfds_split("test") == "test[50%:]"
    assert get_task("clevr_dist").tfds_split("test") == "validation"
    for task in TASKS:
        assert task.tfds_split("train800val200") == f"{task.train800}+{task.val200}"


def test_unknown_split_is_a_clear_error():
    with pytest.raises(UnknownSplitError, match="train800, val200, train800val200, test"):
        get_task("cifar").tfds_split("validation")
    assert issubclass(UnknownSplitError, DataError)


def test_label_and_image_rules_are_assigned():
    assert all(task.label_rule in LABEL_RULES for task in TASKS)
    assert get_task("kitti").label_rule == "kitti"
    assert get_task("cifar").label_rule == "label"
    grayscale = {task.name for task in TASKS if task.grayscale}
    assert grayscale == {"dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele"}
    assert {task.name for task in TASKS if task.pixel_scale == 255} == {"dsprites_loc", "dsprites_ori"}


@pytest.mark.parametrize("alias, name", [("cifar100", "cifar"), ("oxford_pet", "oxford_iiit_pet"),
                                          ("CIFAR", "cifar"), (" Oxford_Pet ", "oxford_iiit_pet"),
                                          ("KITTI", "kitti")])
def test_get_task_accepts_aliases_in_any_case(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_every_valid_name():
    with pytest.raises(UnknownTaskError) as caught:
        get_task("cifar10")
    message = str(caught.value)
    assert "'cifar10'" in message
    assert all(name in message for name in TABLE_ORDER)
    assert "cifar100 -> cifar" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DataError)


def test_tasks_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("cifar").num_classes = 10


def test_splits_constant():
    assert SPLITS == ("train800", "val200", "train800val200", "test")
