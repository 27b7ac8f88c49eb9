"""Sweeps: papermill runs of the notebooks over a parameter grid (docs/sweeps.md), and their summary."""

from .. import lazy_exports

_EXPORTS = {
    "load_spec": "spec",
    **dict.fromkeys(["run_sweep", "sweep_status"], "runner"),
    **dict.fromkeys(["execute_notebook", "render_html"], "notebooks"),
    **dict.fromkeys(["collect_results", "completed_runs", "impact_summary"], "summary"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
