"""The report's group-means figure: a group without results says so in its own slot."""

from __future__ import annotations

import pytest

from elalora_vit.sweep import collect_results
from elalora_vit.sweep.figures import group_means_figure
from tests.test_sweep import fake_result


@pytest.mark.parametrize("accuracies", [(80.0, 75.0), (99.0, 98.5)])
def test_no_results_labels_sit_in_their_groups_slot(tmp_path, accuracies):
    import matplotlib.pyplot as plt

    fake_result(tmp_path, "kitti", "elalora", 0, accuracies[0])
    fake_result(tmp_path, "kitti", "lora", 0, accuracies[1])
    fig = group_means_figure(collect_results(tmp_path))
    fig.canvas.draw()
    ax = fig.axes[0]
    ticks = {label.get_text(): tick for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())}
    labels = [t for t in ax.texts if t.get_text() == "no results"]
    assert len(labels) == 2  # natural and specialized have no runs
    axes_box = ax.get_window_extent()
    for text, group in zip(labels, ("natural", "specialized")):
        box = text.get_window_extent()
        slot_x = ax.transData.transform((ticks[group], 0))[0]
        slot_width = ax.transData.transform((ticks[group] + 0.5, 0))[0] - slot_x
        assert abs((box.x0 + box.x1) / 2 - slot_x) < 0.1 * slot_width, group
        assert axes_box.y0 <= box.y0 < box.y1 <= axes_box.y0 + 0.25 * axes_box.height, "just above the x axis"
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1
    plt.close(fig)
