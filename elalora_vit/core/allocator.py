"""The rank allocators: when and where ranks are pruned and expanded.

:class:`RankAllocator` is ElaLoRA (METHOD.md sections 3-5): every ``t_adjust``
steps of the adjustment phase it prunes the ``b_t`` weakest ranks of the model
and gives as many new ranks to the adapters whose weakest ranks still score
highest, so the total rank stays constant while capacity flows to the layers
that matter.  :class:`AdaLoRAAllocator` is the AdaLoRA baseline on the same
adapters: prune-only, down a cubic budget schedule.

Typical use, after ``optimizer.step()`` and before ``optimizer.zero_grad()``::

    alloc = RankAllocator(model, config, total_steps=T)
    ...
    optimizer.step()
    alloc.step(optimizer)

With ``torch.amp.GradScaler``, call ``scaler.step(optimizer); scaler.update()``
first: ``scaler.step`` unscales the gradients in place, so the scores see true
gradients, and a step whose gradients overflowed (inf/NaN) is skipped by the
allocator as it is by the scaler.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import ElaLoRAConfig
from .importance import ImportanceTracker
from .layer import SVDLinear, find_adapters
from .optim_state import reset_optimizer_slot
from .schedule import adjustment_progress, check_schedule, is_adjustment_step, ranks_to_move, scores_are_updated
from .score_summary import summarize_scores
from .watch import counts_of


@dataclass
class RoundRecord:
    """What one adjustment round did."""

    step: int
    b: int
    pruned: list[str] = field(default_factory=list)
    expanded: list[str] = field(default_factory=list)
    shortfall: int = 0  # ranks that could not be moved because adapters were at capacity
    rank_pattern: dict[str, int] = field(default_factory=dict)
    # The scores the round decided on (core.score_summary.summarize_scores), and under
    # "grown" the [adapter, slot] pairs it activated; {} in histories of older versions.
    scores: dict[str, Any] = field(default_factory=dict)

    def net_moved(self) -> int:
        """Ranks that ended the round in another adapter: one pruned from an adapter
        and re-grown in the same adapter in the same round is no move."""
        change = Counter(self.expanded)
        change.subtract(Counter(self.pruned))
        return sum(n for n in change.values() if n > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "b": self.b,
            "pruned": list(self.pruned),
            "expanded": list(self.expanded),
            "shortfall": self.shortfall,
            "rank_pattern": dict(self.rank_pattern),
            "scores": dict(self.scores),
        }


class StepsPastScheduleWarning(UserWarning):
    """The allocator was stepped more often than its ``total_steps``."""


class RankAllocator:
    """Tracks importance and runs ElaLoRA's prune-and-expand rounds on every
    :class:`SVDLinear` adapter of ``model``.

    Only the adapters count: an excluded part of a split layer (``patch_model``'s
    ``exclude``) is in no candidate list and no budget, and never gains a rank.

    Args:
        model: a model patched by :func:`patch_model` (wrappers such as DDP or
            ``torch.compile`` are looked through).
        config: the :class:`ElaLoRAConfig` the model was patched with.
        total_steps: ``T``, the number of optimizer steps of the run.
    """

    def __init__(self, model: nn.Module, config: ElaLoRAConfig, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        check_schedule(config, total_steps)
        adapters = find_adapters(model, SVDLinear)
        if not adapters:
            raise ValueError("the model has no SVD adapters: call patch_model(model, targets, config) first")
        self.layers = list({id(a.layer): a.layer for a in adapters}.values())  # model order, once each
        layer_index = {id(layer): li for li, layer in enumerate(self.layers)}
        self.adapter_names: list[str] = [a.name for a in adapters]
        self._owner = [(layer_index[id(a.layer)], a.part) for a in adapters]  # adapter index -> (layer index, part)
        # Rows of the layers' stacked parts that are adapters: excluded parts (find_adapters
        # leaves them out) are no row of the score or mask matrices, so no round can touch them.
        first_row = [0]
        for layer in self.layers:
            first_row.append(first_row[-1] + layer.n_parts)
        self._rows = torch.tensor([first_row[li] + part for li, part in self._owner], dtype=torch.long)
        self.tracker = ImportanceTracker(self.layers, config.beta1, config.beta2)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self.skipped_steps = 0
        self.history: list[RoundRecord] = []
        self.initial_total_rank = self.total_rank()
        self._counts = counts_of(self.layers)  # what save_adapters records, and the no-op warning reads

    # ----------------------------------------------------------------- queries
    def rank_pattern(self) -> dict[str, int]:
        """Active rank of every adapter, by name."""
        ranks = self._masks().sum(dim=1).tolist()
        return dict(zip(self.adapter_names, (int(r) for r in ranks)))

    def total_rank(self) -> int:
        return int(self._masks().sum())

    def scores(self) -> Tensor:
        """Triplet scores, shape (adapters, capacity); inactive slots are +inf."""
        scores = self.tracker.scores().cpu()[self._rows]
        return scores.masked_fill(~self._masks(), math.inf)

    def _masks(self) -> Tensor:
        """(adapters, capacity) bool: the active slots of every adapter (excluded parts are no row)."""
        return torch.cat([layer.rank_mask.detach().cpu() for layer in self.layers])[self._rows]

    # ------------------------------------------------------------------- step
    def step(self, optimizer: torch.optim.Optimizer | None = None, *, skipped: bool | Tensor = False,
             finite_checked: bool = False) -> RoundRecord | None:
        """Advance one optimizer step: update importance, and run a round when one is due.

        ``optimizer`` is needed to reset the moments of the slots a round changes;
        without it the optimizer state of changed slots is left stale.
        ``skipped=True`` says the training loop skipped this step (a non-finite loss
        or gradient anywhere): the clock advances, the scores learn nothing from it.
        ``skipped`` may also be a 0-dim bool tensor on the device (the loop's own finite
        flag, e.g. the one that skips a fused AdamW step through ``found_inf``): the scores
        then mask the step on the device, and nothing here reads it.
        ``finite_checked=True`` says ``skipped`` already covers this step's gradients being
        finite, so the scores skip their own check (one reduction on the device fewer).
        Returns the round's record, or None when no round ran.

        Under gradient accumulation with accelerate (``accelerator.accumulate(model)``),
        pass the prepared optimizer: on micro-batches where it did not step
        (``sync_gradients`` false) this is a no-op, so the allocator counts optimizer steps,
        as its schedule does, not micro-batches.
        """
        gradient_state = getattr(optimizer, "gradient_state", None)  # accelerate's AcceleratedOptimizer
        if gradient_state is not None and not gradient_state.sync_gradients:
            return None
        t = self._advance(skipped, finite_checked)
        if not is_adjustment_step(t, self.total_steps, self.config):
            return None
        b = ranks_to_move(t, self.total_steps, self.config)
        if b <= 0:
            return None
        record = self.adjust(b, optimizer)
        self.history.append(record)
        self._publish_counts()
        return record

    def _publish_counts(self) -> None:
        for counts in self._counts:
            counts.allocator_steps = self.step_count
            counts.rounds = len(self.history)

    def _advance(self, skipped: bool | Tensor, finite_checked: bool = False) -> int:
        """Count one step and fold its gradients into the scores (unless not finite)."""
        self.step_count += 1
        t = self.step_count
        if t == self.total_steps + 1:  # once: the schedule ended, nothing more will move
            warnings.warn(
                f"RankAllocator: step {t} is past total_steps={self.total_steps}; the schedule has ended, so no "
                "rank moves any more. Pass the run's real number of optimizer steps as total_steps (with "
                "gradient accumulation, optimizer steps, not micro-batches: step the allocator only when the "
                "optimizer stepped)", StepsPastScheduleWarning, stacklevel=3)
        self._publish_counts()
        if not scores_are_updated(t, self.total_steps, self.config):
            return t
        if isinstance(skipped, Tensor):  # the loop's device-side flag: masked there, never read here
            folded = self.tracker.update(check_finite=not finite_checked, valid=~skipped)
        elif skipped:
            self._skipped_on_host += 1
            return t
        else:
            folded = self.tracker.update(check_finite=not finite_checked)
        # Counted on the device: a read of ``folded`` would stall the host until a GPU drains.
        self._scored += 1
        self._folded = folded.long() if self._folded is None else self._folded + folded
        return t

    @property
    def skipped_steps(self) -> int:
        """Steps whose gradients the scores did not take in (skipped by the loop, or not
        finite). Reading it reads a device value: do it at logging points, not every step."""
        folded = 0 if self._folded is None else int(self._folded)
        return self._skipped_on_host + self._scored - folded

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped_on_host, self._scored, self._folded = int(value), 0, None

    @torch.no_grad()
    def adjust(self, b: int, optimizer: torch.optim.Optimizer | None = None) -> RoundRecord:
        """One prune-and-expand round moving up to ``b`` ranks (METHOD.md section 4)."""
        scores = _same_on_every_process(self.scores())
        masks = self._masks()
        prune, grow, shortfall = plan_round(scores, masks, self.config.k, b, self.layers[0].capacity)
        record = RoundRecord(step=self.step_count, b=b, shortfall=shortfall)
        record.scores = summarize_scores(scores, masks, self.adapter_names, prune, self._grown_last_round())
        for adapter, slot in prune:
            self._prune_slot(adapter, slot, optimizer)
            record.pruned.append(self.adapter_names[adapter])
        record.scores["grown"] = []
        for adapter in grow:
            slot = self._expand(adapter, optimizer)
            record.expanded.append(self.adapter_names[adapter])
            record.scores["grown"].append([self.adapter_names[adapter], slot])
        record.rank_pattern = self.rank_pattern()
        return record

    def _grown_last_round(self) -> list[tuple[int, int]]:
        """``(adapter, slot)`` pairs the last round activated (read from the history, so
        a resumed run knows them too)."""
        if not self.history:
            return []
        index = {name: i for i, name in enumerate(self.adapter_names)}
        return [(index[name], int(slot)) for name, slot in self.history[-1].scores.get("grown", []) if name in index]

    @torch.no_grad()
    def _prune_slot(self, adapter: int, slot: int, optimizer) -> None:
        li, part = self._owner[adapter]
        layer = self.layers[li]
        layer.rank_mask[part, slot] = False
        layer.lora_theta[part, slot] = 0.0
        self._reset_slot_state(li, part, slot, optimizer, grown=False)

    @torch.no_grad()
    def _expand(self, adapter: int, optimizer) -> int:
        """Activate the first free slot and return it.  Q's new row is a random unit vector
        orthogonal to the active rows (Gram-Schmidt).  With ``init="lora"`` the rank starts as
        LoRA's do: P's column 0, lambda = 1; otherwise P's column is likewise orthogonal to the
        active ones and lambda = 0.  Either way the function does not jump."""
        li, part = self._owner[adapter]
        layer = self.layers[li]
        if layer.is_excluded(part):  # not an adapter: never a row of a round; refused for any other caller
            raise ValueError(f"part {layer.part_names[part]!r} of {self.adapter_names[adapter]!r} is excluded")
        mask = layer.rank_mask[part]
        slot = int((~mask).nonzero()[0])
        active = layer.active_slots(part)
        Q, P = layer.lora_A[part], layer.lora_B[part]
        Q[slot] = _orthogonal_unit_vector(Q[active], self.generator).to(Q)
        if self.config.init == "lora":
            P[:, slot] = 0.0
            layer.set_lambdas(1.0, (part, slot))
        else:
            P[:, slot] = _orthogonal_unit_vector(P[:, active].T, self.generator).to(P)
            layer.lora_theta[part, slot] = 0.0
        mask[slot] = True
        self._reset_slot_state(li, part, slot, optimizer, grown=True)
        return slot

    def _reset_slot_state(self, li: int, part: int, slot: int, optimizer, *, grown: bool) -> None:
        """Fresh importance and optimizer state for a changed slot.  A grown slot's
        second moments start at the mean of the part's other active slots
        (``optim_state`` explains why); a pruned slot's state is all zero."""
        layer = self.layers[li]
        self.tracker.reset_slot(li, part, slot)
        like_rows = like_columns = None
        if grown:
            others = layer.active_slots(part)
            others = others[others != slot]
            like_rows, like_columns = (part, others), (part, slice(None), others)
        reset_optimizer_slot(optimizer, layer.lora_A, (part, slot), like_rows, dim=0)
        reset_optimizer_slot(optimizer, layer.lora_theta, (part, slot), like_rows, dim=0)
        reset_optimizer_slot(optimizer, layer.lora_B, (part, slice(None), slot), like_columns, dim=1)

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a resumed run to make the same decisions.

        The rank masks and factors live in the model's own state dict.
        """
        return {
            "kind": type(self).__name__,
            "config": self.config.to_dict(),
            "total_steps": self.total_steps,
            "adapter_names": list(self.adapter_names),
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
            "generator": self.generator.get_state(),
            "importance": self.tracker.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "initial_total_rank": self.initial_total_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind", type(self).__name__) != type(self).__name__:
            raise ValueError(f"allocator state is for a {state['kind']}, not a {type(self).__name__}")
        if list(state["adapter_names"]) != self.adapter_names:
            theirs, mine = set(state["adapter_names"]), set(self.adapter_names)
            diff = sorted(theirs ^ mine)[:5]
            raise ValueError(
                "allocator state was saved for different adapters "
                f"({len(theirs)} saved vs {len(mine)} here; first differences: {diff})"
            )
        if int(state["total_steps"]) != self.total_steps:
            raise ValueError(
                f"allocator state was saved for total_steps={state['total_steps']}, "
                f"this run has total_steps={self.total_steps}"
            )
        self.tracker.load_state_dict(state["importance"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step_count"])
        self.skipped_steps = int(state["skipped_steps"])
        self.history = [RoundRecord(**r) for r in state["history"]]
        self.initial_total_rank = int(state["initial_total_rank"])
        self._publish_counts()


def plan_round(
    scores: Tensor, masks: Tensor, k: int, b: int, capacity: int
) -> tuple[list[tuple[int, int]], list[int], int]:
    """Decide one ElaLoRA round from the score matrix (pure function, no side effects).

    Args:
        scores: (adapters, capacity) triplet scores; inactive slots are ignored.
        masks: (adapters, capacity) bool, active slots.
        k: candidates offered per adapter.
        b: ranks to move.
        capacity: slots per adapter.

    Returns:
        ``(prune, grow, shortfall)``: the ``(adapter, slot)`` pairs to prune, the
        adapters to grow (one new rank per entry, an adapter may appear twice),
        and how many of the ``b`` ranks could not be moved.

    Each adapter offers its ``min(k, rank - 1)`` weakest active ranks as prune
    candidates (so no adapter drops to rank 0) and its ``min(k, rank)`` weakest
    as expansion evidence (so a rank-1 adapter still competes for growth).  The
    ``n`` lowest prune candidates of the pool are pruned; walking the evidence
    from the highest score down, each candidate grows its owner unless the owner
    is at capacity, in which case the next candidate gets the rank.  ``n`` starts
    at ``b`` and is lowered one at a time until as many ranks can be grown as are pruned, so
    the total rank never changes.  Ties are broken by adapter and slot order.
    """
    ranks = masks.sum(dim=1)
    order = scores.masked_fill(~masks, math.inf).argsort(dim=1, stable=True)  # weakest first
    prune_pool: list[tuple[float, int, int]] = []
    evidence: list[tuple[float, int, int]] = []
    for adapter in range(scores.shape[0]):
        r = int(ranks[adapter])
        for j in range(min(k, r)):
            slot = int(order[adapter, j])
            entry = (float(scores[adapter, slot]), adapter, slot)
            evidence.append(entry)
            if j < r - 1:
                prune_pool.append(entry)
    prune_pool.sort(key=lambda e: (e[0], e[1], e[2]))
    evidence.sort(key=lambda e: (-e[0], e[1], e[2]))

    for n in range(min(b, len(prune_pool)), 0, -1):
        prune = [(a, s) for _, a, s in prune_pool[:n]]
        grow = _grow_owners(evidence, prune, ranks, capacity, n)
        if len(grow) == n:
            return prune, grow, b - n
    return [], [], b


def _grow_owners(evidence, prune, ranks: Tensor, capacity: int, n: int) -> list[int]:
    pruned_slots = set(prune)
    room = {a: capacity - int(ranks[a]) for _, a, _ in evidence}
    for a, _ in prune:
        room[a] += 1
    grow: list[int] = []
    for _, adapter, slot in evidence:
        if len(grow) == n:
            break
        if (adapter, slot) in pruned_slots or room[adapter] <= 0:
            continue
        room[adapter] -= 1
        grow.append(adapter)
    return grow


def _orthogonal_unit_vector(rows: Tensor, generator: torch.Generator) -> Tensor:
    """A random unit vector orthogonal to the rows of ``rows`` (r, d) (Gram-Schmidt)."""
    d = rows.shape[1]
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    if rows.shape[0] and rows.shape[0] < d:
        basis, _ = torch.linalg.qr(rows.detach().to(dtype=torch.float64, device="cpu").T)
        for _ in range(2):  # twice is enough for numerical orthogonality
            v = v - basis @ (basis.T @ v)
    return (v / v.norm()).float()


def _same_on_every_process(scores: Tensor) -> Tensor:
    """In a distributed run, every process takes rank 0's scores, so all make the same decisions."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        scores = scores.to(device)
        dist.broadcast(scores, src=0)
        scores = scores.cpu()
    return scores


