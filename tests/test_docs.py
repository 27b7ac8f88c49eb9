"""The docs: references from docstrings and the README to docs/ exist, and docstrings stay a minority of the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r'docs/([\w.-]+\.md)(?:(?:,\s*|\s*\(\s*)"([^"]+)")?')
"""``docs/<name>.md``, optionally followed by a quoted section: ``docs/x.md, "Section"`` or ``docs/x.md ("Section")``."""


def docstring_text(path: Path) -> str:
    """Every string constant of a Python file (its docstrings and messages), whitespace collapsed."""
    strings = [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
               and isinstance(node.value, str)]
    return " ".join(" ".join(text.split()) for text in strings)


def headings(path: Path) -> set[str]:
    """The text of every markdown heading of a file."""
    return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}


def broken_references(texts: dict[str, str], docs_dir: Path) -> list[str]:
    """Each reference in ``texts`` (source name -> text) to a missing doc or a missing section of one."""
    broken = []
    for source, text in texts.items():
        for name, section in REFERENCE.findall(text):
            path = docs_dir / name
            if not path.is_file():
                broken.append(f"{source}: docs/{name} does not exist")
            elif section and section not in headings(path):
                broken.append(f"{source}: docs/{name} has no section {section!r}")
    return broken


def test_package_and_readme_reference_existing_docs_and_sections():
    texts = {str(path.relative_to(ROOT)): docstring_text(path) for path in sorted((ROOT / "bt_utils").rglob("*.py"))}
    texts["README.md"] = " ".join((ROOT / "README.md").read_text().split())
    assert sum(len(REFERENCE.findall(text)) for text in texts.values()) > 10  # the check has references to check
    assert broken_references(texts, ROOT / "docs") == []


def test_broken_references_names_missing_docs_and_sections(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Setup\n\ntext\n")
    texts = {"a.py": 'see docs/guide.md ("Setup") and docs/guide.md, "Teardown", and docs/absent.md'}
    assert broken_references(texts, tmp_path) == ["a.py: docs/guide.md has no section 'Teardown'",
                                                 "a.py: docs/absent.md does not exist"]


def docstring_lines(source: str) -> int:
    """Lines of a module's, its classes' and its functions' docstrings (each docstring expression's lines)."""
    lines = 0
    for node in ast.walk(ast.parse(source)):
        documented = isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if documented and ast.get_docstring(node):
            expr = node.body[0]
            lines += expr.end_lineno - expr.lineno + 1
    return lines


def test_docstring_lines_counts_every_kind_of_docstring():
    source = ('"""Module.\n\nMore.\n"""\n\n\ndef f():\n    """One line."""\n\n\n'
              'class C:\n    """Two\n    lines."""\n\n    x = "not a docstring"\n')
    assert docstring_lines(source) == 4 + 1 + 2


def test_package_is_mostly_code_and_no_module_is_long():
    total = docs = 0
    long_modules = []
    for path in sorted((ROOT / "bt_utils").rglob("*.py")):
        source = path.read_text()
        n_lines = len(source.splitlines())
        total += n_lines
        docs += docstring_lines(source)
        if n_lines > 700:
            long_modules.append(f"{path.relative_to(ROOT)}: {n_lines} lines")
    assert docs / total < 0.20, f"docstrings are {docs} of {total} lines ({docs / total:.1%}); the limit is 20 %"
    assert long_modules == []
