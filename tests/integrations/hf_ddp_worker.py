"""One process of HF ``Trainer`` + ``ElaLoRACallback`` data-parallel training, for
tests/integrations/test_hf_distributed.py.

Launched as ``torchrun --standalone --nproc_per_node 2 tests/integrations/hf_ddp_worker.py
DUMP_DIR [--skew-scores-on RANK]``.  Every process trains the tiny BERT of test_hf.py with
the callback (Trainer wraps it in ``DistributedDataParallel``, gloo on CPU, and feeds each
process its own half of every step's samples) three times:

- ``full``: Trainer's default arguments, a checkpoint at step 8;
- ``resumed``: a new run resumed from a copy of that checkpoint;
- ``one_process_recipe``: ``average_tokens_across_devices=False``, so that a step equals
  one process's step on the union of the two shards (see ``main``).

For each run every process writes to ``DUMP_DIR/process<rank>.pt`` the batches it was fed,
its own importance scores at every round (before rank 0's are broadcast), the round
history, the rank pattern and the model's tensors.

``--skew-scores-on RANK`` negates that process's importance scores in the ``full`` run:
DDP averages the gradients before the allocator reads them, so the processes' scores
agree unless something makes them differ; then only the broadcast of rank 0's scores
keeps their decisions alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

from elalora_vit.core import ImportanceTracker, RankAllocator
from elalora_vit.integrations.hf import ElaLoRACallback
from tests.integrations.test_hf import _args, _config, _data, _model

CHECKPOINT_STEP = 8
local_scores: list = []  # this process's own scores at every round of the current run


def record_local_scores() -> None:
    """Keep every process's own scores, as the allocator reads them before the broadcast."""
    original = RankAllocator.scores

    def scores(self):
        local = original(self)
        local_scores.append(local.clone())
        return local

    RankAllocator.scores = scores


def skew_scores() -> None:
    """Negate this process's scores (and return the hook that undoes it)."""
    original = ImportanceTracker.scores
    ImportanceTracker.scores = lambda self: -original(self)
    return lambda: setattr(ImportanceTracker, "scores", original)


def train(output_dir: Path, resume: bool = False, **overrides) -> dict:
    """One Trainer run on this process (test_hf.py's model, data and arguments, a checkpoint
    at step 8); what it was fed, what it decided and the model it ended with."""
    config, seen = _config(), []
    local_scores.clear()

    def collate(rows):
        batch = transformers.default_data_collator(rows)
        seen.append(batch["input_ids"].clone())
        return batch

    callback, model = ElaLoRACallback(config), _model(config)
    settings = dict(per_device_train_batch_size=8, save_strategy="steps", save_steps=CHECKPOINT_STEP)
    args = _args(output_dir, **{**settings, **overrides})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(), data_collator=collate,
                                   callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume or None)
    return {
        "wrapped": type(trainer.model_wrapped).__name__,
        "batches": seen,
        "local_scores": list(local_scores),
        "step_count": callback.allocator.step_count,
        "history": [r.to_dict() for r in callback.allocator.history],
        "rank_pattern": callback.allocator.rank_pattern(),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dump_dir", type=Path)
    parser.add_argument("--skew-scores-on", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)  # two processes on a shared machine
    rank, out = int(os.environ["RANK"]), args.dump_dir
    record_local_scores()

    unskew = skew_scores() if args.skew_scores_on == rank else (lambda: None)
    runs = {"full": train(out / "full")}
    unskew()  # the other runs score honestly

    # An interrupted run: its output folder holds only the checkpoint of step 8.
    if rank == 0:
        name = f"checkpoint-{CHECKPOINT_STEP}"
        shutil.copytree(out / "full" / name, out / "resumed" / name)
    dist.barrier()
    runs["resumed"] = train(out / "resumed", resume=True)
    # Trainer multiplies the loss by the number of processes when the model takes loss kwargs
    # (BERT does, and ignores them): without that, a step is one process's step on both shards.
    runs["one_process_recipe"] = train(out / "one_process_recipe", average_tokens_across_devices=False)
    torch.save({"world": dist.get_world_size(), **runs}, out / f"process{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
