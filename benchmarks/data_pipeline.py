"""Images/s of the VTAB-1k folder loader, with and without the in-memory cache,
against what a training step consumes.

    python benchmarks/data_pipeline.py            # ~2 minutes on 2 CPU cores
    python benchmarks/data_pipeline.py --quick    # smoke run

A synthetic task in the VTAB-1k folder layout is written to a temporary
directory (train800 / val200 / test lists, JPEG images of --src-size pixels,
smooth random content: a natural-image task such as dtd or caltech101 is a few
hundred pixels a side), then loaded with ``elalora_vit.data.load_task_data``:

- ``lazy``: ``cache_train=False``: every access decodes the JPEG, resizes it to
  224 (bicubic) and normalises it (``LazyDataset``);
- ``cached``: ``cache_train=True``: decoded and resized once (timed separately as
  ``cache build``), then served from uint8 memory (``TensorCacheDataset``).

Both are read through a ``DataLoader`` (batch 32, shuffled, ``--workers``
processes), alternating round by round; a round reads ``--batches`` batches.
Consumption is the images/s of an ElaLoRA ViT-B/16 training step at 224 pixels
(forward, backward, AdamW, allocator), measured in the same process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

TASK = "dtd"  # any VTAB task name: the folder source checks labels against its class count


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=None, help="train800 images written (default 800, --quick 48)")
    p.add_argument("--src-size", type=int, nargs=2, default=[384, 288], metavar=("W", "H"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=None, help="batches per round (default 6, --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternations (default 5, --quick 2)")
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers to compare")
    p.add_argument("--consumer", default=None,
                   help="model:img:batch of the training step (default vit_base_patch16_224:224:4; 'none')")
    B.add_timing_args(p)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.train is None:
        args.train = 48 if args.quick else 800
    if args.batches is None:
        args.batches = 1 if args.quick else 6
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.consumer is None:
        args.consumer = "vit_small_patch16_224:64:4" if args.quick else "vit_base_patch16_224:224:4"
    B.apply_timing_args(args)
    if args.clock == "thread" and any(args.workers):
        p.error("--clock thread cannot see DataLoader worker processes; use --workers 0")
    return args


def synthetic_images(count: int, size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, int]]:
    """Smooth random colour fields plus noise: JPEG-compressible like photographs, not like white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    items = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        items.append((image, i % 47))
    return items


def write_task(root: Path, args) -> Path:
    from elalora_vit.data.folder import write_task_dir

    size = tuple(args.src_size)
    sources = {"train800": synthetic_images(args.train, size, 0),
               "val200": synthetic_images(max(args.train // 4, 1), size, 1),
               "test": synthetic_images(8, size, 2)}
    return write_task_dir(root / TASK, sources, image_suffix=".jpg",
                          save_options={"format": "JPEG", "quality": 90}, progress=False)


def loader_fn(dataset, args, workers: int):
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    state = {"it": iter(loader)}

    def read_batches():
        for _ in range(args.batches):
            try:
                x, _ = next(state["it"])
            except StopIteration:
                state["it"] = iter(loader)
                x, _ = next(state["it"])
            assert x.shape[1:] == (3, args.image_size, args.image_size)

    return read_batches


def consumption(args) -> dict | None:
    if args.consumer.lower() == "none":
        return None
    name, img, batch = args.consumer.split(":")
    img, batch = int(img), int(batch)
    variant = B.build_variant("elalora", name, img, rank=8)
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, B.NUM_CLASSES, (batch,))
    times = B.interleaved_times({"step": lambda: variant.train_step(x, y)}, rounds=3, warmup=1, clock=args.clock)
    step = B.median(times["step"])
    return {"model": name, "img_size": img, "batch": batch, "step_ms": 1e3 * step, "img_per_s": batch / step}


def main(argv=None) -> dict:
    args = parse_args(argv)
    B.setup_torch(args.threads)
    from elalora_vit.data import load_task_data

    tmp = Path(tempfile.mkdtemp(prefix="elalora-data-bench-"))
    try:
        B.log(f"[data_pipeline] writing {args.train} + {max(args.train // 4, 1)} + 8 JPEGs of "
              f"{args.src_size[0]}x{args.src_size[1]} to {tmp}")
        folder = write_task(tmp, args)
        megabytes = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20
        common = dict(source="folder", data_dir=tmp, image_size=args.image_size, progress=False)
        lazy = load_task_data(TASK, cache_train=False, **common).train
        clock = B.CLOCKS[args.clock]
        start = clock()
        cached = load_task_data(TASK, cache_train=True, **common).train
        build_s = clock() - start
        rows, fns = [], {}
        for workers in args.workers:
            fns[f"lazy, {workers} workers"] = loader_fn(lazy, args, workers)
            fns[f"cached, {workers} workers"] = loader_fn(cached, args, workers)
        B.log(f"[data_pipeline] {args.rounds} rounds x {args.batches} batches of {args.batch}")
        times = B.interleaved_times(fns, args.rounds, warmup=1, clock=args.clock)
        images_per_round = args.batch * args.batches
        consumer = consumption(args)
        for key in fns:
            row = {"loader": key, "img_per_s": images_per_round / B.median(times[key]),
                   "ms_per_batch": 1e3 * B.median(times[key]) / args.batches}
            if consumer:
                row["x_consumption"] = row["img_per_s"] / consumer["img_per_s"]
            rows.append(row)
        first = args.workers[0]
        speedup = B.paired_ratio(times, f"lazy, {first} workers", f"cached, {first} workers")
        result = {"benchmark": "data_pipeline", "machine": B.machine_info(),
                  "settings": {"train_images": len(lazy), "src_size": args.src_size, "jpeg_mib": megabytes,
                               "threads": args.threads, "clock": args.clock, "workers": args.workers,
                               "image_size": args.image_size, "batch": args.batch, "batches": args.batches,
                               "rounds": args.rounds},
                  "cache_build_s": build_s, "cache_build_img_per_s": len(cached) / build_s,
                  "cache_mib": cached.pixels.numel() / 2**20,
                  "cached_speedup": speedup, "rows": rows, "consumer": consumer}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n## VTAB folder loader: {len(lazy)} train JPEGs {args.src_size[0]}x{args.src_size[1]} "
          f"({megabytes:.1f} MiB) -> {args.image_size}px, batch {args.batch} ({args.clock} clock, "
          f"{args.threads} thread(s))")
    print(B.format_table(rows, [("loader", "loader", ""), ("img_per_s", "images/s (median)", ".0f"),
                                ("ms_per_batch", "ms/batch", ".1f"),
                                ("x_consumption", "x training consumption", ".1f")]))
    print(f"  cache build (decode + resize, once): {build_s:.2f} s = {result['cache_build_img_per_s']:.0f} images/s, "
          f"{result['cache_mib']:.0f} MiB uint8; cached / lazy throughput: x{speedup:.1f}")
    if consumer:
        print(f"  training consumption: {consumer['model']} img {consumer['img_size']} batch {consumer['batch']}: "
              f"{consumer['step_ms']:.0f} ms/step = {consumer['img_per_s']:.1f} images/s")
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
