"""A fingerprint of the data one split of a task reads: two runs with the same
fingerprint saw the same images with the same labels in the same order.

- folder: SHA-256 of the SHA-256s of the split's list file and of every image
  file it names, in list order (so a re-encoded JPEG changes it; a moved data folder does not);
- tfds: SHA-256 of the builder's dataset info (name, version, every split's
  example and shard counts) and of the VTAB split string and label rule: TFDS
  data cannot be read without decoding it all, its info pins what was prepared;
- digits: SHA-256 of the split's image and label arrays.

Hashing a folder split reads its images once; the answer is kept for the life of
the process (keyed by the list file's path, size and modification time), so a
sweep hashes each split once (and again when any of its files changed).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from elalora_vit.data.tasks import TaskLike

FORMATS = {
    "folder": "image files named by <split>.txt list files",
    "tfds": "tensorflow-datasets array_record (read without TensorFlow)",
    "digits": "scikit-learn digits arrays (8 x 8, offline)",
}
"""What each data source reads, as the protocol records it."""


def split_fingerprint(
    task: TaskLike, split: str, source: str, data_dir: str | Path, tfds_dir: str | Path | None = None
) -> str:
    """``sha256:<hex>`` of what ``split`` of ``task`` reads from ``source`` (see the module doc)."""
    if source == "digits":
        from elalora_vit.data.digits import digits_source

        arrays = digits_source(split)
        return _sha256(np.ascontiguousarray(arrays.images).tobytes(), np.asarray(arrays.labels, np.int64).tobytes())
    if source == "tfds":
        return _tfds_fingerprint(task, split, tfds_dir)
    from elalora_vit.data.folder import folder_source, task_dir

    list_path = task_dir(data_dir, task) / f"{split}.txt"
    files = [list_path, *(entry.path for entry in folder_source(data_dir, task, split).entries)]
    # Size and modification time of every file key the cache: any edited file is hashed again.
    stats = tuple((str(path), st.st_size, st.st_mtime_ns) for path in files for st in [path.stat()])
    return _files_sha256(stats)


@functools.lru_cache(maxsize=256)
def _files_sha256(stats: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in stats:
        digest.update(file_sha256(path).encode())
    return "sha256:" + digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tfds_fingerprint(task: Any, split: str, tfds_dir: str | Path | None) -> str:
    payload: dict[str, Any] = {"builder": task.tfds_name, "split": task.tfds_split(split), "label_rule": task.label_rule}
    try:
        import tensorflow_datasets as tfds

        info = tfds.builder(task.tfds_name, data_dir=None if tfds_dir is None else str(tfds_dir)).info
        payload["info"] = {
            "full_name": info.full_name,
            "splits": {
                name: {"num_examples": int(s.num_examples), "shard_lengths": [int(n) for n in s.shard_lengths]}
                for name, s in sorted(info.splits.items())
            },
        }
    except Exception as err:  # no prepared info to read: the fingerprint says so rather than failing the run
        payload["info"] = f"unavailable ({type(err).__name__})"
    return _sha256(json.dumps(payload, sort_keys=True).encode())


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return "sha256:" + digest.hexdigest()
