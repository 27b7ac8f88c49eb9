"""The resume state of a brain-tuning run: saved and loaded as tensors and plain values only.

A run folder's ``resume_state.pt`` holds what an interrupted run needs to go on exactly (model, optimiser,
schedules, random-number states, history). Run folders are shared, so the file is read with
``torch.load(weights_only=True)``: it may hold tensors, numbers, strings, lists, tuples and dicts, never an object
whose unpickling could run code. The random-number states are stored in those types.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ..results import atomic_path
from ..validation import DataError


def rng_states() -> dict:
    """States of Python's, numpy's global, torch's and (if present) CUDA's generators, as tensors and plain values."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` saved."""
    numpy_state = states["numpy"]
    random.setstate(states["python"])
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_resume_state(state: dict, path: str | os.PathLike) -> Path:
    """Write a resume state atomically."""
    with atomic_path(path) as staged:
        torch.save(state, staged)
    return Path(path)


def load_resume_state(path: str | os.PathLike) -> dict:
    """Read a resume state written by :func:`save_resume_state`, on the CPU, without running any code.

    Raises
    ------
    DataError
        The file holds anything but tensors and plain values (it was not written by bt_utils and is not loaded), or
        is damaged; the message names it and says that deleting it restarts the run from its first epoch.
    """
    path = Path(path)
    restart = (f"deleting it is safe (nothing else is lost: the run starts again from its first epoch and "
               f"rewrites {path.parent / 'checkpoint'})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), str(error).strip())
        raise DataError(f"{path} was not loaded: it holds more than tensors and plain values ({refused}); it was "
                        "written by an older bt_utils or by something else, and loading it could run code. "
                        f"{restart[0].upper()}{restart[1:]}") from None
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else "the file is empty"
        raise DataError(f"{path} is damaged ({type(error).__name__}: {reason}); {restart}") from None
