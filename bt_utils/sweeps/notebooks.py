"""Execute the suite's notebooks with papermill and render them to HTML."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path

import nbformat
import papermill
from nbconvert import HTMLExporter

from ..results import atomic_path

log = logging.getLogger(__name__)

KERNEL_START_ATTEMPTS = 3
"""Tries in all to start a notebook's kernel that dies before running any cell (e.g. a port taken twice)."""

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
"""The notebooks of a source checkout (``notebooks/`` beside the package); use :func:`default_notebook_dir`."""


def default_notebook_dir() -> Path:
    """The suite's notebook folder, :data:`NOTEBOOK_DIR`, checked to exist (it is not part of a wheel).

    Raises
    ------
    FileNotFoundError
        When ``bt_utils`` was installed without its checkout; the message says how to install it instead.
    """
    if not NOTEBOOK_DIR.is_dir():
        raise FileNotFoundError(
            f"the suite's notebooks folder {NOTEBOOK_DIR} does not exist: bt_utils in {Path(__file__).parent} was "
            "installed without its checkout (from a wheel or a git URL), which leaves out notebooks/ and "
            "papermill_runs/. Install it from a checkout of the repository (`pip install -e <checkout>`), or pass "
            "the notebooks folder of a checkout (notebook_dir=... in Python, --notebooks DIR for `bt sweep`)"
        )
    return NOTEBOOK_DIR


def notebook_path(name: str, notebook_dir: str | os.PathLike | None = None) -> Path:
    """Path of a notebook by name (``"00_data"`` or ``"00_data.ipynb"``) in ``notebook_dir`` (default: the suite's)."""
    folder = Path(notebook_dir) if notebook_dir is not None else default_notebook_dir()
    path = folder / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.ipynb")) if folder.is_dir() else []
        raise FileNotFoundError(f"notebook {name!r} not found in {folder}; available: {available}")
    return path


_REPORT_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- if "widgets" in nb.metadata %}{{ super() }}{% endif -%}{%- endblock -%}
{%- block html_head_js_mathjax -%}{%- if resources.bt_needs_math %}{{ super() }}{% endif -%}{%- endblock -%}
{%- block body_header -%}{{ super() }}
<p class="bt-report-network" style="margin: 0.5em 1em; font-size: 0.85em; color: #616161">{{ resources.bt_network_note }}</p>
{%- if resources.bt_parameters %}
<details class="bt-report-parameters" style="margin: 0.5em 1em; font-size: 0.85em">
<summary>Parameters of this run</summary><table>{% for name, value in resources.bt_parameters %}
<tr><td><code>{{ name | e }}</code></td><td><code>{{ value | e }}</code></td></tr>{% endfor %}</table>
</details>
{%- endif %}
{%- endblock body_header -%}
"""
"""nbconvert's lab template without the scripts a report does not need (require.js without widgets, MathJax
without math), with a note at the top on what the report loads from the network and the run's parameters."""

_MATH = re.compile(r"\$\$|\$[^$\n]+\$|\\\(|\\\[")


def network_needs(notebook: nbformat.NotebookNode) -> list[str]:
    """What an HTML report of ``notebook`` loads from the network, one phrase per need (empty: nothing)."""
    texts = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    texts += [str(output.get("data", {}).get(kind, "")) for cell in notebook.cells for output in cell.get("outputs", [])
              for kind in ("text/markdown", "text/latex")]
    needs = []
    if any(_MATH.search(text) for text in texts):
        needs.append("its math is typeset by MathJax from cdnjs.cloudflare.com (offline it shows as LaTeX source)")
    if any("```mermaid" in text for text in texts):
        needs.append("its diagrams are drawn by mermaid from cdnjs.cloudflare.com (offline they show as text)")
    if "widgets" in notebook.metadata:
        needs.append("its interactive widgets are drawn by the Jupyter widget manager from unpkg.com and "
                     "cdnjs.cloudflare.com (offline they are missing; open the .ipynb in JupyterLab instead)")
    return needs


