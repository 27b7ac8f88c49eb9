"""Named protocols: the values of the notebooks' settings for the paper's protocol and for the offline demo.

A notebook parameter left at ``None`` takes the value of the notebook's protocol: ``"paper"``, ``"demo"`` or
``"auto"`` (the demo's settings only for the demo dataset). A value given explicitly always wins."""

from __future__ import annotations

from collections.abc import Mapping

from .validation import check_option

PROTOCOLS: dict[str, dict[str, object]] = {
    "paper": {
        # brain-tuning
        "epochs": 30, "batch_size": 128, "encoder_lr": 5e-5, "head_lr": 1e-4, "warmup_epochs": 5.0,
        "native_length": False, "max_train_trs": None, "max_validation_trs": None, "trainable_layers": None,
        "head_init": "random", "patience": 5,
        # features and encoding models
        "feature_mode": "reference", "feature_context_s": 16.0, "feature_precision": "off", "n_permutations": 1000,
    },
    "demo": {
        # brain-tuning: the top two layers on cached lower-layer states, the head started as a ridge probe, one epoch
        # at a higher learning rate
        "epochs": 1, "batch_size": 16, "encoder_lr": 2e-4, "head_lr": 1e-3, "warmup_epochs": 0.5,
        "native_length": True, "max_train_trs": None, "max_validation_trs": None, "trainable_layers": 2,
        "head_init": "probe", "patience": 5,
        # features: the fast windows with 8 s of context, Whisper at each window's real length, bf16 where native
        "feature_mode": "fast", "feature_context_s": 8.0, "feature_precision": "auto", "n_permutations": 200,
    },
}
"""Setting values per protocol, by notebook parameter name."""

DEMO_SHORTCUTS = {
    "trainable_layers": "only the top layers are tuned, on cached states of the frozen ones",
    "epochs": "1 epoch instead of 30, at a higher learning rate",
    "head_init": "the head starts as a ridge probe of the initial model instead of at random",
    "native_length": "Whisper runs on each input's real length instead of padded to 30 s",
    "feature_mode": "fast feature windows instead of the protocol's one window per 0.1 s",
    "feature_context_s": "8 s of context per frame instead of 16 s",
    "feature_precision": "layer features under bfloat16 autocast where the device runs it natively, not float32",
    "n_permutations": "200 permutations for voxel-wise p-values instead of 1000",
}
"""What each demo setting trades away, for the notebooks to print."""

PROTOCOL_NAMES = ("auto", *PROTOCOLS)


def resolve_protocol(protocol: str, is_demo: bool) -> str:
    """The protocol a notebook runs: ``protocol`` itself, or for ``"auto"`` the demo's on demo data, else the
    paper's."""
    check_option("protocol", protocol, PROTOCOL_NAMES)
    if protocol == "auto":
        return "demo" if is_demo else "paper"
    return protocol


def protocol_values(protocol: str, values: Mapping[str, object], is_demo: bool) -> tuple[str, dict[str, object]]:
    """Fill a notebook's settings left at None from a protocol.

    Parameters
    ----------
    protocol : {"auto", "paper", "demo"}
    values : mapping
        Notebook parameter name -> value; None means "the protocol's value".
    is_demo : bool
        Whether the dataset is the embedded demo (decides ``"auto"``).

    Returns
    -------
    name : str
        The protocol that ran.
    resolved : dict
        The same keys, with the protocol's values where ``values`` held None.
    """
    name = resolve_protocol(protocol, is_demo)
    defaults = PROTOCOLS[name]
    return name, {key: defaults[key] if value is None and key in defaults else value for key, value in values.items()}


def protocol_notes(protocol: str, values: Mapping[str, object]) -> list[str]:
    """One line per demo shortcut among ``values``, saying what it trades away (nothing for other protocols).

    Parameters
    ----------
    protocol : str
        The protocol that ran (as :func:`protocol_values` returns it).
    values : mapping
        The resolved settings, notebook parameter name -> value.
    """
    if protocol != "demo":
        return []
    return [f"demo shortcut: {name} = {values[name]!r}: {why}" for name, why in DEMO_SHORTCUTS.items()
            if name in values and values[name] == PROTOCOLS["demo"][name]]
