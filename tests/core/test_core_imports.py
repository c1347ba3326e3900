"""The core is backbone-agnostic: an NLP user imports it without timm, torchvision or the data code."""

import subprocess
import sys


def test_core_imports_no_vision_or_data_code():
    code = (
        "import sys, elalora_vit.core\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'torchvision', 'tensorflow_datasets')"
        " or m.startswith('elalora_vit.data') or m.startswith('elalora_vit.vit') or m.startswith('elalora_vit.train'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
