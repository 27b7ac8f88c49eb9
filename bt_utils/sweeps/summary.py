"""Gather the result tables of a sweep for the summary report.

Only the completed runs of the sweep's current plan (``runs_index.csv``) count, so that no participant is counted
twice; a folder without a runs index is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..encoding.stats import across_subjects
from ..results import read_table
from .state import INDEX_NAME, read_status_file

RESULT_TABLES = {
    "alignment_rois": "alignment_rois.parquet",
    "alignment_tests": "alignment_tests.csv",
    "low_level_impact": "low_level_impact.parquet",
    "downstream": "downstream.parquet",
    "semantic_preference": "semantic_preference.csv",
    "noise_ceiling": "noise_ceiling.parquet",
    "training_log": "training_log.parquet",
}
"""Table name -> file name written by the notebooks."""


def completed_runs(sweep_dir: str | os.PathLike) -> dict[str, dict]:
    """The runs of a sweep's current plan that completed, with their axis values.

    Parameters
    ----------
    sweep_dir : path-like
        The sweep's output folder.

    Returns
    -------
    runs : dict of str to dict
        Run id (the run folder relative to ``sweep_dir``, e.g. ``"02_alignment/DEMO01-whisper-tiny.en-1a2b3c4d"``)
        -> the run's value of each axis its stage varies over (e.g. ``{"subject": "DEMO01", "model":
        "whisper-tiny.en"}``), in the index's order.

    Raises
    ------
    FileNotFoundError
        When ``sweep_dir`` or its runs index does not exist.
    ValueError
        When the index has no ``run_id`` column or a status file is not valid JSON.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist; run the sweep first (bt sweep run SPEC)")
    index = sweep_dir / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(
            f"{sweep_dir} has no {INDEX_NAME}, so it is not a sweep folder and its current runs are unknown; "
            f"run the sweep first (bt sweep run SPEC --out {sweep_dir})"
        )
    planned = pd.read_csv(index)
    if "run_id" not in planned.columns:
        raise ValueError(f"{index} has no run_id column; run the sweep again to rewrite it")
    runs = {}
    for run_id in planned.run_id:
        status = read_status_file(sweep_dir / run_id) or {}  # {}: not started
        if status.get("state") == "completed" and status.get("run_id") == run_id:
            runs[run_id] = dict(status.get("axes") or {})
    return runs


def collect_table(sweep_dir: str | os.PathLike, file_name: str, runs: dict[str, dict] | None = None) -> pd.DataFrame:
    """Concatenate a result table over the completed runs of a sweep's current plan."""
    sweep_dir = Path(sweep_dir)
    tables = []
    for run_id, axes in (completed_runs(sweep_dir) if runs is None else runs).items():
        path = sweep_dir / run_id / file_name
        if not path.is_file():
            continue
        table = read_table(path)
        if table.columns.empty:  # an empty table (e.g. no paired tests in that run)
            continue
        labels = {axis: value for axis, value in axes.items() if axis not in table.columns}
        tables.append(table.assign(**labels, run=run_id))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def collect_results(sweep_dir: str | os.PathLike, runs: dict[str, dict] | None = None) -> dict[str, pd.DataFrame]:
    """Every table of :data:`RESULT_TABLES` gathered by :func:`collect_table` (empty frames for missing ones),
    over ``runs`` (default: :func:`completed_runs`, read once for all tables)."""
    runs = completed_runs(sweep_dir) if runs is None else runs
    return {name: collect_table(sweep_dir, file_name, runs) for name, file_name in RESULT_TABLES.items()}


def impact_summary(impact: pd.DataFrame, feature_set: str = "all") -> pd.DataFrame:
    """Low-level impact per model, variant, layer and ROI, across participants.

    Parameters
    ----------
    impact : DataFrame
        Collected ``low_level_impact.parquet`` tables: ``subject, model, variant, layer, roi, feature_set,
        r_norm_orig, r_norm_resid, drop_pct, drop_status`` (and ``run``).
    feature_set : str
        The low-level feature set to summarise.

    Returns
    -------
    summary : DataFrame
        ``model, variant, layer, roi``; ``mean``, ``sem``, ``n_subjects``: the drop (%) over the participants where
        it is reported; ``n_participants``; ``r_norm_orig``, ``r_norm_resid``: the ROI means before and after
        removing the low-level features, averaged over all participants.

    Raises
    ------
    ValueError
        When rows lack ``drop_status`` (tables written before ROI impacts were drops of the ROI means: the message
        names their runs, to be run again), or no row has ``feature_set``.
    """
    by = ["model", "variant", "layer", "roi"]
    status = impact["drop_status"] if "drop_status" in impact.columns else pd.Series(index=impact.index, dtype=object)
    old = impact[status.isna()]
    if len(old):
        runs = sorted(set(old["run"])) if "run" in old.columns else []
        raise ValueError(f"{len(old)} low-level impact rows have no drop_status: written by an older version, whose "
                         f"ROI drops were not restricted to ROIs aligned above 0; run 03_low_level_impact again "
                         f"for {runs or 'these tables'}")
    rows = impact[impact.feature_set == feature_set]
    if rows.empty:
        raise ValueError(f"no low-level impact rows of feature set {feature_set!r}; feature sets: "
                         f"{sorted(set(impact.feature_set))}")
    drop = across_subjects(rows, "drop_pct", by)
    grouped = rows.groupby(by, sort=True)
    means = grouped[["r_norm_orig", "r_norm_resid"]].mean().join(grouped.subject.nunique().rename("n_participants"))
    summary = drop.merge(means.reset_index(), on=by)
    return summary[[*by, "mean", "sem", "n_subjects", "n_participants", "r_norm_orig", "r_norm_resid"]]


