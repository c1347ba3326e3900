"""Adapters on ``nn.Conv2d`` (ungrouped): the update is the linear map of each patch,
``Q`` as kernels with the base layer's geometry and ``P`` as a 1 x 1 convolution. Checked
against the convolution of an independently built merged kernel, through training rounds,
merging, adapter files and PEFT's own Conv2d LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elalora_vit import ElaLoRAConfig, find_adapters, patch_model
from tests.core.layer_kinds import assert_merges_and_round_trips, assert_peft_round_trip, perturb, train_through_rounds


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)                               # a patch embedding
        self.body = nn.Conv2d(8, 12, 3, padding=1, dilation=1)                  # a 3 x 3 conv with padding
        self.wide = nn.Conv2d(12, 12, 3, padding=2, dilation=2, padding_mode="reflect")
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)                    # depthwise: not adapted
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.gelu(self.stem(x))
        x = F.gelu(self.body(x))
        x = F.gelu(self.wide(x))
        return self.head(self.dw(x).mean(dim=(2, 3)))


TARGETS = ["stem", "body", "wide"]


def _patched(method="elalora", **cfg):
    torch.manual_seed(0)
    model = ConvNet()
    config = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1, **cfg)
    patch_model(model, TARGETS, config, method=method)
    model.head.requires_grad_(True)
    return model, config


@pytest.mark.parametrize("method", ["elalora", "lora"])
def test_the_update_is_a_convolution_with_the_merged_kernel(method):
    model, _ = _patched(method)
    x = torch.randn(2, 3, 16, 16)
    base = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))  # lambda = 0 / B = 0: the base function
    perturb(model)
    layer = model.body
    with torch.no_grad():
        # independently: the update's (out, in * k * k) matrix from the factors, as a kernel
        scale = layer.slot_scale()
        delta = sum(layer.lora_B[0][:, i : i + 1] * scale[0, i] @ layer.lora_A[0][i : i + 1] for i in range(layer.capacity))
        kernel = layer.base_layer.weight + delta.reshape(12, 8, 3, 3)
        h = torch.randn(2, 8, 4, 4)
        expected = F.conv2d(h, kernel, layer.base_layer.bias, padding=1)
        torch.testing.assert_close(layer(h), expected, rtol=1e-5, atol=1e-5)
        wide = model.wide  # reflect padding and dilation go through the adapter too
        g = torch.randn(2, 12, 4, 4)
        unmerged = wide(g)
        wide.merge()
        torch.testing.assert_close(wide(g), unmerged, rtol=1e-5, atol=1e-5)
        wide.unmerge()


def test_a_conv_model_trains_through_rounds_merges_and_round_trips_its_adapter_file(tmp_path):
    model, config = _patched()
    assert [a.layer.base_layer for a in find_adapters(model)] == [model.stem.base_layer, model.body.base_layer,
                                                                   model.wide.base_layer]
    assert isinstance(model.dw, nn.Conv2d)
    train_through_rounds(model, config, lambda g: (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)))
    assert_merges_and_round_trips(model, torch.randn(2, 3, 16, 16), ConvNet, tmp_path / "adapter")


def test_peft_loads_the_exported_conv_adapters_and_they_import_back(tmp_path):
    pytest.importorskip("peft")
    from elalora_vit.integrations.peft import export_peft

    from elalora_vit.export import ExportError

    model, config = _patched()
    perturb(model)
    with pytest.raises(ExportError, match="'wide' is a Conv2d with dilation \\(2, 2\\): PEFT's Conv2d LoRA ignores it"):
        export_peft(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    torch.manual_seed(0)
    model = ConvNet()
    patch_model(model, ["stem", "body"], config)  # the geometry PEFT's Conv2d LoRA reproduces
    model.head.requires_grad_(True)
    perturb(model)
    assert_peft_round_trip(model, torch.randn(2, 3, 16, 16), ConvNet, tmp_path / "peft", config, adapters=2)


@pytest.mark.parametrize("geometry", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                      dict(kernel_size=3, padding=2, dilation=2),
                                      dict(kernel_size=(3, 1), padding=(1, 0), padding_mode="reflect"),
                                      dict(kernel_size=2, stride=2, bias=False)])
@pytest.mark.parametrize("parts", [None, ["a", "b"]])
def test_every_geometry_equals_the_base_convolution_with_the_merged_kernel(geometry, parts):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, **geometry))
    patch_model(model, ["0"], ElaLoRAConfig(rank=2, max_rank=3), split={"0": parts} if parts else None)
    perturb(model)
    layer = model[0]
    conv = copy.deepcopy(layer.base_layer)
    with torch.no_grad():
        scale = layer.slot_scale()  # (n, R)
        rows = [layer.lora_B[p] @ torch.diag(scale[p]) @ layer.lora_A[p] for p in range(layer.n_parts)]
        conv.weight += torch.cat(rows).reshape(conv.weight.shape)  # parts are row blocks of the output
        x = torch.randn(2, 4, 9, 9)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
