"""Every target preset of ``integrations.hf.TARGETS`` on a tiny random model of its family
(transformers' own classes, as installed): the preset adapts exactly the attention and
feed-forward projections, the model trains through a round of rank moves, and merging keeps
its outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from elalora_vit import ElaLoRAConfig, RankAllocator, adapted_layers, merge_adapters, patch_model  # noqa: E402
from elalora_vit.integrations.hf import TARGETS, default_targets  # noqa: E402

T = transformers
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
              patch_size=8, num_labels=3)
# model type -> a tiny random model of that type
FAMILIES = {
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(**VISION)),
    "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(**VISION)),
    "dinov2": lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**VISION)),
    "swin": lambda: T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                               num_heads=[1, 2], window_size=4, num_labels=3)),
    "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=50, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=2)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=50, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                          num_heads=2, decoder_start_token_id=0, pad_token_id=0)),
    "mt5": lambda: T.MT5ForConditionalGeneration(T.MT5Config(vocab_size=50, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                             num_heads=2, decoder_start_token_id=0, pad_token_id=0)),
}
TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
DECODER = dict(TEXT, num_key_value_heads=1, pad_token_id=0, head_dim=16)
FAMILIES.update({
    "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**TEXT)),
    "xlm-roberta": lambda: T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(**TEXT)),
    "electra": lambda: T.ElectraForSequenceClassification(T.ElectraConfig(**TEXT, embedding_size=32)),
    "deberta-v2": lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**TEXT)),
    "llama": lambda: T.LlamaForSequenceClassification(T.LlamaConfig(**DECODER)),
    "mistral": lambda: T.MistralForSequenceClassification(T.MistralConfig(**DECODER)),
    "qwen2": lambda: T.Qwen2ForSequenceClassification(T.Qwen2Config(**DECODER)),
    "gemma": lambda: T.GemmaForSequenceClassification(T.GemmaConfig(**DECODER)),
})
# Linear layers inside these (heads, poolers, Swin's patch merging) are not projections of a block.
NOT_ADAPTED = {"classifier", "pre_classifier", "lm_head", "score", "pooler", "downsample"}


def _batch(model_type: str, model: nn.Module) -> tuple[dict, callable]:
    g = torch.Generator().manual_seed(0)
    if model_type in ("t5", "mt5"):
        ids = torch.randint(1, 50, (4, 6), generator=g)
        return {"input_ids": ids, "labels": ids.flip(1)}, lambda out: out.loss
    if model_type not in ("vit", "deit", "dinov2", "swin"):
        return {"input_ids": torch.randint(1, 50, (4, 6), generator=g), "labels": torch.tensor([0, 1, 0, 1])}, \
            lambda out: out.loss
    size = model.config.image_size
    return {"pixel_values": torch.randn(4, 3, size, size, generator=g), "labels": torch.tensor([0, 1, 2, 0])}, \
        lambda out: out.loss


def test_every_preset_is_tested_here():
    # bert: tests/integrations/test_hf.py; gpt2 (Conv1D): tests/integrations/test_peft.py
    assert set(FAMILIES) == set(TARGETS) - {"bert", "gpt2"}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_preset_adapts_the_projections_trains_and_merges(model_type):
    torch.manual_seed(0)
    model = FAMILIES[model_type]()
    assert model.config.model_type == model_type
    config = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    patch_model(model, default_targets(model), config)
    adapted = {name for name, _ in adapted_layers(model)}
    projections = {n for n in linears if not NOT_ADAPTED & set(n.split("."))}
    assert adapted == projections, (sorted(projections - adapted), sorted(adapted - projections))

    batch, loss_of = _batch(model_type, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    allocator = RankAllocator(model, config, total_steps=10)
    model.train()
    for _ in range(10):
        loss_of(model(**batch)).backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    assert allocator.history and allocator.total_rank() == allocator.initial_total_rank
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        merge_adapters(model)
        torch.testing.assert_close(model(**batch).logits, before, rtol=1e-3, atol=1e-3)
