"""Validators that turn a bad argument into a readable error."""

from __future__ import annotations

from collections.abc import Iterable


class DataError(ValueError):
    """A data file or folder does not have the expected content or layout."""


def check_option(name: str, value, allowed: Iterable):
    """Return ``value`` if it is one of ``allowed``, else raise a ValueError listing them."""
    allowed = list(allowed)
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {shown}")
    return value
