"""ElaLoRA under HF transformers: the same training three ways, Trainer resume, and the no-op warning.

A tiny randomly initialised BERT (hidden 32, 2 layers) on a generated task: the label says
whether token 7 occurs in the sequence.  Dropout is off and every step sees the whole data
set (one batch), so the three loops differ only in who drives them.
"""

import shutil
import warnings

import pytest
import torch

from elalora_vit import (
    AllocatorNotSteppedWarning,
    ElaLoRAConfig,
    RankAllocator,
    adapted_layers,
    adapter_param_groups,
    orthogonal_regularization,
    patch_model,
)

transformers = pytest.importorskip("transformers")
from elalora_vit.integrations.hf import (  # noqa: E402
    ALLOCATOR_STATE_FILE,
    OPTIMIZER_STATE_KEY,
    ElaLoRACallback,
    default_targets,
)

N, LENGTH, VOCAB = 32, 8, 32
STEPS, LR = 20, 1e-2


def _config(**overrides) -> ElaLoRAConfig:
    values = dict(rank=2, max_rank=4, warmup_steps=4, adjust_interval=3, stabilize_steps=4, b=2, k=1, seed=0)
    return ElaLoRAConfig(**{**values, **overrides})


def _model(config: ElaLoRAConfig):
    torch.manual_seed(0)
    bert = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=LENGTH, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertForSequenceClassification(bert)
    patch_model(model, default_targets(model), config)
    model.classifier.requires_grad_(True)
    return model


def _data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (N, LENGTH), generator=g)
    labels = (ids == 7).any(dim=1).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i]}
            for i in range(N)]


def _full_batch(data):
    return {key: torch.stack([row[key] for row in data]) for key in data[0]}


def _one_cycle(optimizer):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=STEPS)


def _hand_loop(model, config, optimizer):
    """The loop README shows: loss + gamma * R, step, allocator.step, schedule."""
    scheduler = _one_cycle(optimizer)
    allocator = RankAllocator(model, config, total_steps=STEPS)
    batch = _full_batch(_data())
    for _ in range(STEPS):
        loss = model(**batch).loss + config.orth_reg_weight * orthogonal_regularization(model)
        loss.backward()
        optimizer.step()
        allocator.step(optimizer)
        scheduler.step()
        optimizer.zero_grad()
    return allocator


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=N, learning_rate=LR,
        weight_decay=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, seed=0, disable_tqdm=True,
    )
    return transformers.TrainingArguments(**{**values, **overrides})


def _adapter_state(model) -> dict:
    state = {}
    for name, layer in adapted_layers(model):
        for key in ("lora_A", "lora_theta", "lora_B", "rank_mask"):
            state[f"{name}.{key}"] = getattr(layer, key).detach().clone()
    state["classifier"] = model.classifier.weight.detach().clone()
    return state


def _decisions(allocator) -> list:
    return [(r.step, r.pruned, r.expanded) for r in allocator.history]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype == torch.bool:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_core_loop_plain_adamw_one_cycle_and_trainer_make_the_same_decisions(tmp_path):
    config = _config()
    # 1. elalora-vit's recipe: the parameter groups of adapter_param_groups (all at LR: lambda's
    #    speed-up is in the adapter), the regulariser and the allocator by hand.
    core = _model(config)
    core_alloc = _hand_loop(core, config, torch.optim.AdamW(adapter_param_groups(core, LR), weight_decay=0.0))
    # 2. A plain AdamW over model.parameters() with OneCycleLR (which sets every group's LR itself).
    plain = _model(config)
    plain_alloc = _hand_loop(plain, config, torch.optim.AdamW(plain.parameters(), lr=LR, weight_decay=0.0))
    # 3. HF Trainer with the callback, on the same optimizer recipe and schedule.
    hf = _model(config)
    optimizer = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.0)
    callback = ElaLoRACallback(config)
    trainer = transformers.Trainer(
        model=hf, args=_args(tmp_path, train_sampling_strategy="sequential"), train_dataset=_data(), callbacks=[callback],
        optimizers=(optimizer, _one_cycle(optimizer)),
    )
    trainer.train()

    assert callback.allocator.step_count == STEPS
    decisions = _decisions(core_alloc)
    assert any(pruned for _, pruned, _ in decisions), "the recipe must move ranks for the test to mean anything"
    assert _decisions(plain_alloc) == decisions
    assert _decisions(callback.allocator) == decisions
    reference = _adapter_state(core)
    _assert_same(_adapter_state(plain), reference)
    _assert_same(_adapter_state(hf), reference)


