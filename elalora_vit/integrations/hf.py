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
    trainer.save_model("final")                      # the adapter folder only (see below)
    # later: from_pretrained(AutoModelForSequenceClassification.from_pretrained(name), "final")

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

And three things a PEFT user expects of Trainer:

- the allocator's state travels inside the checkpoint's ``optimizer.pt`` (an entry
  of the first parameter group, added by an optimizer state-dict hook), so
  ``train(resume_from_checkpoint="runA/checkpoint-12")`` resumes exactly whatever
  ``output_dir`` is; ``elalora_allocator.pt`` is written beside it too, and read when
  an optimizer state without the entry is resumed (checkpoints of older versions,
  DeepSpeed);
- ``trainer.save_model(dir)`` writes the adapter folder (``save_pretrained``:
  active ranks and the trained head, a few MB) instead of a full state dict under
  patched names, which a plain ``from_pretrained`` would load with randomly
  initialised layers; Trainer's own checkpoints (``checkpoint-*``) stay full, so
  they resume;
- every training log line (what TensorBoard, W&B and ``trainer.state.log_history``
  receive) carries ``elalora/total_rank``, ``elalora/rounds``, ``elalora/ranks_moved``
  (since the previous line) and ``elalora/mean_rank/<kind>`` (q, k, v, fc1, ...).
"""

from __future__ import annotations

import inspect
import os
import types
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core import ElaLoRAConfig, RankAllocator, orthogonal_regularization, save_pretrained
from ..core.score_summary import adapter_kind
from ..storage.files import atomic_write

ALLOCATOR_STATE_FILE = "elalora_allocator.pt"
OPTIMIZER_STATE_KEY = "elalora_allocator"
"""The entry of the optimizer's first parameter group that carries the allocator state."""

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
# GPT-2's projections are transformers Conv1D layers (weights stored as (in, out)); c_attn is
# the fused q, k, v (split it with split={"attn.c_attn": ["q", "k", "v"]}).
TARGETS["gpt2"] = ["*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"]
# Vision models as transformers 5 writes them (ViT, DeiT, DINOv2, Swin): q/k/v/o_proj and
# mlp.fc1/fc2 (Swin's patch-merging `downsample.reduction` is left out, as timm presets leave
# out patch embeddings). transformers 4 spelled them attention.attention.query, ...: pass
# those names to patch_model there.
TARGETS["vit"] = ["*.attention.q_proj", "*.attention.k_proj", "*.attention.v_proj", "*.attention.o_proj",
                  "*.mlp.fc1", "*.mlp.fc2"]
TARGETS["distilbert"] = ["*.attention.q_lin", "*.attention.k_lin", "*.attention.v_lin", "*.attention.out_lin",
                         "*.ffn.lin1", "*.ffn.lin2"]
# T5: self-attention, the decoder's cross-attention and the feed-forward block (wi, or the gated
# wi_0 and wi_1 of T5 v1.1 and mT5).
TARGETS["t5"] = ["*.SelfAttention.q", "*.SelfAttention.k", "*.SelfAttention.v", "*.SelfAttention.o",
                 "*.EncDecAttention.q", "*.EncDecAttention.k", "*.EncDecAttention.v", "*.EncDecAttention.o",
                 "*.DenseReluDense.wi*", "*.DenseReluDense.wo"]
