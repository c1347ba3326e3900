"""One process of a two-process Lightning DDP fit (launched by torchrun from
tests/integrations/test_lightning.py): writes its allocator's decisions and adapter state to
``<out>/rank<r>.pt`` so the test can compare the processes."""

import sys
from pathlib import Path

import lightning
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from elalora_vit.integrations.lightning import ElaLoRACallback  # noqa: E402
from tests.integrations.test_lightning import (ACCUMULATE, BATCH, EPOCHS, Classifier, _config, _data,  # noqa: E402
                                               _decisions, _model, _state)


def main(out: Path) -> None:
    torch.manual_seed(0)
    config = _config()
    model = _model(config)
    callback = ElaLoRACallback(config)
    trainer = lightning.pytorch.Trainer(
        max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATE, accelerator="cpu", devices=2, strategy="ddp",
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(out), callbacks=[callback])
    loader = torch.utils.data.DataLoader(_data(), batch_size=BATCH, shuffle=False)
    trainer.fit(Classifier(model), loader)
    torch.save({"decisions": _decisions(callback.allocator), "state": _state(model), "steps": trainer.global_step,
                "allocator_steps": callback.allocator.step_count}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
