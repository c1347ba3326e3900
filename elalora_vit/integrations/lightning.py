"""ElaLoRA under PyTorch Lightning: a ``Callback`` with the guarantees of the HF one.

``lightning`` is an optional dependency (``pip install -e ".[lightning]"``), imported
only by this module.

::

    from elalora_vit import ElaLoRAConfig, patch_model
    from elalora_vit.integrations.lightning import ElaLoRACallback

    patch_model(module.model, targets, config)       # inside your LightningModule, or before it
    trainer = lightning.Trainer(max_steps=2000, accumulate_grad_batches=2,
                                callbacks=[ElaLoRACallback(config)])
    trainer.fit(module, loader)                       # or fit(..., ckpt_path="last.ckpt")

What it does:

- one allocator step per *optimizer* step: after each training batch it steps the
  allocator only if ``trainer.global_step`` moved (so accumulation counts optimizer
  steps), after ``optimizer.step()`` and before the next batch zeroes the gradients;
  ``total_steps`` is ``trainer.estimated_stepping_batches``;
- the orthogonal regulariser: its gradient (``orth_reg_weight * R``, divided by
  ``accumulate_grad_batches`` as Lightning divides the loss, and scaled by the fp16
  grad scaler when there is one) is added after every backward pass, so the loss
  your ``training_step`` returns needs no change;
- the allocator's state is the callback's state in every Lightning checkpoint, so
  ``fit(ckpt_path=...)`` makes the decisions of an uninterrupted run; under DDP every
  round decides on rank 0's scores (the core broadcasts them), so all processes
  make the same decisions;
- the rank figures go to the module's logger (``elalora/total_rank``,
  ``elalora/rounds``, ``elalora/mean_rank/<kind>``) after every round.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from lightning.pytorch import Callback

from ..core import ElaLoRAConfig, RankAllocator, orthogonal_regularization
from ..core.score_summary import adapter_kind


class ElaLoRACallback(Callback):
    """Runs ElaLoRA's rank allocation and orthogonal regulariser inside ``Trainer.fit()``.

    Args:
        config: the :class:`ElaLoRAConfig` the module's model was patched with; its
            schedule counts optimizer steps and must fit the run's optimizer steps.
        add_orthogonal_regularization: add the regulariser's gradient after each
            backward pass (False if your ``training_step`` adds ``gamma * R`` itself).
        log_ranks: log the rank figures after every round.

    After ``fit()``, ``callback.allocator`` holds the allocator.
    """

    def __init__(self, config: ElaLoRAConfig, add_orthogonal_regularization: bool = True, *, log_ranks: bool = True):
        self.config = config
        self.add_orthogonal_regularization = add_orthogonal_regularization
        self.log_ranks = log_ranks
        self.allocator: RankAllocator | None = None
        self._restored: dict[str, Any] | None = None
        self._seen_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning restored a checkpoint (model, optimizer and this callback's state).
        self.allocator = RankAllocator(pl_module, self.config, total_steps=int(trainer.estimated_stepping_batches))
        if self._restored is not None:
            self.allocator.load_state_dict(self._restored)
            self._restored = None
        self._seen_step = trainer.global_step

    def on_after_backward(self, trainer, pl_module) -> None:
        if not (self.add_orthogonal_regularization and self.config.orth_reg_weight > 0):
            return
        weight = self.config.orth_reg_weight / trainer.accumulate_grad_batches
        regulariser = weight * orthogonal_regularization(pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (scaler.scale(regulariser) if scaler is not None else regulariser).backward()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._seen_step:
            return  # a micro-batch of an accumulation: the optimizer did not step
        self._seen_step = trainer.global_step
        rounds = len(self.allocator.history)
        self.allocator.step(trainer.optimizers[0])
        if self.log_ranks and len(self.allocator.history) > rounds:
            pl_module.log_dict(self.log_entries(), on_step=True, on_epoch=False)

    def log_entries(self) -> dict[str, float]:
        """Total rank, rounds so far and the mean rank of each kind of adapter."""
        by_kind: dict[str, list[int]] = defaultdict(list)
        for name, rank in self.allocator.rank_pattern().items():
            by_kind[adapter_kind(name)].append(rank)
        entries = {"elalora/total_rank": float(sum(sum(r) for r in by_kind.values())),
                   "elalora/rounds": float(len(self.allocator.history))}
        entries.update({f"elalora/mean_rank/{kind}": sum(r) / len(r) for kind, r in sorted(by_kind.items())})
        return entries

    def state_dict(self) -> dict[str, Any]:
        return {"allocator": self.allocator.state_dict()} if self.allocator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("allocator")


__all__ = ["ElaLoRACallback"]
