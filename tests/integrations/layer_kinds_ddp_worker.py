"""One process of a two-process DDP run (torchrun, gloo) over a model with every kind of layer
adapters wrap: ``nn.Embedding``, transformers' ``Conv1D``, ``nn.Conv2d`` and ``nn.Linear``.
Each process trains on its own batches; it writes its allocator's decisions and its adapter
tensors to ``<out>/rank<r>.pt`` for tests/integrations/test_layer_kinds_ddp.py."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from elalora_vit import ElaLoRAConfig, RankAllocator, orthogonal_regularization, patch_model
from tests.reliability.dist_worker import adapter_tensors

VOCAB, DIM, STEPS = 30, 16, 14


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.conv = nn.Conv2d(1, DIM, 3, padding=1)
        self.c_fc = Conv1D(2 * DIM, DIM)  # GPT-2's layer: (nx -> nf), weight stored (in, out)
        self.proj = nn.Linear(2 * DIM, DIM)
        self.head = nn.Linear(DIM, 4)

    def forward(self, tokens):
        h = self.embed(tokens)                                        # (B, L, D)
        h = h + self.conv(h.unsqueeze(1)).mean(dim=1)                 # D channels averaged back to (B, L, D)
        return self.head(self.proj(F.gelu(self.c_fc(h))).mean(dim=1))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Mixed()
    config = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=3, adjust_interval=2, stabilize_steps=3, b=2, k=1)
    patch_model(model, ["embed", "conv", "c_fc", "proj"], config)
    model.head.requires_grad_(True)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=3e-2)
    allocator = RankAllocator(ddp, config, total_steps=STEPS)
    g = torch.Generator().manual_seed(100 + rank)  # each process its own batches
    for _ in range(STEPS):
        tokens, y = torch.randint(0, VOCAB, (6, 5), generator=g), torch.randint(0, 4, (6,), generator=g)
        loss = F.cross_entropy(ddp(tokens), y) + config.orth_reg_weight * orthogonal_regularization(ddp)
        loss.backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    decisions = [(r.step, r.pruned, r.expanded) for r in allocator.history]
    torch.save({"decisions": decisions, "state": adapter_tensors(model), "ranks": allocator.rank_pattern()},
               out / f"rank{rank}.pt")
    # Both processes reach here before either tears gloo down: a process that destroys its group
    # while its peer still has traffic in flight aborts ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
