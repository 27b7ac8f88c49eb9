"""Read a CTranslate2 ``model.bin`` (format version 6) with plain NumPy.

The format and how its Whisper variables map to Hugging Face's are in docs/offline_models.md.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..validation import DataError

CT2_BINARY_VERSION = 6
"""The CTranslate2 ``model.bin`` format version this reader understands."""


_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_ITEMSIZE = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}


class CT2FormatError(DataError):
    """A file is not a readable CTranslate2 ``model.bin`` (or not a Whisper one)."""


class CT2Checkpoint(NamedTuple):
    """Everything stored in a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def _as_parts(path_or_parts) -> list[Path]:
    if isinstance(path_or_parts, (str, os.PathLike)):
        parts = [Path(path_or_parts)]
    else:
        parts = [Path(p) for p in path_or_parts]
    if not parts:
        raise ValueError("no model file given")
    if len(parts) == 1 and parts[0].is_dir():
        parts = _model_bin_parts(parts[0])
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"CTranslate2 model file not found: {part}")
    return parts


def _model_bin_parts(folder: Path) -> list[Path]:
    """``model.bin`` in ``folder``, else its ``model.bin.part<N>`` files in order."""
    single = folder / "model.bin"
    if single.is_file():
        return [single]
    numbered = []
    for candidate in folder.glob("model.bin.part*"):
        match = re.fullmatch(r"model\.bin\.part(\d+)", candidate.name)
        if match:
            numbered.append((int(match.group(1)), candidate))
    if not numbered:
        raise FileNotFoundError(f"no model.bin (or model.bin.part1, ...) in {folder}")
    return [p for _, p in sorted(numbered)]


def _read_bytes(parts: Sequence[Path]) -> bytearray:
    sizes = [p.stat().st_size for p in parts]
    buffer = bytearray(sum(sizes))
    view = memoryview(buffer)
    offset = 0
    for part, size in zip(parts, sizes):
        with open(part, "rb") as handle:
            got = handle.readinto(view[offset : offset + size])
        if got != size:
            raise CT2FormatError(f"{part}: short read ({got} of {size} bytes)")
        offset += size
    return buffer


class _Cursor:
    """Bounds-checked little-endian reader over the concatenated file bytes."""

    def __init__(self, buffer: bytearray, label: str):
        self.buffer = buffer
        self.label = label
        self.offset = 0
        self.context = "the header"

    def _need(self, n: int) -> None:
        if self.offset + n > len(self.buffer):
            raise CT2FormatError(
                f"{self.label}: truncated CTranslate2 file: needs {n} more bytes at offset "
                f"{self.offset} while reading {self.context}, but the file has {len(self.buffer)} bytes"
            )

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        self._need(size)
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("H")
        self._need(length)
        raw = bytes(self.buffer[self.offset : self.offset + length])
        self.offset += length
        if length == 0 or raw[-1] != 0:
            raise CT2FormatError(
                f"{self.label}: corrupt CTranslate2 file: string at offset {self.offset - length} "
                f"is not NUL-terminated (reading {self.context})"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.label}: corrupt string while reading {self.context}: {err}") from None

    def array(self, type_id: int, shape: tuple[int, ...], n_bytes: int) -> np.ndarray:
        self._need(n_bytes)
        count = int(np.prod(shape, dtype=np.int64))
        if count * _ITEMSIZE[type_id] != n_bytes:
            raise CT2FormatError(
                f"{self.label}: corrupt CTranslate2 file: {self.context} has shape {shape} and "
                f"data type {type_id} but {n_bytes} bytes"
            )
        if type_id == 5:  # bfloat16: the upper half of a float32
            raw = np.frombuffer(self.buffer, dtype="<u2", count=count, offset=self.offset)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dtype = np.dtype(_DTYPES[type_id]).newbyteorder("<")
            arr = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.offset)
        self.offset += n_bytes
        return arr.reshape(shape)


def read_ct2_checkpoint(path_or_parts) -> CT2Checkpoint:
    """Read a CTranslate2 ``model.bin`` (format version 6) with its header.

    Raises
    ------
    CT2FormatError
        Another format version, truncated or corrupt content, or trailing bytes; the message names the file.
    FileNotFoundError
        A file is missing.
    """
    parts = _as_parts(path_or_parts)
    label = " + ".join(str(p) for p in parts)
    cursor = _Cursor(_read_bytes(parts), label)

    version = cursor.unpack("I")
    if version != CT2_BINARY_VERSION:
        raise CT2FormatError(
            f"{label}: not a CTranslate2 model.bin of format version {CT2_BINARY_VERSION} "
            f"(the first 4 bytes read as version {version}); "
            "check that the file is a CTranslate2 model and that split parts are complete and in order"
        )
    spec = cursor.string()
    revision = cursor.unpack("I")
    n_variables = cursor.unpack("I")

    variables: dict[str, np.ndarray] = {}
    for index in range(n_variables):
        cursor.context = f"variable {index} of {n_variables}"
        name = cursor.string()
        cursor.context = f"variable {name!r}"
        rank = cursor.unpack("B")
        shape = tuple(cursor.unpack("I") for _ in range(rank))
        type_id = cursor.unpack("B")
        if type_id not in _DTYPES:
            raise CT2FormatError(f"{label}: variable {name!r} has unknown data type id {type_id}")
        n_bytes = cursor.unpack("I")
        if name in variables:
            raise CT2FormatError(f"{label}: variable {name!r} is stored twice")
        variables[name] = cursor.array(type_id, shape, n_bytes)

    cursor.context = "the alias table"
    n_aliases = cursor.unpack("I")
    aliases: dict[str, str] = {}
    for _ in range(n_aliases):
        alias = cursor.string()
        target = cursor.string()
        aliases[alias] = target
    for alias, target in aliases.items():
        seen = {alias}
        while target in aliases and target not in variables:
            if target in seen:
                raise CT2FormatError(f"{label}: alias {alias!r} is part of a cycle of aliases ({sorted(seen)})")
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise CT2FormatError(f"{label}: alias {alias!r} points to unknown variable {target!r}")
        variables[alias] = variables[target]

    if cursor.offset != len(cursor.buffer):
        raise CT2FormatError(
            f"{label}: {len(cursor.buffer) - cursor.offset} unexpected bytes after the alias table "
            "(wrong or extra file parts?)"
        )
    return CT2Checkpoint(spec=spec, revision=revision, variables=variables, aliases=aliases)


def read_ct2_model(path_or_parts) -> dict[str, np.ndarray]:
    """Read the tensors of a CTranslate2 ``model.bin`` (format version 6).

    Raises
    ------
    CT2FormatError
        As for :func:`read_ct2_checkpoint`.
    """
    return read_ct2_checkpoint(path_or_parts).variables
