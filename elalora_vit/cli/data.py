"""The data commands: ``prepare-vtab``, ``check-data`` and ``list-tasks``."""

from __future__ import annotations

import argparse


def _prepare_vtab(args: argparse.Namespace) -> int:
    from ..data import parse_task_list, prepare_vtab

    folders = prepare_vtab(
        parse_task_list(args.tasks),
        args.data_dir,
        args.tfds_dir,
        download=args.download,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    for folder in folders:
        print(folder)
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare-vtab",
        help="write VTAB-1k tasks from tensorflow-datasets into the folder layout",
        description=(
            "Turn prepared tensorflow-datasets data into the shared VTAB-1k folder layout "
            "(<data-dir>/<task>/{train800,val200,train800val200,test}.txt and images/). Reading "
            "prepared TFDS data (array_record files) needs no TensorFlow; --download runs tfds' "
            "download_and_prepare, which needs internet access and pip install tensorflow "
            "importlib_resources (and manual downloads for resisc45 and diabetic_retinopathy)."
        ),
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help="task names or aliases, groups (natural, specialized, structured) or 'all' (default), "
                        "separated by spaces or commas")
    p.add_argument("--data-dir", default="data/vtab-1k", help="where to write the folders (default data/vtab-1k)")
    p.add_argument("--tfds-dir", help="tensorflow-datasets data_dir holding the prepared builders")
    p.add_argument("--download", action="store_true", help="download and prepare missing TFDS data (needs pip install tensorflow importlib_resources)")
    p.add_argument("--overwrite", action="store_true", help="rewrite task folders that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare_vtab)


def _check_data(args: argparse.Namespace) -> int:
    from ..data.check import check_data, format_checks
    from ..data.tasks import selected_tasks

    checks = check_data(selected_tasks(args.tasks), source=args.data_source, data_dir=args.data_dir,
                        tfds_dir=args.tfds_dir, full=not args.fast)
    print(format_checks(checks))
    bad = [c.task for c in checks if not c.ok]
    print(f"\n{len(checks) - len(bad)} of {len(checks)} tasks pass" + (f"; violations in {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def _add_check_data(sub) -> None:
    p = sub.add_parser(
        "check-data",
        help="check prepared VTAB-1k data against the benchmark (sizes, labels, classes, decoding, test overlap)",
        description=(
            "Check each task's split sizes (800 / 200 / 1000 / the task's test size), that train800val200 is "
            "train800 then val200, that no list repeats an image, labels are in range and every class is in "
            "train800val200, that every image decodes and no test image is byte-identical to a training image; "
            "print a table per task with the list files' SHA-256. Exit code 1 on any violation."
        ),
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK", help="task names, groups or 'all' (default)")
    p.add_argument("--data-source", choices=("folder", "tfds"), default="folder", help="folder layout (default) or tfds")
    p.add_argument("--data-dir", default="data/vtab-1k", metavar="DIR", help="root of the folder layout (default data/vtab-1k)")
    p.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    p.add_argument("--fast", action="store_true", help="list files only: skip decoding and the test-overlap check")
    p.set_defaults(func=_check_data)


def _list_tasks(args: argparse.Namespace) -> int:
    from ..data import TASKS

    print(f"{'task':<22}{'group':<13}{'classes':>8}  tfds builder")
    for task in TASKS:
        aliases = f" (alias {', '.join(task.aliases)})" if task.aliases else ""
        print(f"{task.name:<22}{task.group:<13}{task.num_classes:>8}  {task.tfds_name}{aliases}")
    return 0


def _add_list_tasks(sub) -> None:
    tasks = sub.add_parser("list-tasks", help="list the 19 VTAB-1k tasks", description="List the VTAB-1k task registry.")
    tasks.set_defaults(func=_list_tasks)
