import os
import tempfile

import pytest
import torch

# The decoded-image cache of every run the tests start (and of their subprocesses) lives in a
# fresh folder, never in the user's ~/.cache.
os.environ["ELALORA_VIT_CACHE"] = tempfile.mkdtemp(prefix="elalora-vit-test-cache-")

VIT_TARGETS = ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"]
QKV_SPLIT = {"attn.qkv": ["q", "k", "v"]}


def make_tiny_vit(num_classes: int = 5, depth: int = 2, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth, num_classes=num_classes
    )


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


# One torch thread: faster than 2 on a shared 2-core runner, and the same count for every
# run a test compares (CPU kernels sum in a thread-dependent order).  Set at import as well
# as per test, so that module-scoped fixtures, built before any per-test fixture, use it too.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # again per test: a test may have changed it