class AdaLoRAAllocator(RankAllocator):
    """AdaLoRA's budget schedule on the same adapters (the baseline).

    The total rank falls from its initial value to ``target_rank`` per adapter
    along ``target + (initial - target) * (1 - progress)^3``; at every adjustment
    step the globally weakest ranks are pruned down to the budget.  Pruned
    ranks never come back (no expansion).  An adapter may reach rank 0.
    """

    def __init__(self, model: nn.Module, config: ElaLoRAConfig, total_steps: int, target_rank: int):
        super().__init__(model, config, total_steps)
        if not 0 <= target_rank <= config.rank:
            raise ValueError(f"invalid target_rank {target_rank}: expected 0 <= target_rank <= rank ({config.rank})")
        self.target_rank = target_rank
        self.target_total_rank = target_rank * len(self.adapter_names)

    def budget(self, step: int) -> int:
        progress = adjustment_progress(step, self.total_steps, self.config)
        extra = self.initial_total_rank - self.target_total_rank
        return self.target_total_rank + int(extra * (1.0 - progress) ** 3)

    def step(self, optimizer: torch.optim.Optimizer | None = None, *, skipped: bool | Tensor = False,
             finite_checked: bool = False) -> RoundRecord | None:
        t = self._advance(skipped, finite_checked)
        last_adjust = self.total_steps - self.config.stabilize_steps
        due = is_adjustment_step(t, self.total_steps, self.config) or t == last_adjust
        if not due or t <= self.config.warmup_steps:
            return None
        excess = self.total_rank() - self.budget(t)
        if excess <= 0:
            return None
        record = self.prune_to_budget(excess, optimizer)
        self.history.append(record)
        self._publish_counts()
        return record

    @torch.no_grad()
    def prune_to_budget(self, excess: int, optimizer=None) -> RoundRecord:
        grid = _same_on_every_process(self.scores())
        order = grid.flatten().argsort(stable=True)[:excess]
        capacity = self.layers[0].capacity
        prune = [divmod(flat, capacity) for flat in order.tolist()]
        record = RoundRecord(step=self.step_count, b=excess)
        record.scores = summarize_scores(grid, self._masks(), self.adapter_names, prune)
        for adapter, slot in prune:
            self._prune_slot(adapter, slot, optimizer)
            record.pruned.append(self.adapter_names[adapter])
        record.rank_pattern = self.rank_pattern()
        return record

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["target_rank"] = self.target_rank
        return state
