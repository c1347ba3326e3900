"""ElaLoRA under the HuggingFace ``transformers`` ``Trainer``.

``transformers`` is an optional dependency, imported only by this module.

::

    from elalora_vit import ElaLoRAConfig, patch_model, save_adapters
    from elalora_vit.integrations.hf import ElaLoRACallback, default_targets

    config = ElaLoRAConfig(rank=4, warmup_steps=100, adjust_interval=50, stabilize_steps=200)
    patch_model(model, default_targets(model), config)
    model.classifier.requires_grad_(True)            # the new head trains in full
    trainer = Trainer(model, args, train_dataset=..., callbacks=[ElaLoRACallback(config)])
    trainer.train()                                  # or train(resume_from_checkpoint=True)
    save_adapters(model, "adapter.safetensors", config, modules_to_save=["classifier"])

The callback does the three things a hand-written loop does (METHOD.md):

- steps the :class:`RankAllocator` once per *optimizer* step, after
  ``optimizer.step()`` and before the gradients are zeroed (``on_optimizer_step``),
  so gradient accumulation counts optimizer steps, not micro-batches;
- adds ``orth_reg_weight * orthogonal_regularization(model)`` to the loss the
  model returns, through a forward hook installed for the duration of
  ``train()`` (no ``Trainer`` subclass);
- writes the allocator's state into every Trainer checkpoint and reads it back
  when training resumes, so a resumed run makes the decisions of an
  uninterrupted one.  Under DDP every process takes rank 0's scores (the core
  broadcasts them), so all processes make the same decisions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..core import ElaLoRAConfig, RankAllocator, orthogonal_regularization
from ..storage.files import atomic_write
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

ALLOCATOR_STATE_FILE = "elalora_allocator.pt"

# Adapter targets (full-name globs, see patch_model) by ``model.config.model_type``:
# every projection of attention and of the feed-forward block.
TARGETS: dict[str, list[str]] = {
    "bert": [
        "*.attention.self.query", "*.attention.self.key", "*.attention.self.value",
        "*.attention.output.dense", "*.intermediate.dense", "*.layer.*.output.dense",
    ],
    "deberta-v2": [
        "*.attention.self.query_proj", "*.attention.self.key_proj", "*.attention.self.value_proj",
        "*.attention.output.dense", "*.intermediate.dense", "*.layer.*.output.dense",
    ],
    "llama": [
        "*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
        "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj",
    ],
}
for _alias, _same in {"roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
                      "mistral": "llama", "qwen2": "llama", "gemma": "llama"}.items():
    TARGETS[_alias] = TARGETS[_same]


def default_targets(model: nn.Module) -> list[str]:
    """The adapter targets of :data:`TARGETS` for ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TARGETS:
        raise ValueError(
            f"no default ElaLoRA targets for model type {model_type!r} (known: {sorted(TARGETS)}); "
            "pass explicit targets to patch_model, e.g. ['*.self_attn.q_proj', '*.mlp.down_proj']"
        )
    return list(TARGETS[model_type])


class ElaLoRACallback(TrainerCallback):
    """Runs ElaLoRA's rank allocation and orthogonal regulariser inside ``Trainer.train()``.

    Args:
        config: the :class:`ElaLoRAConfig` the model was patched with; its
            ``warmup_steps``, ``adjust_interval`` and ``stabilize_steps`` count
            optimizer steps and must fit ``TrainingArguments.max_steps`` (or the
            steps the epochs make).
        add_orthogonal_regularization: add ``orth_reg_weight * R`` to the
            training loss (False if your loss adds it already).

    After ``train()``, ``callback.allocator`` holds the allocator (its
    ``history`` lists every round).
    """

    def __init__(self, config: ElaLoRAConfig, add_orthogonal_regularization: bool = True):
        self.config = config
        self.add_orthogonal_regularization = add_orthogonal_regularization
        self.allocator: RankAllocator | None = None
        self._hook = None
        self._loss_scale = 1.0

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.allocator = RankAllocator(model, self.config, total_steps=state.max_steps)
        if state.global_step > 0:
            self._restore(args, state)
        if self.add_orthogonal_regularization and self.config.orth_reg_weight > 0:
            self._install_loss_hook(model, args)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # After optimizer.step() and before the gradients are zeroed: the scores see this step's gradients.
        self.allocator.step(getattr(optimizer, "optimizer", optimizer))

    def on_save(self, args, state, control, **kwargs):
        # Written where Trainer writes its own state: by the main process, or by each node's
        # first process with save_on_each_node (nodes without a shared disk resume from their own).
        if args.should_save:
            path = _state_path(args.output_dir, state.global_step)
            saved = self.allocator.state_dict()
            atomic_write(path, lambda tmp: torch.save(saved, tmp))

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ----------------------------------------------------------------- helpers
    def _restore(self, args, state) -> None:
        path = _state_path(args.output_dir, state.global_step)
        if not path.is_file():
            raise FileNotFoundError(
                f"ElaLoRACallback: training resumes at step {state.global_step}, but there is no allocator "
                f"state at {path}, so the rank decisions of the interrupted run cannot be reproduced. Resume "
                "from a checkpoint under TrainingArguments.output_dir that was written with ElaLoRACallback."
            )
        self.allocator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _install_loss_hook(self, model: nn.Module, args) -> None:
        # Trainer divides a per-batch mean loss by the accumulation steps, unless the model takes
        # ``num_items_in_batch`` (then the loss is not divided, and multiplied by the number of
        # processes when tokens are averaged across devices). Scale R so every optimizer step
        # adds gamma * R once, as in a hand-written loop.
        world = args.world_size if getattr(args, "average_tokens_across_devices", False) else 1
        self._loss_scale = 1.0 / (args.gradient_accumulation_steps * world)
        self._hook = model.register_forward_hook(self._add_regularizer, with_kwargs=True)

    def _add_regularizer(self, module, args, kwargs, output):
        if not (module.training and torch.is_grad_enabled()):
            return None
        if not isinstance(output, dict) or output.get("loss") is None:
            raise RuntimeError(
                "ElaLoRACallback: the model returned no loss in training, so the orthogonal regulariser cannot "
                "be added to it (a compute_loss_func or label smoothing computes the loss outside the model). "
                "Add config.orth_reg_weight * orthogonal_regularization(model) to your loss and pass "
                "ElaLoRACallback(config, add_orthogonal_regularization=False)."
            )
        scale = self._loss_scale if "num_items_in_batch" in kwargs else 1.0
        output["loss"] = output["loss"] + scale * self.config.orth_reg_weight * orthogonal_regularization(module)
        return output


def _state_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / ALLOCATOR_STATE_FILE
