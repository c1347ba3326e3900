"""The Python examples of README.md and of the guides (docs/*.md) run as written."""

import re
import warnings
from pathlib import Path

import pytest
import torch

from tests.docs_pages import PAGES, README, REPO, page_name

API_GUIDE = REPO / "docs" / "python-api.md"


def _python_blocks(page: Path | None = None):
    """The python blocks of one page, or of every page in order; indented blocks (inside list
    items) too, with their indentation removed."""
    pages = [page] if page else PAGES
    found = []
    for path in pages:
        blocks = re.findall(r"^( *)```python\n(.*?)^\1```", path.read_text(), flags=re.S | re.M)
        found += [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]
    return found


def _run(block: str, namespace: dict) -> None:
    exec(compile(block, "docs", "exec"), namespace)


def _example() -> str:
    """The complete example the other fragments continue: the Python API guide's first block."""
    return _python_blocks(API_GUIDE)[0]


@pytest.mark.parametrize("page", [README, API_GUIDE], ids=page_name)
def test_python_api_example_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = _python_blocks(page)[0]
    assert "RankAllocator" in example
    namespace: dict = {}
    _run(example, namespace)
    alloc = namespace["alloc"]
    assert alloc.total_rank() == alloc.initial_total_rank
    assert alloc.history, "the example should run at least one adjustment round"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "elalora_allocator.pt").is_file()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(namespace["restored"].eval()(x), namespace["model"].eval()(x), rtol=0, atol=1e-5)


def test_every_other_python_snippet_runs_after_the_example(tmp_path, monkeypatch):
    """The other blocks of every page are fragments that continue the complete example; the
    names they leave to the reader (a loss function, the parameters to clip, a batch) are supplied."""
    monkeypatch.chdir(tmp_path)
    example = _example()
    snippets = [block for block in _python_blocks() if not _standalone(block) and block != example]
    assert len(snippets) >= 1, "the GPU guide's mixed precision snippet"
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


def test_language_model_example_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    (example,) = [block for block in _python_blocks() if "ElaLoRACallback" in block]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["callback"].allocator.step_count == 30
    assert namespace["callback"].allocator.history, "the example should run at least one adjustment round"
    assert (tmp_path / "bert-adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "bert-adapter" / "model.safetensors").exists()
    assert (tmp_path / "runs" / "bert-elalora" / "checkpoint-30" / "elalora_allocator.pt").is_file()


def _standalone(block: str) -> bool:
    """Blocks with a test of their own: the language-model example and the trained-run tour."""
    return "ElaLoRACallback" in block or "load_run(" in block


def test_using_a_trained_adapter_runs(tmp_path, monkeypatch):
    """The tour of a finished run (evaluate, predict, export) on a real quick-start run,
    shortened to one epoch, and its NLP part on a tiny BERT."""
    import pytest
    from PIL import Image

    transformers = pytest.importorskip("transformers")
    from elalora_vit import cli

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart-digits.yaml"
    assert cli.main(["train", "--config", str(config), "--no-progress", "--set", "optim.epochs=1",
                     "--set", "model.kwargs={img_size: 32, patch_size: 8, depth: 1}"]) == 0
    Image.new("RGB", (8, 8), (200, 30, 30)).save("a.png")
    (block,) = [block for block in _python_blocks() if "load_run(" in block]
    namespace: dict = {}
    _run(_example(), namespace)  # patch_model and cfg, as the reader has them
    bert_config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, num_labels=2)
    namespace["bert"] = transformers.BertForSequenceClassification(bert_config)
    _run(block, namespace)
    assert (tmp_path / "runs/quickstart-digits/elalora/seed0/eval-val200.json").is_file()
    assert (tmp_path / "exported/digits-timm/config.json").is_file()
    assert (tmp_path / "exported/bert-peft/adapter_config.json").is_file()


def _slug(heading: str) -> str:
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # headings outside code blocks
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", prose, flags=re.M)}


def test_every_relative_link_of_the_readme_names_a_file_and_heading_that_exist():
    """The README is read on GitHub, outside the site (whose links `mkdocs build --strict`
    checks): each relative link must name a file of the repository, and each #anchor a
    heading of that file."""
    links = re.findall(r"\]\(([^)\s:]*?)(?:#([^)\s]+))?\)", README.read_text())
    assert len(links) > 10, "the README links into the docs"
    for target, anchor in links:
        path = README.parent / target if target else README
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README links to {target or 'README.md'}#{anchor}, which no heading makes"


def test_readme_fits_in_300_lines():
    assert len(README.read_text().splitlines()) <= 300
