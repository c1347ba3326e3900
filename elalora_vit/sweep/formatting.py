"""How the sweep report writes numbers, durations and Markdown tables."""

from __future__ import annotations

from typing import Iterable


def markdown_table(head: list[str], rows: Iterable[list[str]]) -> str:
    """A Markdown table with header ``head``."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def best_methods(methods: list[str], column) -> set[str]:
    """The methods whose ``column(method).value`` is the best (ties included); none unless two or more have one."""
    values = {m: column(m).value for m in methods if column(m).value is not None}
    if len(values) < 2:
        return set()
    top = max(values.values())
    return {m for m, v in values.items() if v >= top - 1e-9}


def fmt(value: float | None) -> str:
    """A top-1 value with one decimal; ``–`` for none."""
    return "–" if value is None else f"{value:.1f}"


def signed(value: float | None) -> str:
    """A difference in points, signed, with one decimal; ``–`` for none."""
    return "–" if value is None else f"{value:+.1f}"


def num(value: float | None, digits: int = 4) -> str:
    """A number for the CSV: at most ``digits`` decimals, no trailing zeros; empty for none."""
    if value is None:
        return ""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None, or None."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def count(value: float | None) -> str:
    """A parameter count: ``1.23 M``, ``4.5 k`` or ``678``."""
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def duration(seconds: float) -> str:
    """Seconds as ``1.5 h``, ``2.0 min`` or ``30.0 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def cell_text(text: str, limit: int = 200) -> str:
    """``text`` on one line, safe in a Markdown table cell, cut to ``limit`` characters."""
    text = one_line(text).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
