"""The decoded-image cache: the lazy path's pixels exactly, built once across processes,
a killed build never used, a second load with no decoding."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from elalora_vit.data import get_task, load_task_data
from elalora_vit.data.cache import cached_split, entry_name
from elalora_vit.data.transforms import Preprocess
from tests.data.fixtures.make_tfds_fixtures import OUT

REPO = Path(__file__).resolve().parents[2]


def _items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_items(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(_items(a), _items(b)):
        assert ya == yb and torch.equal(xa, xb)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_folder_cache_serves_the_lazy_pixels_exactly(folder_root, kit, tmp_path, interpolation):
    kwargs = dict(data_dir=folder_root, image_size=16, interpolation=interpolation, progress=False,
                  mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    lazy = load_task_data(kit.task_name, **kwargs)
    cached = load_task_data(kit.task_name, cache_dir=tmp_path / "cache", **kwargs)
    _assert_same_items(cached.eval, lazy.eval)
    _assert_same_items(cached.train, lazy.train)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and all(f"16px-{interpolation}" in e for e in entries)


def test_tfds_cache_serves_the_lazy_pixels_exactly(tmp_path):
    kwargs = dict(source="tfds", tfds_dir=OUT / "array_record", image_size=24, progress=False,
                  train_split="train800", eval_split="val200")
    lazy = load_task_data("dtd", **kwargs)
    cached = load_task_data("dtd", cache_dir=tmp_path / "cache", **kwargs)
    _assert_same_items(cached.eval, lazy.eval)
    _assert_same_items(cached.train, lazy.train)


class CountingSource:
    """A folder source that counts its decodes."""

    def __init__(self, source):
        self.source, self.decodes = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.decodes += 1
        return self.source[index]


def test_second_load_decodes_nothing_and_an_edited_image_is_a_new_entry(folder_root, kit, tmp_path):
    from elalora_vit.data.fingerprint import split_fingerprint
    from elalora_vit.data.folder import folder_source

    task = get_task(kit.task_name)
    preprocess = Preprocess(16)

    def load():
        source = CountingSource(folder_source(folder_root, task, "test"))
        cached_split(source, preprocess, task=task.name, split="test", cache_dir=tmp_path,
                     fingerprint=split_fingerprint(task, "test", "folder", folder_root), progress=False)
        return source.decodes

    assert load() == kit.split_sizes["test"]
    assert load() == 0
    image = folder_root / kit.task_name / "images" / "test" / "000000.png"
    from PIL import Image

    Image.fromarray(kit.solid_image(200)).save(image)
    assert load() == kit.split_sizes["test"]  # another fingerprint: rebuilt, the old entry not read


BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from elalora_vit.data.cache import cached_split
    from elalora_vit.data.transforms import Preprocess
    import numpy as np

    class Slow:  # 40 images, each decode takes a while, so the builds overlap
        def __len__(self): return 40
        def __getitem__(self, i):
            time.sleep(float(sys.argv[2]))
            print("decode", flush=True)
            return np.full((9, 7, 3), i * 5, np.uint8), i % 3

    split = cached_split(Slow(), Preprocess(8), task="t", split="test", fingerprint="sha256:x",
                         cache_dir=sys.argv[1], progress=False)
    print("images", len(split), int(split.pixels[39].max()), flush=True)
    """
)


def _builder(cache: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD, str(cache), str(delay)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_building_one_entry_decode_it_once(tmp_path):
    builders = [_builder(tmp_path, 0.02) for _ in range(2)]
    outputs = [b.communicate(timeout=120)[0] for b in builders]
    assert [b.returncode for b in builders] == [0, 0], outputs
    decodes = [out.count("decode") for out in outputs]
    assert sorted(decodes) == [0, 40], outputs  # one built it, the other waited and read it
    assert all("images 40 195" in out for out in outputs)
    (entry,) = tmp_path.iterdir()
    assert json.loads((entry / "meta.json").read_text())["images"] == 40


def test_killed_build_leaves_nothing_used_and_is_rebuilt(tmp_path):
    killed = _builder(tmp_path, 0.05)
    for _ in range(10):  # killed mid-way, a few decodes in
        assert killed.stdout.readline().strip() == "decode"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (entry,) = tmp_path.iterdir()
    assert not (entry / "meta.json").exists() and not (entry / "pixels.npy").exists()
    started = time.monotonic()
    again = _builder(tmp_path, 0.0)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 0 and out.count("decode") == 40 and "images 40 195" in out, out
    assert time.monotonic() - started < 60
    assert not list(entry.glob(".*.tmp*"))  # the killed build's partial file was cleared
    assert entry.name == entry_name("t", "test", Preprocess(8), "sha256:x")


def test_an_unusable_cache_folder_falls_back_to_decoding_with_a_warning(folder_root, kit, tmp_path):
    (tmp_path / "file").write_text("a file where the cache folder must go")
    with pytest.warns(UserWarning, match="image cache is not usable .*decoding images per access instead"):
        data = load_task_data(kit.task_name, data_dir=folder_root, image_size=16, progress=False,
                              cache_dir=tmp_path / "file" / "cache")
    lazy = load_task_data(kit.task_name, data_dir=folder_root, image_size=16, progress=False)
    _assert_same_items(data.eval, lazy.eval)
