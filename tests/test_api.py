"""The public API: every exported name resolves, and importing the package loads nothing heavy."""

import importlib
import subprocess
import sys
import types

import pytest

import bt_utils

PACKAGES = ["bt_utils", *(f"bt_utils.{name}" for name in
                          ("data", "models", "features", "encoding", "downstream", "viz", "sweeps"))]
MODULE_EXPORTS = {"bt_utils.viz.plots", *PACKAGES[1:]}
"""Exported names that are modules on purpose."""


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_resolves_to_what_its_module_defines(name):
    package = importlib.import_module(name)
    assert len(package.__all__) == len(set(package.__all__))
    for export in package.__all__:
        value = getattr(package, export)
        if isinstance(value, types.ModuleType):
            assert value.__name__ in MODULE_EXPORTS, f"{name}.{export} is a module"
        elif export != "__version__" and hasattr(value, "__module__") and callable(value):
            assert value.__module__.startswith(name), f"{name}.{export} comes from {value.__module__}"
    assert set(package.__all__) - {"__version__"} <= set(dir(package))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="'bt_utils.encoding' has no attribute 'alignn'"):
        importlib.import_module("bt_utils.encoding").alignn  # noqa: B018
    with pytest.raises(ImportError, match="alignn"):
        exec("from bt_utils.encoding import alignn", {})


def test_importing_the_package_and_its_subpackages_loads_no_heavy_dependency():
    code = ("import sys, bt_utils, " + ", ".join(PACKAGES[1:]) +
            "; print(' '.join(m for m in ('torch', 'transformers', 'cortex', 'pandas', 'numpy', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_subpackages_are_attributes_of_the_package():
    code = "import bt_utils; print(bt_utils.encoding.align.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "bt_utils.encoding.alignment"


def test_the_notebooks_import_functions_from_the_subpackages():
    from bt_utils.encoding import align, model_variants
    from bt_utils.encoding.alignment import align as deep_align

    assert align is deep_align and callable(model_variants)
