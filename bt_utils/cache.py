"""The one cache folder of the package (models, templates, features). Safe to delete."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BT_UTILS_CACHE_DIR"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root folder of the bt_utils cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bt_utils"