for _alias, _same in {"roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
                      "mistral": "llama", "qwen2": "llama", "gemma": "llama",
                      "deit": "vit", "dinov2": "vit", "swin": "vit", "mt5": "t5"}.items():
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
        adapter_only_saves: ``trainer.save_model(dir)`` writes the adapter folder
            (False: Trainer's full state dict, under the patched names).
        log_ranks: add the rank figures to every training log line.

    After ``train()``, ``callback.allocator`` holds the allocator (its
    ``history`` lists every round).
    """

    def __init__(self, config: ElaLoRAConfig, add_orthogonal_regularization: bool = True, *,
                 adapter_only_saves: bool = True, log_ranks: bool = True):
        self.config = config
        self.add_orthogonal_regularization = add_orthogonal_regularization
        self.adapter_only_saves = adapter_only_saves
        self.log_ranks = log_ranks
        self.allocator: RankAllocator | None = None
        self._hook = None
        self._state_hook = None
        self._loss_scale = 1.0
        self._logged_rounds = 0
        self._pending: dict[str, float] | None = None

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.allocator = RankAllocator(model, self.config, total_steps=state.max_steps)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        if state.global_step > 0:
            self._restore(args, state, inner)
        self._logged_rounds = len(self.allocator.history)
        if isinstance(inner, torch.optim.Optimizer):
            self._state_hook = inner.register_state_dict_post_hook(self._add_allocator_state)
        if self.adapter_only_saves:
            _save_adapters_from_save_model(model, self)
        if self.log_ranks:
            state.log_history = _LogWithRanks(state.log_history, callback=self)
            _run_before_the_reporters(self)
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

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer copies the line into log_history (where _LogWithRanks added the figures) just
        # before this event; the reporters after this callback read ``logs`` itself.
        if self._pending is not None and isinstance(logs, dict) and "loss" in logs:
            logs.update(self._pending)
        self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        for handle in (self._hook, self._state_hook):
            if handle is not None:
                handle.remove()
        self._hook = self._state_hook = None

    # ----------------------------------------------------------------- helpers
    def log_entries(self) -> dict[str, float]:
        """The rank figures of a log line: total rank, rounds so far, ranks moved since the
        previous line, and the mean rank of each kind of adapter."""
        by_kind: dict[str, list[int]] = defaultdict(list)
        for name, rank in self.allocator.rank_pattern().items():
            by_kind[adapter_kind(name)].append(rank)
        history = self.allocator.history
        entries = {
            "elalora/total_rank": float(sum(sum(ranks) for ranks in by_kind.values())),
            "elalora/rounds": float(len(history)),
            "elalora/ranks_moved": float(sum(r.net_moved() for r in history[self._logged_rounds:])),
        }
        entries.update({f"elalora/mean_rank/{kind}": sum(r) / len(r) for kind, r in sorted(by_kind.items())})
        self._logged_rounds = len(history)
        return entries

    def _add_allocator_state(self, optimizer, state_dict):
        if self.allocator is not None and state_dict.get("param_groups"):
            state_dict["param_groups"][0][OPTIMIZER_STATE_KEY] = self.allocator.state_dict()
        return state_dict

    def _restore(self, args, state, optimizer) -> None:
        # Trainer has loaded the checkpoint's optimizer state (wherever it lies) before this event.
        groups = getattr(optimizer, "param_groups", None) or [{}]
        saved = groups[0].pop(OPTIMIZER_STATE_KEY, None)
        if saved is None:
            path = _state_path(args.output_dir, state.global_step)
            if not path.is_file():
                raise FileNotFoundError(
                    f"ElaLoRACallback: training resumes at step {state.global_step}, but neither the resumed "
                    f"optimizer state nor {path} holds an allocator state, so the rank decisions of the "
                    "interrupted run cannot be reproduced. Resume from a checkpoint written with ElaLoRACallback."
                )
            saved = torch.load(path, map_location="cpu", weights_only=True)
        self.allocator.load_state_dict(saved)

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


class _LogWithRanks(list):
    """``TrainerState.log_history`` that adds the rank figures to each training line as
    Trainer appends it, before any callback (TensorBoard, W&B) receives the line."""

    def __init__(self, items=(), callback: ElaLoRACallback | None = None):
        super().__init__(items)
        self._callback = callback

    def append(self, entry) -> None:
        if self._callback is not None and isinstance(entry, dict) and "loss" in entry:
            self._callback._pending = self._callback.log_entries()
            entry.update(self._callback._pending)
        super().append(entry)


def _run_before_the_reporters(callback: ElaLoRACallback) -> None:
    """Move ``callback`` to the front of Trainer's callback list, so that TensorBoard, W&B and
    the other reporters (which Trainer puts before the user's callbacks) receive log lines
    that already carry the rank figures.  Trainer gives callbacks no handle on that list;
    the event's caller, ``CallbackHandler.call_event``, holds it."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler):
                if callback in handler.callbacks:
                    handler.callbacks.remove(callback)
                    handler.callbacks.insert(0, callback)
                return
            frame = frame.f_back
    finally:
        del frame


def _save_adapters_from_save_model(model: nn.Module, callback: ElaLoRACallback) -> None:
    """Make Trainer's ``save_model(dir)`` write the adapter folder: Trainer calls the model's
    ``save_pretrained``, which is replaced on this instance.  Trainer's checkpoints
    (``checkpoint-<step>``) keep the full state dict, which resuming needs."""
    original = getattr(model, "save_pretrained", None)
    if original is None or getattr(original, "_elalora", False):
        return
    original = getattr(original, "__func__", original)

    def save_pretrained_adapters(self, save_directory, *args, **kwargs):
        if Path(save_directory).name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            return original(self, save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return None
        save_pretrained(self, save_directory, callback.config, allocator=callback.allocator)
        return None

    save_pretrained_adapters._elalora = True
    model.save_pretrained = types.MethodType(save_pretrained_adapters, model)