def test_trainer_resume_makes_the_decisions_of_an_uninterrupted_run(tmp_path):
    config = _config()
    args = dict(per_device_train_batch_size=8, save_strategy="steps", save_steps=8)  # 4 batches per epoch
    full_model, full_cb = _model(config), ElaLoRACallback(config)
    transformers.Trainer(model=full_model, args=_args(tmp_path / "full", **args), train_dataset=_data(),
                         callbacks=[full_cb]).train()
    assert (tmp_path / "full" / "checkpoint-8" / ALLOCATOR_STATE_FILE).is_file()

    # An interrupted run: its output folder holds only the checkpoint of step 8.
    shutil.copytree(tmp_path / "full" / "checkpoint-8", tmp_path / "resumed" / "checkpoint-8")
    resumed_model, resumed_cb = _model(config), ElaLoRACallback(config)
    transformers.Trainer(model=resumed_model, args=_args(tmp_path / "resumed", **args), train_dataset=_data(),
                         callbacks=[resumed_cb]).train(resume_from_checkpoint=True)

    assert resumed_cb.allocator.step_count == STEPS
    assert _decisions(full_cb.allocator) and any(step > 8 for step, _, _ in _decisions(full_cb.allocator))
    assert _decisions(resumed_cb.allocator) == _decisions(full_cb.allocator)
    _assert_same(_adapter_state(resumed_model), _adapter_state(full_model))

    # The checkpoint of another run, resumed by its path into a new output folder.
    elsewhere_model, elsewhere_cb = _model(config), ElaLoRACallback(config)
    transformers.Trainer(model=elsewhere_model, args=_args(tmp_path / "elsewhere", **args), train_dataset=_data(),
                         callbacks=[elsewhere_cb]).train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-8"))
    assert _decisions(elsewhere_cb.allocator) == _decisions(full_cb.allocator)
    _assert_same(_adapter_state(elsewhere_model), _adapter_state(full_model))

    # Without the allocator's state (neither in optimizer.pt nor beside it) the run cannot be
    # reproduced: say so instead of guessing.
    bare = tmp_path / "bare" / "checkpoint-8"
    shutil.copytree(tmp_path / "full" / "checkpoint-8", bare)
    (bare / ALLOCATOR_STATE_FILE).unlink()
    optimizer_state = torch.load(bare / "optimizer.pt", weights_only=True)
    assert OPTIMIZER_STATE_KEY in optimizer_state["param_groups"][0]
    del optimizer_state["param_groups"][0][OPTIMIZER_STATE_KEY]
    torch.save(optimizer_state, bare / "optimizer.pt")
    trainer = transformers.Trainer(model=_model(config), args=_args(tmp_path / "bare", **args),
                                   train_dataset=_data(), callbacks=[ElaLoRACallback(config)])
    with pytest.raises(FileNotFoundError, match="holds an allocator state"):
        trainer.train(resume_from_checkpoint=True)


def test_gradient_accumulation_counts_optimizer_steps_not_micro_batches(tmp_path):
    config, steps = _config(warmup_steps=1, adjust_interval=2, stabilize_steps=1), 6
    callback = ElaLoRACallback(config)
    args = _args(tmp_path, max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    transformers.Trainer(model=_model(config), args=args, train_dataset=_data(), callbacks=[callback]).train()
    assert callback.allocator.step_count == steps
    assert callback.allocator.total_steps == steps


def test_trainer_without_the_callback_warns_that_ranks_never_move(tmp_path):
    config = _config(warmup_steps=2, adjust_interval=1, stabilize_steps=0)
    trainer = transformers.Trainer(model=_model(config), args=_args(tmp_path, max_steps=4), train_dataset=_data())
    with pytest.warns(AllocatorNotSteppedWarning, match="ElaLoRACallback"):
        trainer.train()


class _Recorder(transformers.TrainerCallback):
    """A reporting callback (as TensorBoard's and W&B's are): it runs before ElaLoRACallback."""

    def __init__(self):
        self.lines = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.lines.append(dict(logs))


def test_every_training_log_line_carries_the_rank_figures_for_the_reporters(tmp_path):
    config = _config()
    recorder, callback = _Recorder(), ElaLoRACallback(config)
    trainer = transformers.Trainer(model=_model(config), args=_args(tmp_path, logging_strategy="steps", logging_steps=5),
                                   train_dataset=_data(), callbacks=[recorder, callback])
    trainer.train()
    lines = [line for line in recorder.lines if "loss" in line]
    assert len(lines) == STEPS // 5
    kinds = {"query", "key", "value", "dense"}
    for line in lines:
        assert {f"elalora/mean_rank/{kind}" for kind in kinds} <= set(line), line
    assert lines[0]["elalora/rounds"] == 0 and lines[-1]["elalora/rounds"] == len(callback.allocator.history) > 0
    moved = sum(line["elalora/ranks_moved"] for line in lines)
    assert moved == sum(r.net_moved() for r in callback.allocator.history) > 0
    assert lines[-1]["elalora/total_rank"] == sum(callback.allocator.history[-1].rank_pattern.values())
    assert trainer.state.log_history[0]["elalora/total_rank"] == lines[0]["elalora/total_rank"]


def test_save_model_writes_the_adapter_folder_that_a_plain_model_loads(tmp_path):
    from elalora_vit import from_pretrained, unpatch_model

    config = _config()
    model = _model(config)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "out"), train_dataset=_data(),
                                   callbacks=[ElaLoRACallback(config)])
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    saved = sorted(p.name for p in (tmp_path / "final").iterdir())
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved, saved
    assert "elalora_allocator.pt" in saved

    # The same backbone, unpatched (what from_pretrained of a hub name gives): the folder patches it.
    fresh = unpatch_model(_model(config)).requires_grad_(True)  # as a fresh from_pretrained is
    loaded = from_pretrained(fresh, tmp_path / "final")
    trainable = {n.rpartition(".")[0] for n, p in loaded.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"classifier"}  # what was saved trains again, nothing more
    batch = _full_batch(_data())
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)
