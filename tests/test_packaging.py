"""The install files agree with each other and the console command works."""

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
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


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_package_bt_utils_imports_is_declared_directly():
    """A module imported by bt_utils comes from a dependency pyproject.toml names, not one it gets through another."""
    imported = set()
    for path in (ROOT / "bt_utils").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    imported -= {*sys.stdlib_module_names, "bt_utils", "datasets"}  # datasets: optional, its import says so
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_distribution_name(requirement) for requirement in project["dependencies"]}
    declared.add("distributed")  # as dask[distributed]
    providers = importlib.metadata.packages_distributions()
    undeclared = {module: providers.get(module) for module in imported
                  if not {_distribution_name(name) for name in providers.get(module, [module])} & declared}
    assert not undeclared
    assert "sentence-transformers" in declared


def test_a_wheel_install_leaves_out_the_notebooks_and_says_to_install_from_a_checkout(tmp_path):
    """`pip install git+...` installs the package alone: bt sweep and bt demo say how to get the notebooks."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "bt_utils", source / "bt_utils", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source),
         "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))) as wheel:
        names = wheel.namelist()
        wheel.extractall(tmp_path / "site")
    assert "bt_utils/sweeps/notebooks.py" in names and "bt_utils/demo/__init__.py" in names
    assert not [name for name in names if name.startswith(("notebooks/", "papermill_runs/"))]

    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the wheel's bt_utils, not the checkout's
    for command in (["sweep", "status", str(ROOT / "papermill_runs" / "demo.yaml")], ["demo"]):
        out = subprocess.run([sys.executable, "-m", "bt_utils.cli", *command], cwd=tmp_path, env=environment,
                             capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert f"notebooks folder {tmp_path / 'site' / 'notebooks'} does not exist" in out.stderr
        assert "pip install -e <checkout>" in out.stderr and "--notebooks DIR" in out.stderr
    assert not (tmp_path / "site" / "demo_output").exists() and not (tmp_path / "demo_output").exists()
