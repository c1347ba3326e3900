"""Evaluation images/s from the decoded-image cache against the lazy path, and what a
second run on the same task pays for its data.

    python benchmarks/image_cache.py            # ~1 minute on 2 CPU cores
    python benchmarks/image_cache.py --quick    # smoke run

A synthetic task in the VTAB-1k folder layout (JPEG images of --src-size pixels, as
``benchmarks/data_pipeline.py`` writes them) is loaded with ``load_task_data``:

- ``lazy``: no cache: every access decodes the JPEG, resizes it to --image-size
  (bicubic) and normalises it (``LazyDataset``), as evaluation did before the cache;
- ``cache``: ``cache_dir`` set: the split was decoded once into the cache; every access
  reads the memory-mapped uint8 pixels and normalises them (``CachedDataset``);
- ``cache, host side``: what the host does of that on a GPU: the uint8 read and one copy
  (``pin_memory``'s); the normalisation then runs on the GPU.

Both are read in full as evaluation reads them (batches of 64: the lazy path through a
``DataLoader`` with --workers decoding processes, the cache as memory-mapped slices
normalised batch-wise), alternating round by round, in this one process.  Then the same task is
loaded twice more with the cache, as two runs of a sweep would load it, counting the
images each run decodes and timing its load: the second run decodes none.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from data_pipeline import TASK, synthetic_images  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", type=int, default=None, help="test images written (default 400, --quick 24)")
    p.add_argument("--src-size", type=int, nargs=2, default=[384, 288], metavar=("W", "H"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=None, help="alternations (default 3, --quick 1)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.test = args.test or (24 if args.quick else 400)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def write_task(root: Path, args) -> Path:
    from elalora_vit.data.folder import write_task_dir

    size = tuple(args.src_size)
    sources = {"train800": synthetic_images(16, size, 0), "val200": synthetic_images(4, size, 1),
               "test": synthetic_images(args.test, size, 2)}
    return write_task_dir(root / TASK, sources, image_suffix=".jpg",
                          save_options={"format": "JPEG", "quality": 90}, progress=False)


def read_all(dataset, workers: int) -> float:
    """Seconds to read every image as evaluation reads it (``train/runtime.py: _eval_batches``)."""
    from elalora_vit.train.runtime import _eval_batches

    started = time.perf_counter()
    for _ in _eval_batches(dataset, 0, 1, 64, workers, torch.device("cpu")):
        pass
    return time.perf_counter() - started


def read_host_side(dataset) -> float:
    """Seconds the host spends on the cache path of a GPU evaluation: the uint8 batch read from
    the memory map and copied once (as ``pin_memory`` copies it); normalising is the GPU's."""
    started = time.perf_counter()
    for first in range(0, len(dataset), 64):
        pixels, labels = dataset.uint8_batch(torch.arange(first, min(first + 64, len(dataset))))
        pixels.clone(), labels.clone()
    return time.perf_counter() - started


def counted_load(data_root: Path, cache: Path, args) -> tuple[int, float]:
    """(images decoded, seconds) of one run's ``load_task_data`` with the cache."""
    from elalora_vit.data import load_task_data
    from elalora_vit.data import transforms

    calls = {"n": 0}
    original = transforms.Preprocess.resized

    def counting(self, image):
        calls["n"] += 1
        return original(self, image)

    transforms.Preprocess.resized = counting
    try:
        started = time.perf_counter()
        load_task_data(TASK, data_dir=data_root, image_size=args.image_size, progress=False, cache_dir=cache,
                       train_split="train800", eval_split="test")
        return calls["n"], time.perf_counter() - started
    finally:
        transforms.Preprocess.resized = original


def main(argv=None) -> dict:
    from elalora_vit.data import load_task_data

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="elalora-cache-bench-"))
    try:
        data_root = work / "vtab-1k"
        write_task(data_root, args)
        kwargs = dict(data_dir=data_root, image_size=args.image_size, progress=False, train_split="train800",
                      eval_split="test")
        first_decodes, first_s = counted_load(data_root, work / "runs-cache", args)
        second_decodes, second_s = counted_load(data_root, work / "runs-cache", args)
        lazy = load_task_data(TASK, **kwargs).eval
        cached = load_task_data(TASK, cache_dir=work / "runs-cache", **kwargs).eval
        times = {"lazy": [], "cache": [], "cache_host_side": []}
        for _ in range(args.rounds):
            for name, dataset in (("lazy", lazy), ("cache", cached)):
                times[name].append(read_all(dataset, args.workers))
            times["cache_host_side"].append(read_host_side(cached))
        rate = {name: args.test / B.median(ts) for name, ts in times.items()}
        result = {
            "machine": B.machine_info("cpu"), "images": args.test, "src_size": args.src_size,
            "image_size": args.image_size, "workers": args.workers, "threads": args.threads,
            "eval_images_per_s": {k: round(v, 1) for k, v in rate.items()},
            "cache_over_lazy": round(rate["cache"] / rate["lazy"], 1),
            "cache_host_side_over_lazy": round(rate["cache_host_side"] / rate["lazy"], 1),
            "first_run": {"decoded": first_decodes, "load_s": round(first_s, 3)},
            "second_run": {"decoded": second_decodes, "load_s": round(second_s, 3),
                           "decode_share": second_decodes / (first_decodes or 1)},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"evaluation, {args.test} images {args.src_size[0]}x{args.src_size[1]} JPEG -> {args.image_size} px, "
          f"{args.workers} workers, {args.threads} thread(s):")
    print(f"  lazy (decode per access): {rate['lazy']:8.1f} images/s")
    print(f"  from the cache:           {rate['cache']:8.1f} images/s  ({result['cache_over_lazy']:.1f}x)")
    print(f"  the cache, host side only: {rate['cache_host_side']:7.1f} images/s  "
          f"({result['cache_host_side_over_lazy']:.1f}x; a GPU run's host: uint8 read + one copy, normalised on the GPU)")
    print(f"first run on the task:  decoded {first_decodes} images, load {first_s:.2f} s (builds the cache)")
    print(f"second run on the task: decoded {second_decodes} images, load {second_s:.2f} s")
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
