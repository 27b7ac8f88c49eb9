"""Downstream tasks by name: :data:`TASKS` and :func:`load_task`.

The real-data tasks (:mod:`bt_utils.downstream.corpora`) are registered here; extensions register more (the demo's
offline tasks). The task types live in :mod:`bt_utils.downstream.task_data` and are importable from here too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry
from ..validation import DataError
from .corpora import (
    CREMA_D_EMOTIONS,
    CREMA_D_URL,
    HF_PREFIX,
    LIBRISPEECH_URL,
    SLURP_TARGETS,
    SLURP_URL,
    SPEECH_COMMANDS_URL,
    SPEECH_COMMANDS_WORDS,
    TIMIT_FOLDING,
    TIMIT_PHONES_39,
    TIMIT_PRESENCE_CLASSES,
    TIMIT_PROTOCOLS,
    TIMIT_URL,
    crema_d,
    librispeech,
    slurp,
    speech_commands,
    timit_asr,
    timit_phonemes,
    timit_sentence_type,
)
from .task_data import (
    KINDS,
    SAMPLE_RATE,
    SPLITS,
    DownstreamTask,
    Example,
    audio_length,
    decode_multilabel,
    encode_multilabel,
    load_audio,
)

__all__ = [
    "CREMA_D_EMOTIONS", "CREMA_D_URL", "DataError", "DownstreamTask", "Example", "HF_PREFIX", "KINDS",
    "LIBRISPEECH_URL", "SAMPLE_RATE", "SLURP_TARGETS", "SLURP_URL", "SPEECH_COMMANDS_URL", "SPEECH_COMMANDS_WORDS",
    "SPLITS", "TASKS", "TIMIT_FOLDING", "TIMIT_PHONES_39", "TIMIT_PRESENCE_CLASSES", "TIMIT_PROTOCOLS",
    "TIMIT_URL", "TaskSpec", "audio_length", "crema_d", "decode_multilabel", "encode_multilabel", "librispeech",
    "load_audio", "load_task", "slurp", "speech_commands", "timit_asr", "timit_phonemes", "timit_sentence_type",
]

@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to load it and where its data comes from.

    Attributes
    ----------
    loader : callable
        ``loader(source, **options)`` for real tasks, ``loader(**options)`` when
        ``needs_source`` is False, returning a :class:`DownstreamTask`.
    where : str
        Where to get the data (shown when it is missing).
    needs_source : bool
        Whether the task reads data from a folder or ``"hf:"`` id.
    """

    loader: Callable[..., DownstreamTask]
    where: str
    needs_source: bool = True


TASKS: Registry[TaskSpec] = Registry("downstream task")
"""Tasks by name: the real-data tasks below, plus those that extensions register (the demo's)."""

for _name, _loader, _where in (
    ("timit_phoneme", timit_phonemes, TIMIT_URL),
    ("timit_sentence_type", timit_sentence_type, TIMIT_URL),
    ("timit_asr", timit_asr, TIMIT_URL),
    ("speech_commands", speech_commands, SPEECH_COMMANDS_URL),
    ("crema_d_emotion", crema_d, CREMA_D_URL),
    ("slurp_intent", functools.partial(slurp, target="intent"), SLURP_URL),
    ("slurp_action", functools.partial(slurp, target="action"), SLURP_URL),
    ("librispeech_asr", librispeech, LIBRISPEECH_URL),
):
    TASKS.register(_name, TaskSpec(_loader, _where))


def load_task(name: str, source: str | os.PathLike | None = None, **options) -> DownstreamTask:
    """A task by name, read from ``source`` when it needs data.

    Parameters
    ----------
    name : str
        A name in :data:`TASKS`.
    source : path-like or str, optional
        Real tasks: the local folder or ``"hf:<dataset id>"``.
    **options
        Passed to the task's loader.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    spec = TASKS[name]
    if not spec.needs_source:
        return spec.loader(**options)
    if source is None:
        raise FileNotFoundError(f"task {name!r} reads real data: pass its folder as source (get it from "
                                f"{spec.where}), or '{HF_PREFIX}<dataset id>' for a Hugging Face datasets copy")
    return spec.loader(source, **options)
