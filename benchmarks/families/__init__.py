"""Task families of the transfer benchmark (``benchmarks/transfer.py``).

Every family adapts the same backbone, pre-trained on digits 0-4 (``digits.pretraining_splits``),
to a task it has not seen, with few labels: ``digits`` to the identity of digits 5-9 (a
natural-image-like task, as VTAB's natural group), ``counting`` to the number of dots in an
image (a structured task, as VTAB's clevr/count).  A family module gives ``NAME``,
``CLASSES`` (the adaptation task's class count), ``DESCRIPTION`` and
``adaptation_splits(shots_train, shots_val) -> {"train", "val", "test"}``, normalised with
the pre-training data's statistics (``digits.normalisation()``), as a backbone's
preprocessing is.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch


@dataclass
class Split:
    x: torch.Tensor  # (N, 1, 8, 8), normalised
    y: torch.Tensor  # (N,), 0 .. classes-1


def family(name: str) -> ModuleType:
    """The family module called ``name``."""
    from . import counting, digits

    families = {m.NAME: m for m in (digits, counting)}
    if name not in families:
        raise SystemExit(f"unknown task family {name!r}; choose from {sorted(families)}")
    return families[name]

