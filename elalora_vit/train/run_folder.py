"""May a run start in its output folder, and how: the rules that keep a run's files
from being overwritten by accident.

- a folder holding a finished run (``result.json``) is returned as it is with
  ``--resume`` and the same settings; with other settings, or without ``--resume``,
  the run is refused (a finished run is never continued with new settings);
- a folder holding an unfinished run (``checkpoint.pt``, or epochs in
  ``metrics.jsonl``) is continued with ``--resume``, replaced with ``--overwrite``,
  and refused otherwise, saying which of the two to use;
- ``--resume`` with no checkpoint says so in one line and starts a fresh run (so
  the same command starts a run and continues it after an interruption);
- ``--overwrite`` deletes the run's own files (never anything else in the folder)
  and starts afresh.
"""

from __future__ import annotations

from ..config import ConfigInputError, read_yaml_file

import logging
from typing import Any

import yaml

from .errors import TrainingError
from .run_files import RunFiles

log = logging.getLogger(__name__)

FINISHED, RESUME, FRESH, OVERWRITE = "finished", "resume", "fresh", "overwrite"
NOTHING_TO_RESUME = "nothing to resume"  # --resume without a checkpoint: a fresh run, said in one line

# Settings that change nothing in what a run computes: a finished run is returned
# again when only these differ.
COSMETIC_KEYS = ("progress", "output_dir", "data.num_workers", "data.cache", "data.cache_dir")


def run_folder_action(files: RunFiles, config: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """What ``train`` does with ``files.root``: FINISHED (return the saved result),
    RESUME (continue from the checkpoint), FRESH, NOTHING_TO_RESUME (fresh, after
    ``resume`` found no checkpoint) or OVERWRITE (delete the run's files
    first, see :func:`clear_run_files`).

    Raises:
        TrainingError: the folder holds a run these flags would overwrite or change.
    """
    if resume and overwrite:
        raise TrainingError("--resume continues the run in the output folder and --overwrite deletes it; pass one of them")
    if overwrite:
        return OVERWRITE if holds_run(files) else FRESH
    if files.result.exists():
        if not resume:
            raise TrainingError(
                f"{files.root} already holds a finished run ({files.result.name}); choose another --output, "
                "pass --overwrite to replace it, or --resume to get its result back"
            )
        check_finished_settings(files, config)
        return FINISHED
    if resume:
        return RESUME if files.checkpoint.exists() else NOTHING_TO_RESUME
    if holds_run(files):
        raise TrainingError(
            f"{files.root} holds an unfinished run ({describe_unfinished(files)}); continue it with --resume, "
            "or pass --overwrite to delete it and start afresh"
        )
    return FRESH


def holds_run(files: RunFiles) -> bool:
    """Whether the folder holds something of a run worth keeping: a result, a
    checkpoint, or finished epochs in metrics.jsonl."""
    return files.result.exists() or files.checkpoint.exists() or metrics_lines(files) > 0


def metrics_lines(files: RunFiles) -> int:
    try:
        return sum(1 for line in files.metrics.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def describe_unfinished(files: RunFiles) -> str:
    parts = [files.checkpoint.name] if files.checkpoint.exists() else []
    epochs = metrics_lines(files)
    if epochs:
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''} in {files.metrics.name}")
    return ", ".join(parts)


def check_finished_settings(files: RunFiles, config: dict[str, Any]) -> None:
    """Refuse ``--resume`` of a finished run with settings other than its own."""
    try:
        saved = read_yaml_file(files.config)
    except (OSError, ConfigInputError):
        return  # nothing to compare with; the saved result is all there is
    changed = setting_differences(saved if isinstance(saved, dict) else {}, config)
    if changed:
        raise TrainingError(
            f"{files.root} holds a finished run, and --resume does not continue a finished run with new "
            f"settings ({'; '.join(changed[:6])}). Start the new run in another folder (--output DIR), "
            "or pass --overwrite instead of --resume to replace the finished one"
        )


def setting_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting (dotted) that differs, cosmetic ones left out."""
    current = yaml.safe_load(yaml.safe_dump(current, sort_keys=False))  # tuples read back as lists
    old, new = flatten(saved), flatten(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in COSMETIC_KEYS and old.get(key) != new.get(key)
    ]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "kwargs":  # model.kwargs is one setting
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def clear_run_files(files: RunFiles) -> None:
    """Delete the files a run writes (``--overwrite``); other files in the folder stay."""
    for path in (files.result, files.checkpoint, files.metrics, files.config, files.history,
                 files.heatmap, files.adapter, files.weights):
        path.unlink(missing_ok=True)
