"""Named registries that extensions fill: models, tasks, speech voices, datasets, commands, surface mappings.

The core package never imports its extensions: each declares an entry point in ``bt_utils.plugins`` whose function
registers its entries, run once when a registry is first read (the demo, :mod:`bt_utils.demo`, is one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

PLUGIN_GROUP = "bt_utils.plugins"

T = TypeVar("T")
_plugins_loaded = False


def load_plugins() -> None:
    """Run every ``bt_utils.plugins`` entry point once (later calls do nothing)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()()


class Registry(Mapping, Generic[T]):
    """A read-only mapping of names to entries that extensions add to with :meth:`register`.

    Parameters
    ----------
    kind : str
        What the entries are (used in error messages), e.g. ``"model"``.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; registering the same name twice is an error."""
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"a {self.kind} named {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)


SPEECH_SYNTHESIZERS: Registry[Callable] = Registry("speech synthesiser")
"""Text-to-speech functions ``(text, voice, words_per_minute, pitch, sample_rate) -> Utterance``."""

DATASET_BUILDERS: Registry[Callable] = Registry("dataset builder")
"""Functions ``(data_root) -> bool`` that build a dataset at ``data_root`` if it is theirs to build."""

COMMANDS: Registry[Callable] = Registry("command")
"""Functions ``(subparsers) -> None`` that add a sub-command to the ``bt`` command line."""

SURFACE_MAPPINGS: Registry[Callable] = Registry("surface mapping")
"""Functions ``(layout, radius_mm, cache_dir) -> scipy.sparse matrix of shape (20484, n_voxels)`` that carry
the voxels of a layout to fsaverage5 (see :mod:`bt_utils.viz.fsaverage`), keyed by pycortex subject."""
