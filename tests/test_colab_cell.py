"""The Colab cell that opens every notebook: identical everywhere, inert outside Colab, and in Colab it
mounts Google Drive and puts the suite's checkout (BT_SUITE_SOURCE, default: on the Drive) on sys.path;
``notebook_setup`` then installs its dependencies (tests/test_notebook_helpers.py)."""

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
def colab(monkeypatch):
    """A fake Colab session: ``google.colab.drive.mount`` records its mount points."""
    mounts = []
    drive = types.ModuleType("google.colab.drive")
    drive.mount = lambda mountpoint, **kwargs: mounts.append(mountpoint)
    module = types.ModuleType("google.colab")
    module.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", module)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("BT_SUITE_SOURCE", raising=False)
    return mounts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_every_notebook_opens_with_the_same_short_colab_cell_before_its_parameters(path):
    cells = nbformat.read(path, as_version=4).cells
    index, cell = first_code_cell(path)
    parameters = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert cell.metadata.get("tags") == ["colab-setup"]
    assert cell.source == CELL_SOURCE, f"{path.name}: the Colab cell differs from 00_data's"
    assert index < parameters
    assert not cell.outputs and cell.execution_count is None


def test_the_cell_is_a_few_lines():
    assert len(CELL_SOURCE.splitlines()) <= 5
    assert 'os.environ.get("BT_SUITE_SOURCE", "/content/drive/MyDrive/brain-tuning")' in CELL_SOURCE


def test_outside_colab_the_cell_does_nothing(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    path_before = list(sys.path)
    namespace = run_cell()
    assert sys.path == path_before
    assert set(namespace) == {"__name__", "__builtins__", "os", "sys"}
    assert capsys.readouterr().out == ""


def test_in_colab_it_mounts_the_drive_and_puts_the_checkout_first_on_the_path(colab):
    run_cell()
    assert colab == ["/content/drive"]
    assert sys.path[0] == DEFAULT_SOURCE


def test_in_colab_bt_suite_source_names_another_checkout(colab, monkeypatch, tmp_path):
    monkeypatch.setenv("BT_SUITE_SOURCE", str(tmp_path))
    run_cell()
    assert sys.path[0] == str(tmp_path)