SEEN, HELD_OUT = "seen", "held-out"
"""Roles of a participant for a brain-tuned model: among those it was tuned on, or not."""


def participant_role(subject: str, tuned_on: str) -> str:
    """``"seen"`` if ``subject`` is among ``tuned_on`` (participants joined by ``+``, the alignment tables'
    column), ``"held-out"`` if not, ``""`` when ``tuned_on`` is empty (a model that was not brain-tuned)."""
    if not isinstance(tuned_on, str) or not tuned_on:
        return ""
    return SEEN if subject in tuned_on.split("+") else HELD_OUT


def label_held_out(table: pd.DataFrame) -> pd.DataFrame:
    """Tell apart, in the variant names, the participants a model was tuned on from those it never saw.

    ``table`` has columns ``subject``, ``model``, ``variant`` and ``tuned_on`` (returned as it is without
    ``tuned_on``); returns a copy with ``variant`` relabelled and a column ``participant``
    (:func:`participant_role`).
    """
    if "tuned_on" not in table:
        return table.copy()
    roles = [participant_role(s, t) for s, t in zip(table.subject, table.tuned_on)]
    table = table.assign(participant=roles)
    held_out = table.loc[table.participant == HELD_OUT, ["model", "variant"]]
    mixed = pd.MultiIndex.from_frame(table[["model", "variant"]]).isin(pd.MultiIndex.from_frame(held_out))
    relabel = mixed & (table.participant != "").to_numpy()
    table.loc[relabel, "variant"] = table.variant[relabel] + " (" + table.participant[relabel] + ")"
    return table


def held_out_gains(table: pd.DataFrame, value: str = "r_norm_mean", reference: str = "pretrained",
                   tuned_alone: str = "brain-tuned") -> pd.DataFrame:
    """Scores of brain-tuned models on participants they never saw, against the pretrained model and against a
    model tuned on that participant alone.

    Parameters
    ----------
    table : DataFrame
        Columns ``subject, model, variant, tuned_on, layer, roi`` and ``value`` (the alignment ROI table of a
        sweep, variants not relabelled).
    reference : str
        The variant of the pretrained model.
    tuned_alone : str
        The variant holding each participant's own brain-tuned model; its checkpoint must have been tuned on that
        participant only (rows without a recorded ``tuned_on`` are taken as they are).

    Returns
    -------
    gains : DataFrame
        One row per held-out participant, model, variant, layer and ROI: ``model, variant, tuned_on, subject,
        layer, roi, held_out, reference, tuned_alone, gain_over_reference, gain_over_tuned_alone`` (NaN where the
        participant has no such variant). Empty when no participant was held out.

    Raises
    ------
    ValueError
        A ``tuned_alone`` model of a participant was tuned on other participants.
    """
    keys = ["subject", "model", "layer", "roi"]
    roles = pd.Series([participant_role(s, t) for s, t in zip(table.subject, table.tuned_on)], index=table.index)
    alone = table[table.variant == tuned_alone]
    recorded = alone.tuned_on.fillna("") != ""  # tables written before the column have no record to check
    wrong = alone[recorded & (alone.tuned_on != alone.subject)]
    if len(wrong):
        raise ValueError(f"variant {tuned_alone!r} of {wrong.subject.iloc[0]} was tuned on {wrong.tuned_on.iloc[0]!r}, "
                         f"not on that participant alone; name its own brain-tuned variant (tuned_alone=...)")
    held = table[roles == HELD_OUT][[*keys, "variant", "tuned_on", value]].rename(columns={value: "held_out"})
    for name, rows in (("reference", table[table.variant == reference]), ("tuned_alone", alone)):
        held = held.merge(rows[[*keys, value]].rename(columns={value: name}), on=keys, how="left")
    held["gain_over_reference"] = held.held_out - held.reference
    held["gain_over_tuned_alone"] = held.held_out - held.tuned_alone
    columns = ["model", "variant", "tuned_on", "subject", "layer", "roi", "held_out", "reference", "tuned_alone",
               "gain_over_reference", "gain_over_tuned_alone"]
    return held[columns].sort_values(["model", "variant", "subject", "roi", "layer"], ignore_index=True)