def render_html(notebook: str | os.PathLike, html_path: str | os.PathLike | None = None,
                show_code: bool = False) -> Path:
    """Render an executed notebook to HTML (atomic): its text, figures and tables, embedded.

    Parameters
    ----------
    html_path : path-like, optional
        Defaults to the notebook's path with suffix ``.html``.
    show_code : bool
        Keep the code cells (input and prompts) in the report.
    """
    notebook = Path(notebook)
    html_path = Path(html_path) if html_path is not None else notebook.with_suffix(".html")
    content = nbformat.read(notebook, as_version=4)
    needs = network_needs(content)
    note = ("Offline report: figures, tables and text are embedded" +
            (f"; from the network: {'; '.join(needs)}." if needs else "; nothing is loaded from the network."))
    exporter = HTMLExporter(template_name="lab", raw_template=_REPORT_TEMPLATE, embed_images=True,
                            exclude_input=not show_code, exclude_output_prompt=not show_code)
    parameters = content.metadata.get("papermill", {}).get("parameters", {})
    resources = {"bt_network_note": note, "bt_needs_math": any(need.startswith("its math") for need in needs),
                 "bt_parameters": [(name, json.dumps(value)) for name, value in parameters.items()]}
    body, _ = exporter.from_notebook_node(content, resources=resources)
    with atomic_path(html_path) as staged:
        staged.write_text(body, encoding="utf-8")
    return html_path


def execute_notebook(
    name: str,
    output_dir: str | os.PathLike,
    parameters: Mapping | None = None,
    html: bool = True,
    notebook_dir: str | os.PathLike | None = None,
    kernel_name: str | None = None,
    show_code: bool = False,
) -> Path:
    """Run a notebook with papermill; save the executed copy (and its HTML) in ``output_dir``.

    Parameters
    ----------
    name : str
        Notebook name, e.g. ``"00_data"``.
    output_dir : path-like
        Folder of the executed notebook, created if needed (relative to the current folder); also the notebook's
        ``output_dir`` parameter unless ``parameters`` sets it.
    parameters : mapping, optional
        Values for the notebook's ``parameters`` cell.
    html : bool
        Also render ``<name>.html`` (:func:`render_html`).
    show_code : bool
        Keep the code cells in the HTML (the report of a failed run always keeps them).

    Returns
    -------
    executed : Path
        The executed notebook.
    """
    source = notebook_path(name, notebook_dir)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"output_dir": str(output_dir), **(parameters or {})}
    executed = output_dir / source.name
    failed = executed.with_suffix(".failed.ipynb")
    log.info("executing %s into %s", source.name, output_dir)
    try:
        _execute_with_retries(source, failed, parameters, kernel_name)
    except BaseException as error:
        log.error("notebook %s failed; partial output kept in %s", source.name, failed)
        if html and isinstance(error, Exception) and failed.is_file():
            _render_failed(failed)
        raise
    os.replace(failed, executed)
    failed.with_suffix(".html").unlink(missing_ok=True)
    if html:
        render_html(executed, show_code=show_code)
    return executed


def _execute_with_retries(source: Path, output: Path, parameters: Mapping, kernel_name: str | None) -> None:
    """papermill's execution of ``source`` into ``output``, retrying a kernel that dies before any cell."""
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                                       cwd=str(source.parent), progress_bar=False)
            return
        except Exception as error:
            if attempt == KERNEL_START_ATTEMPTS or not _died_before_any_cell(error, output):
                raise
            log.warning("the kernel of %s died before running any cell (%s: %s); starting it again (try %d of %d)",
                        source.name, type(error).__name__, error, attempt + 1, KERNEL_START_ATTEMPTS)
            time.sleep(random.uniform(0.5, 2.0))  # apart from a parallel kernel that may take the same ports


def _died_before_any_cell(error: Exception, partial: Path) -> bool:
    """Whether papermill failed before any cell of ``partial`` (its output notebook) started executing."""
    if isinstance(error, papermill.PapermillExecutionError) or not partial.is_file():
        return False
    try:
        cells = nbformat.read(partial, as_version=4).cells
    except Exception:  # noqa: BLE001 - an unreadable partial notebook: not a kernel start to retry
        return False
    return all(cell.metadata.get("papermill", {}).get("start_time") is None for cell in cells)


def _render_failed(failed: Path) -> None:
    """Render a failed run's partial notebook; a rendering problem must not hide the run's error."""
    try:
        render_html(failed, show_code=True)
    except Exception as error:  # noqa: BLE001 - logged; the notebook's own error is re-raised
        log.warning("could not render %s to HTML: %s", failed, error)
