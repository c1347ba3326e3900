"""The README's Python examples run as written."""

import re
import warnings
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    # indented blocks (inside list items) too, with their indentation removed
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", README.read_text(), flags=re.S | re.M)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]


def _run(block: str, namespace: dict) -> None:
    exec(compile(block, "README.md", "exec"), namespace)


def test_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = _python_blocks()[0]
    assert "RankAllocator" in example
    namespace: dict = {}
    _run(example, namespace)
    alloc = namespace["alloc"]
    assert alloc.total_rank() == alloc.initial_total_rank
    assert alloc.history, "the example should run at least one adjustment round"
    assert (tmp_path / "adapter.safetensors").is_file()


def test_every_other_python_snippet_runs_after_the_example(tmp_path, monkeypatch):
    """The later blocks are fragments that continue the first example; the names they
    leave to the reader (a loss function, the parameters to clip, a batch) are supplied."""
    monkeypatch.chdir(tmp_path)
    example, *snippets = _python_blocks()
    assert len(snippets) >= 2, "the README's Mixed precision and Recommended settings snippets"
    namespace: dict = {}
    _run(example, namespace)
    model = namespace["model"]
    namespace.update(
        criterion=torch.nn.functional.cross_entropy,
        params=[p for p in model.parameters() if p.requires_grad],
        x=torch.randn(8, 3, 32, 32),
        y=torch.randint(0, 10, (8,)),
    )
    for snippet in snippets:
        steps_before = namespace["alloc"].step_count
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")  # cuda snippets on a CPU
            warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler is enabled, but CUDA.*")
            _run(snippet, namespace)
        if "alloc.step" in snippet:
            assert namespace["alloc"].step_count == steps_before + 1
