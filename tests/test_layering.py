"""Imports point one way: down the layers of bt_utils, and never into the demo extension.

Every module is parsed (nothing is imported), and every import counts: at the top
of a module, inside a function (lazy), under ``if TYPE_CHECKING`` or through
``importlib.import_module("...")`` with a literal name.
"""

import ast
import textwrap
from pathlib import Path

import pytest

import bt_utils

LAYERS = (
    ("__init__", "validation", "cache", "results", "registry", "protocols"),
    ("data",),
    ("models",),
    ("features",),
    ("encoding",),
    ("downstream",),
    ("viz",),
    ("sweeps", "notebook"),
    ("cli",),
)
"""Units of bt_utils from the bottom up; ``__init__`` is the package itself. A unit may import
its own layer and the layers below it."""

EXTENSION = "demo"
"""The extension: it may import anything, and nothing outside it may import it."""

_RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The unit of a module of the package: its subpackage or top-level module (``__init__`` for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """Absolute module name of a (possibly relative) ``from ... import`` in `module`."""
    if not node.level:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.AST, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import of the package's own modules in `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            for alias in node.names:  # "from pkg import submodule" imports the submodule
                candidate = Path(root.parent, *f"{target}.{alias.name}".split("."))
                submodule = candidate.is_dir() or candidate.with_suffix(".py").is_file()
                found.append((node.lineno, f"{target}.{alias.name}" if submodule else target))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.append((node.lineno, node.args[0].value))
    package = root.name
    return [(line, name) for line, name in found if name == package or name.startswith(package + ".")]


def import_violations(root: Path) -> list[str]:
    """Imports of the package at `root` that point up the layers or into the extension.

    Parameters
    ----------
    root : pathlib.Path
        The package folder (``.../bt_utils``).

    Returns
    -------
    list of str
        ``"<file>:<line>: <module> imports <module> (<reason>)"``, sorted.
    """
    violations = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        source = _unit(module)
        where = f"{path.relative_to(root.parent)}"
        if source != EXTENSION and source not in _RANK:
            violations.append(f"{where}:1: {module} is in no layer (add {source!r} to LAYERS)")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in _imports(tree, module, path.name == "__init__.py", root):
            unit = _unit(target)
            if source == EXTENSION:
                continue
            if unit == EXTENSION:
                reason = "only the extension itself may import it"
            elif unit not in _RANK:
                reason = f"{unit!r} is in no layer"
            elif _RANK[unit] > _RANK[source]:
                reason = f"{unit!r} is above {source!r}"
            else:
                continue
            violations.append(f"{where}:{line}: {module} imports {target} ({reason})")
    return sorted(set(violations))  # one entry per imported module, not per imported name


def test_bt_utils_imports_point_down_the_layers():
    violations = import_violations(Path(bt_utils.__file__).parent)
    assert violations == [], "\n".join(violations)


@pytest.fixture()
def fake_package(tmp_path):
    """A small bt_utils tree with one allowed and one forbidden import of each kind."""
    files = {
        "__init__.py": "",
        "registry.py": "import numpy\n",
        "data/__init__.py": "",
        "data/layout.py": "from ..registry import Registry\nfrom . import other\n",
        "data/other.py": "from bt_utils.data.layout import VoxelLayout\n",
        "data/upward.py": "from ..viz import maps\n",
        "viz/__init__.py": "",
        "viz/maps.py": "from ..data.layout import VoxelLayout\nfrom . import volumes\nimport bt_utils.registry\n",
        "viz/volumes.py": """
            import numpy as np


            def lazy():
                from ..demo.template import sample_layout

                return sample_layout
            """,
        "viz/absolute.py": "import bt_utils.demo.template\n",
        "viz/names.py": "from ..demo.template import sample_layout, template_roi_table\n",
        "viz/package.py": "from .. import demo\n",
        "viz/dynamic.py": "import importlib\nimportlib.import_module('bt_utils.demo')\n",
        "cli.py": "from .viz import maps\nfrom .sweeps import runner\n",
        "demo/__init__.py": "from ..viz import maps\nfrom ..cli import main\n",
        "demo/template.py": "from . import surface\n",
        "demo/surface.py": "",
        "stray.py": "",
    }
    root = tmp_path / "bt_utils"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_checker_finds_each_planted_violation(fake_package):
    assert import_violations(fake_package) == [
        "bt_utils/data/upward.py:1: bt_utils.data.upward imports bt_utils.viz.maps ('viz' is above 'data')",
        "bt_utils/stray.py:1: bt_utils.stray is in no layer (add 'stray' to LAYERS)",
        "bt_utils/viz/absolute.py:1: bt_utils.viz.absolute imports bt_utils.demo.template "
        "(only the extension itself may import it)",
        "bt_utils/viz/dynamic.py:2: bt_utils.viz.dynamic imports bt_utils.demo "
        "(only the extension itself may import it)",
        "bt_utils/viz/names.py:1: bt_utils.viz.names imports bt_utils.demo.template "
        "(only the extension itself may import it)",
        "bt_utils/viz/package.py:1: bt_utils.viz.package imports bt_utils.demo "
        "(only the extension itself may import it)",
        "bt_utils/viz/volumes.py:6: bt_utils.viz.volumes imports bt_utils.demo.template "
        "(only the extension itself may import it)",
    ]
