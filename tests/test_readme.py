"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = _python_blocks()[0]
    assert "RankAllocator" in example
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    alloc = namespace["alloc"]
    assert alloc.total_rank() == alloc.initial_total_rank
    assert alloc.history, "the example should run at least one adjustment round"
    assert (tmp_path / "adapter.safetensors").is_file()


def test_language_model_example_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    (example,) = [block for block in _python_blocks() if "ElaLoRACallback" in block]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["callback"].allocator.step_count == 30
    assert namespace["callback"].allocator.history, "the example should run at least one adjustment round"
    assert (tmp_path / "bert-adapter.safetensors").is_file()
    assert (tmp_path / "runs" / "bert-elalora" / "checkpoint-30" / "elalora_allocator.pt").is_file()
