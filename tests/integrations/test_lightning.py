"""ElaLoRA under PyTorch Lightning: the callback makes a hand-written loop's decisions (with
gradient accumulation), one allocator step per optimizer step, and a resumed fit decides as
an uninterrupted one."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from elalora_vit import ElaLoRAConfig, RankAllocator, adapted_layers, orthogonal_regularization, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

lightning = pytest.importorskip("lightning")
from elalora_vit.integrations.lightning import ElaLoRACallback  # noqa: E402

N, BATCH, ACCUMULATE, EPOCHS, LR = 32, 2, 2, 3, 1e-2
STEPS = EPOCHS * N // (BATCH * ACCUMULATE)  # optimizer steps: 8 an epoch


def _config():
    return ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=4, adjust_interval=3, stabilize_steps=4, b=2, k=1,
                         orth_reg_weight=0.5)


def _model(config):
    model = make_tiny_vit()
    patch_model(model, VIT_TARGETS, config, split=QKV_SPLIT)
    model.head.requires_grad_(True)
    return model


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 3, 32, 32, generator=g), torch.randint(0, 5, (N,), generator=g))


class Classifier(lightning.pytorch.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)


def _fit(model, config, tmp_path, ckpt_path=None, **trainer_args):
    callback = ElaLoRACallback(config)
    trainer = lightning.pytorch.Trainer(
        max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATE, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[callback, *trainer_args.pop("callbacks", [])], **{"enable_checkpointing": False, **trainer_args})
    trainer.fit(Classifier(model), DataLoader(_data(), batch_size=BATCH, shuffle=False), ckpt_path=ckpt_path)
    return callback, trainer


def _hand_loop(model, config):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    allocator = RankAllocator(model, config, total_steps=STEPS)
    batches = list(DataLoader(_data(), batch_size=BATCH, shuffle=False))
    for _ in range(EPOCHS):
        for i in range(0, len(batches), ACCUMULATE):
            for x, y in batches[i:i + ACCUMULATE]:
                # The regulariser's gradient in a second backward pass, as the callback adds it, so
                # that both sum the same gradients in the same order (one pass rounds differently,
                # and Adam's normalised steps grow that to ~1e-2 over the run on some machines).
                (F.cross_entropy(model(x), y) / ACCUMULATE).backward()
                (config.orth_reg_weight / ACCUMULATE * orthogonal_regularization(model)).backward()
            optimizer.step()
            allocator.step(optimizer)
            optimizer.zero_grad()
    return allocator


def _decisions(allocator):
    def names(adapters):  # the callback's allocator names adapters under the module's "model."
        return [name.removeprefix("model.") for name in adapters]

    return [(r.step, names(r.pruned), names(r.expanded)) for r in allocator.history]


def _state(model):
    return {f"{n}.{k}": getattr(layer, k).detach().clone() for n, layer in adapted_layers(model)
            for k in ("lora_A", "lora_theta", "lora_B", "rank_mask")}


def _assert_same(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_the_callback_makes_the_hand_written_loops_decisions_under_accumulation(tmp_path):
    config = _config()
    hand = _model(config)
    hand_alloc = _hand_loop(hand, config)
    assert any(pruned for _, pruned, _ in _decisions(hand_alloc)), "rounds must move ranks for the test to mean anything"

    fitted = _model(config)
    callback, trainer = _fit(fitted, config, tmp_path)
    assert trainer.global_step == STEPS
    assert callback.allocator.step_count == STEPS and callback.allocator.total_steps == STEPS
    assert _decisions(callback.allocator) == _decisions(hand_alloc)
    _assert_same(_state(fitted), _state(hand))


def test_a_resumed_fit_makes_the_decisions_of_an_uninterrupted_one(tmp_path):
    config = _config()
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1,
                                                              save_top_k=-1, save_last=False)
    full = _model(config)
    full_cb, _ = _fit(full, config, tmp_path / "full", callbacks=[checkpoints], enable_checkpointing=True)
    first = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"
    assert first.is_file()
    assert any(step > 8 for step, _, _ in _decisions(full_cb.allocator))

    resumed = _model(config)
    resumed_cb, trainer = _fit(resumed, config, tmp_path / "resumed", ckpt_path=str(first))
    assert trainer.global_step == STEPS and resumed_cb.allocator.step_count == STEPS
    assert _decisions(resumed_cb.allocator) == _decisions(full_cb.allocator)
    _assert_same(_state(resumed), _state(full))


def test_under_ddp_every_process_makes_the_same_decisions_and_ends_with_the_same_adapters(tmp_path):
    """Two processes (torchrun, gloo), each on its half of the data: the allocator counts
    optimizer steps on both, every round decides on rank 0's scores, and the regulariser's
    gradient (added after DDP's reduced backward) is the same on both."""
    from tests.reliability.conftest import run_torchrun

    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    done = run_torchrun([str(worker), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = EPOCHS * N // (2 * BATCH * ACCUMULATE)  # each process sees half the data
    assert [r["steps"] for r in ranks] == [steps, steps] and [r["allocator_steps"] for r in ranks] == [steps, steps]
    assert any(pruned for _, pruned, _ in ranks[0]["decisions"]), "rounds must move ranks for the test to mean anything"
    assert ranks[0]["decisions"] == ranks[1]["decisions"]
    _assert_same(ranks[0]["state"], ranks[1]["state"], atol=0)
