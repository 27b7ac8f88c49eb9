"""The install files agree with each other and the console command works."""

import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_pip_section_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert set(pip_section) - {"-e ."} == wanted
    assert "python=3.11" in environment["dependencies"]
    assert "torch==2.13.0" in wanted


def test_notebooks_are_committed_without_outputs_and_have_parameters():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        assert notebook.cells[0].cell_type == "markdown", path.name
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_bt_console_command_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "bt_utils.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo-data" in out.stdout


def test_bt_reports_bad_arguments_readably(tmp_path):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file.txt").write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "bt_utils.cli", "demo-data", "--out", str(tmp_path / "occupied")],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "is not empty" in out.stderr
    assert (tmp_path / "occupied" / "file.txt").read_text() == "keep me"
