"""Helpers for error messages that speak to the user."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message, or its type name when it has none
    (long library errors, such as a stack of unpickler notes, stay readable in ours)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
