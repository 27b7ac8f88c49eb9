"""The Colab setup cell that opens every notebook: identical everywhere, inert outside Colab, and in Colab
it mounts Google Drive and pip-installs the suite from BT_SUITE_SOURCE (default: a checkout on the Drive)."""

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DEFAULT_SOURCE = "/content/drive/MyDrive/brain-tuning"


def first_code_cell(path: Path) -> tuple[int, nbformat.NotebookNode]:
    cells = nbformat.read(path, as_version=4).cells
    return next((index, cell) for index, cell in enumerate(cells) if cell.cell_type == "code")


CELL_SOURCE = first_code_cell(ROOT / "notebooks" / "00_data.ipynb")[1].source


def run_cell() -> dict:
    """Execute the cell's source as a notebook would, in a fresh namespace."""
    namespace = {"__name__": "__main__"}
    exec(compile(CELL_SOURCE, "colab-setup", "exec"), namespace)
    return namespace


@pytest.fixture
def pip_calls(monkeypatch):
    """Arguments of every subprocess.run call (none is really run)."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append((list(args), kwargs)))
    return calls


@pytest.fixture
def colab(monkeypatch):
    """A fake Colab session: ``google.colab.drive.mount`` records its mount points; bt_utils not installed."""
    mounts = []
    drive = types.ModuleType("google.colab.drive")
    drive.mount = lambda mountpoint, **kwargs: mounts.append(mountpoint)
    module = types.ModuleType("google.colab")
    module.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", module)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "bt_utils" else real_find_spec(name, *args, **kwargs))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("BT_SUITE_SOURCE", raising=False)
    return mounts


def test_every_notebook_opens_with_the_same_colab_cell_before_its_parameters():
    assert len(NOTEBOOKS) == 7
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        index, cell = first_code_cell(path)
        parameters = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assert cell.metadata.get("tags") == ["colab-setup"], path.name
        assert cell.source == CELL_SOURCE, f"{path.name}: the Colab cell differs from 00_data's"
        assert index < parameters, path.name
        assert not cell.outputs and cell.execution_count is None, path.name
    assert 'os.environ.get("BT_SUITE_SOURCE", "/content/drive/MyDrive/brain-tuning")' in CELL_SOURCE


def test_outside_colab_the_cell_does_nothing(monkeypatch, pip_calls, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: pytest.fail("looked for bt_utils"))
    namespace = run_cell()
    assert pip_calls == []
    assert set(namespace) == {"__name__", "__builtins__", "sys"}
    assert capsys.readouterr().out == ""


def test_in_colab_it_mounts_the_drive_and_installs_the_source_given(colab, pip_calls, monkeypatch, capsys):
    monkeypatch.setenv("BT_SUITE_SOURCE", "git+https://example.invalid/brain-tuning.git@main")
    path_before = list(sys.path)
    run_cell()
    assert colab == ["/content/drive"]
    assert pip_calls == [([sys.executable, "-m", "pip", "install", "-q",
                           "git+https://example.invalid/brain-tuning.git@main"], {"check": True})]
    assert sys.path == path_before
    assert "pip install git+https://example.invalid/brain-tuning.git@main" in capsys.readouterr().out


def test_in_colab_a_folder_source_is_installed_editable_and_importable_now(colab, pip_calls, monkeypatch, tmp_path):
    checkout = tmp_path / "brain-tuning"
    checkout.mkdir()
    monkeypatch.setenv("BT_SUITE_SOURCE", str(checkout))
    run_cell()
    assert colab == ["/content/drive"]
    assert pip_calls == [([sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)], {"check": True})]
    assert sys.path[0] == str(checkout)


def test_in_colab_with_the_suite_installed_it_does_nothing(colab, pip_calls, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object())
    run_cell()
    assert colab == [] and pip_calls == []
    assert "already installed" in capsys.readouterr().out


def test_in_colab_a_missing_default_checkout_is_a_clear_error(colab, pip_calls):
    assert not Path(DEFAULT_SOURCE).exists()
    with pytest.raises(FileNotFoundError, match=f"no folder {re.escape(DEFAULT_SOURCE)}: .*BT_SUITE_SOURCE"):
        run_cell()
    assert colab == ["/content/drive"]  # the Drive is mounted first: the default checkout is on it
    assert pip_calls == []


def test_in_colab_a_missing_folder_in_bt_suite_source_is_the_same_error(colab, pip_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("BT_SUITE_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"no folder {re.escape(str(tmp_path / 'nowhere'))}: .*BT_SUITE_SOURCE"):
        run_cell()
    assert pip_calls == []
