"""The pages whose commands and examples the tests run: README.md and every page of the
documentation site under docs/ (the generated references list flags and keys, not commands)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDES = sorted(p for p in (REPO / "docs").rglob("*.md") if "reference" not in p.relative_to(REPO / "docs").parts)
PAGES = [README, *GUIDES]


def page_name(path: Path) -> str:
    return str(path.relative_to(REPO))


def pages_text() -> str:
    """Every page, one after the other."""
    return "\n".join(p.read_text() for p in PAGES)
