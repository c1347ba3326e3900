"""What a round's scores looked like, small enough for ``rank_history.json``.

Every round records, next to its decisions, the triplet scores S_i (METHOD.md
section 2) it decided on: the score of each pruned rank, of each rank grown at
the previous round (scored for the first time now: did the new capacity earn
its keep?), and quantiles of the other active ranks ("kept") per adapter kind.
The kind is the last part of an adapter's name (``q``, ``k``, ``v``, ``proj``,
``fc1``, ``fc2`` in a timm ViT; ``query``, ``dense`` ... elsewhere).  Full score
tensors are not kept: a round's summary is a few hundred numbers at most.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

QUANTILE_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def adapter_kind(name: str) -> str:
    """The kind of adapter ``name``: its last dotted part (``blocks.3.attn.qkv.v`` -> ``v``)."""
    return name.rsplit(".", 1)[-1]


def summarize_scores(
    scores: Tensor,
    masks: Tensor,
    names: Sequence[str],
    pruned: Iterable[tuple[int, int]],
    previously_grown: Iterable[tuple[int, int]] = (),
) -> dict[str, Any]:
    """The summary of one round's ``scores`` (adapters, capacity), taken before it acts.

    Args:
        scores: triplet scores; only the active slots of ``masks`` are read.
        masks: (adapters, capacity) bool, the slots active before the round.
        names: adapter names, one per row.
        pruned: ``(adapter, slot)`` pairs the round prunes.
        previously_grown: ``(adapter, slot)`` pairs the previous round activated.

    Returns:
        ``{"quantile_levels": [...], "kept": {kind: {"count": n, "quantiles": [...]}},
        "pruned": [[name, slot, score], ...], "new": [[name, slot, score], ...]}``;
        a slot grown at the previous round and pruned now counts as pruned.
    """
    pruned = {(int(a), int(s)) for a, s in pruned}
    new = {(int(a), int(s)) for a, s in previously_grown if bool(masks[a, s])} - pruned
    kept: dict[str, list[float]] = {}
    for adapter, slot in masks.nonzero().tolist():
        if (adapter, slot) not in pruned and (adapter, slot) not in new:
            kept.setdefault(adapter_kind(names[adapter]), []).append(float(scores[adapter, slot]))
    return {
        "quantile_levels": list(QUANTILE_LEVELS),
        "kept": {kind: _quantiles(values) for kind, values in kept.items()},
        "pruned": _listed(scores, names, pruned),
        "new": _listed(scores, names, new),
    }


def _quantiles(values: list[float]) -> dict[str, Any]:
    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)
    q = torch.quantile(torch.tensor(values, dtype=torch.float64), levels)
    return {"count": len(values), "quantiles": [float(v) for v in q]}


def _listed(scores: Tensor, names: Sequence[str], slots: set[tuple[int, int]]) -> list[list[Any]]:
    return [[names[a], s, float(scores[a, s])] for a, s in sorted(slots)]
