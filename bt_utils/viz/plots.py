"""Figures drawn by the notebooks. Every function returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..data.transcripts import Transcript
from ..downstream.asr import ASR_METRIC
from ..models.tuning import POOLED

_METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "micro_f1": "micro-F1", ASR_METRIC: "1 - WER"}
_HATCHES = ("", "//", "..", "xx")


def plot_alignment(
    audio: np.ndarray,
    sample_rate: int,
    transcript: Transcript,
    tr_times: np.ndarray,
    start: float = 0.0,
    stop: float = 20.0,
):
    """Waveform of a story excerpt with its word alignment and the TR grid.

    Parameters
    ----------
    audio : ndarray of shape (n_samples,)
    transcript : Transcript
        Words are drawn as labelled spans.
    tr_times : ndarray of shape (n_trs,)
        TR midpoints relative to sound onset (:meth:`Dataset.tr_times`, at least two); TR boundaries are drawn at
        midpoint +- TR/2, with the TR their spacing, and midpoints as dots.
    start, stop : float
        Excerpt, in seconds.
    """
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}")
    tr_times = np.asarray(tr_times, dtype=float)
    if tr_times.ndim != 1 or len(tr_times) < 2:
        raise ValueError(f"tr_times must hold at least two TR midpoints, got shape {tr_times.shape}")
    half_tr = np.mean(np.diff(tr_times)) / 2
    first, last = int(start * sample_rate), min(len(audio), int(stop * sample_rate))
    time = np.arange(first, last) / sample_rate
    figure, (wave_ax, word_ax) = plt.subplots(
        2, 1, figsize=(12, 4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    wave_ax.plot(time, audio[first:last], lw=0.4, color="0.2")
    edges = np.concatenate([tr_times - half_tr, tr_times[-1:] + half_tr])
    for ax in (wave_ax, word_ax):
        for edge in edges[(edges >= start) & (edges <= stop)]:
            ax.axvline(edge, color="tab:red", lw=0.6, alpha=0.6)
    inside = tr_times[(tr_times >= start) & (tr_times <= stop)]
    wave_ax.plot(inside, np.zeros_like(inside), "o", color="tab:red", ms=4, label="TR midpoints")
    wave_ax.set_ylabel("amplitude")
    wave_ax.legend(loc="upper right")
    for index, word in enumerate(w for w in transcript.words if w.end > start and w.start < stop):
        word_ax.axvspan(word.start, word.end, ymin=0.1, ymax=0.9, color=f"C{index % 2}", alpha=0.3)
        word_ax.text((word.start + word.end) / 2, 0.5, word.label, ha="center", va="center", fontsize=7, rotation=90)
    word_ax.set_yticks([])
    word_ax.set_xlim(start, stop)
    word_ax.set_xlabel("time from sound onset (s); red lines: TR boundaries")
    figure.tight_layout()
    return figure


def plot_carpet(responses: np.ndarray, order: np.ndarray | None = None, title: str = "", clip: float = 3.0):
    """Carpet plot: voxels (rows) by TRs (columns), z-scored per voxel.

    Parameters
    ----------
    responses : ndarray of shape (n_trs, n_voxels)
    order : ndarray of shape (n_voxels,), optional
        Row order, e.g. voxels sorted by noise ceiling.
    clip : float
        Colour range in standard deviations.
    """
    responses = np.asarray(responses, dtype=np.float64)
    std = responses.std(axis=0)
    z = (responses - responses.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if order is not None:
        z = z[:, order]
    figure, ax = plt.subplots(figsize=(12, 4))
    image = ax.imshow(z.T, aspect="auto", cmap="RdBu_r", vmin=-clip, vmax=clip, interpolation="nearest")
    ax.set_xlabel("TR (trimmed)")
    ax.set_ylabel("voxel")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label="z")
    figure.tight_layout()
    return figure


def plot_noise_ceiling(ceiling: np.ndarray, thresholds: dict[str, float], explainable_variance: np.ndarray | None = None):
    """Distribution of ``cc_max`` with selection thresholds (and explainable variance).

    Parameters
    ----------
    ceiling : ndarray of shape (n_voxels,)
    thresholds : dict of str to float
        Named thresholds drawn as vertical lines with the number of voxels above.
    explainable_variance : ndarray of shape (n_voxels,), optional
        Drawn against ``cc_max`` in a second panel.
    """
    n_panels = 1 if explainable_variance is None else 2
    figure, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4), squeeze=False)
    ax = axes[0, 0]
    ax.hist(ceiling, bins=np.linspace(0, 1, 51), color="0.5")
    for index, (name, value) in enumerate(thresholds.items()):
        count = int(np.sum(ceiling > value))
        ax.axvline(value, color=f"C{index}", label=f"{name}: cc_max > {value} ({count} voxels)")
    ax.set_xlabel("cc_max")
    ax.set_ylabel("voxels")
    ax.legend()
    if explainable_variance is not None:
        ax = axes[0, 1]
        ax.scatter(explainable_variance, ceiling, s=3, alpha=0.4)
        ax.set_xlabel("explainable variance (bias-corrected)")
        ax.set_ylabel("cc_max")
    figure.tight_layout()
    return figure


def _class_boxplot(ax, values: np.ndarray, classes: np.ndarray) -> None:
    values, classes = np.asarray(values), np.asarray(classes)
    names = sorted(set(classes.tolist()))
    ax.boxplot([values[(classes == name) & np.isfinite(values)] for name in names], tick_labels=names)


def plot_ceiling_by_class(ceiling: np.ndarray, voxel_class: np.ndarray, true_ceiling: np.ndarray | None = None):
    """Estimated ``cc_max`` (n_voxels,) per planted voxel class (n_voxels,), and against the planted ceiling
    ``true_ceiling`` (n_voxels,) if given.
    """
    classes = sorted(set(voxel_class.tolist()))
    n_panels = 1 if true_ceiling is None else 2
    figure, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4), squeeze=False)
    _class_boxplot(axes[0, 0], ceiling, voxel_class)
    axes[0, 0].set_ylabel("estimated cc_max")
    axes[0, 0].set_title("noise ceiling by planted class")
    if true_ceiling is not None:
        ax = axes[0, 1]
        for index, name in enumerate(classes):
            members = voxel_class == name
            ax.scatter(true_ceiling[members], ceiling[members], s=4, alpha=0.5, color=f"C{index}", label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("planted cc_max")
        ax.set_ylabel("estimated cc_max")
        ax.legend()
    figure.tight_layout()
    return figure


def plot_training_curves(history, best_epoch: int | None = None, title: str = "", steps=None):
    """Training and validation loss against the epochs trained.

    Parameters
    ----------
    history : DataFrame
        Columns ``epoch, split, loss`` and optionally ``subject`` (``training_log.parquet``); one line per split,
        and per participant when there are several (a run tuned on several participants), each point at the end of
        its epoch.
    best_epoch : int, optional
        Marked with a vertical line (the checkpoint kept).
    steps : DataFrame, optional
        Columns ``epoch, step, loss`` (``training_steps.parquet``): the training loss of every step, a thin line.
    """
    figure, ax = plt.subplots(figsize=(6, 4))
    if steps is not None and len(steps):
        per_epoch = steps.groupby("epoch").step.transform("max") + 1
        ax.plot(steps.epoch + (steps.step + 1) / per_epoch, steps.loss, color="0.7", lw=0.8, label="train, per step")
    keys = ["split", "subject"] if "subject" in history and history["subject"].nunique() > 1 else ["split"]
    for key, rows in history.groupby(keys):
        ax.plot(rows.epoch + 1, rows.loss, "o-", label=" ".join(map(str, key)))
    if best_epoch is not None and best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="k", ls="--", lw=0.8, label=f"chosen epoch {best_epoch}")
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    figure.tight_layout()
    return figure


def plot_validation_curves(logs, title: str = ""):
    """Validation loss per epoch of several tuning runs (e.g. brain-tuned and its controls) on one axis, from ``logs``:
    run label -> ``training_log.parquet`` (the pooled validation loss of a run on several participants).
    """
    figure, ax = plt.subplots(figsize=(6, 4))
    for label, history in logs.items():
        rows = history[history.split == "validation"]
        if "subject" in rows and rows.subject.nunique() > 1:
            rows = rows[rows.subject == POOLED]
        ax.plot(rows.epoch + 1, rows.loss, "o-", label=label)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.legend()
    figure.tight_layout()
    return figure


def plot_predictions(measured: np.ndarray, predicted: np.ndarray, voxels, labels=None, correlations=None):
    """Predicted against measured responses of a few voxels over time.

    Parameters
    ----------
    measured, predicted : ndarray of shape (n_trs, n_voxels)
    voxels : sequence of int
        Columns to draw, one panel each.
    labels : sequence of str, optional
        Panel titles (default: the column index).
    correlations : ndarray of shape (n_voxels,), optional
        Shown in the titles.
    """
    voxels = list(voxels)
    figure, axes = plt.subplots(len(voxels), 1, figsize=(10, 1.8 * len(voxels)), sharex=True, squeeze=False)
    for ax, voxel, index in zip(axes[:, 0], voxels, range(len(voxels))):
        ax.plot(measured[:, voxel], color="0.3", lw=1, label="measured")
        ax.plot(predicted[:, voxel], color="tab:orange", lw=1, label="predicted")
        title = labels[index] if labels is not None else f"voxel {voxel}"
        if correlations is not None:
            title += f" (r = {correlations[voxel]:.2f})"
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("validation TR")
    figure.tight_layout()
    return figure


def plot_layer_alignment(summary, rois, value_label: str = "r / cc_max", title: str = ""):
    """Layer-wise alignment per ROI, one line per variant, mean +- s.e.m. across participants.

    Parameters
    ----------
    summary : DataFrame
        ``variant, layer, roi, mean, sem`` (from :func:`bt_utils.encoding.stats.across_subjects`).
    rois : sequence of str
        One panel each, in this order.
    """
    rois = [roi for roi in rois if roi in set(summary.roi)]
    if not rois:
        raise ValueError(f"none of the ROIs is in the summary; it has {sorted(set(summary.roi))}")
    figure, axes = plt.subplots(1, len(rois), figsize=(3.2 * len(rois), 3.4), sharey=True, squeeze=False)
    for ax, roi in zip(axes[0], rois):
        for index, (variant, rows) in enumerate(summary[summary.roi == roi].groupby("variant", sort=False)):
            rows = rows.sort_values("layer")
            ax.errorbar(rows.layer, rows["mean"], yerr=rows["sem"].fillna(0), marker="o", ms=4, capsize=2,
                        color=f"C{index}", label=variant)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(roi)
        ax.set_xlabel("layer")
    axes[0, 0].set_ylabel(value_label)
    axes[0, -1].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_by_class(values, classes, title: str = "", ylabel: str = "r"):
    """Box plot of a voxel-wise value ``values`` (n_voxels,) per planted class ``classes`` (n_voxels,)."""
    figure, ax = plt.subplots(figsize=(5, 3.5))
    _class_boxplot(ax, values, classes)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    figure.tight_layout()
    return figure


def plot_downstream(summary: pd.DataFrame, metric: str = "macro_f1", tasks: Sequence[str] | None = None):
    """Bar chart per task, variants side by side with their confidence intervals (the paper's Figure 4).

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`bt_utils.downstream.probes.summarize`.
    metric : str
        Metric of the probed (classification and multi-label) tasks; ASR tasks show ``one_minus_wer`` (the CTC
        heads).
    tasks : sequence of str, optional
        Tasks and their order (default: as in ``summary``).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per task; a group of bars per model, one bar per variant (and subject); dashed line: chance.
    """
    tasks = list(tasks or summary.task.unique())
    bars = list(dict.fromkeys(zip(summary.variant, summary.subject)))  # a variant tuned on each subject
    colours = dict(zip(dict.fromkeys(summary.variant), plt.get_cmap("tab10").colors))
    models = list(dict.fromkeys(summary.model))
    width = 0.8 / len(bars)
    figure, axes = plt.subplots(1, len(tasks), figsize=(2.2 + 0.5 * len(bars) * len(models) * len(tasks), 3.6),
                                squeeze=False)
    legend = {}
    for ax, task in zip(axes[0], tasks):
        rows = summary[(summary.task == task) & summary.metric.isin([metric, ASR_METRIC])]
        if rows.empty:
            raise ValueError(f"summary has no {metric!r} or {ASR_METRIC!r} rows for task {task!r}")
        for row in rows.itertuples():
            b = bars.index((row.variant, row.subject))
            x = models.index(row.model) - 0.4 + width * (b + 0.5)
            label = f"{row.variant} ({row.subject})" if row.subject else row.variant
            hatch = _HATCHES[[v for v, _ in bars[:b]].count(row.variant) % len(_HATCHES)]  # subjects of a variant
            legend[label] = ax.bar(x, row.value, width, color=colours[row.variant], hatch=hatch, edgecolor="white")
            ax.errorbar(x, row.value, yerr=[[row.value - row.ci_low], [row.ci_high - row.value]], color="black",
                        capsize=3, linewidth=1)
        chance = rows.chance.dropna()
        if len(chance):
            legend["chance"] = ax.axhline(chance.mean(), color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(_METRIC_NAMES[rows.metric.iloc[0]])
        ax.set_ylim(0, 1.05)
    figure.legend(legend.values(), legend.keys(), loc="upper center", ncol=len(legend), frameon=False,
                  bbox_to_anchor=(0.5, 1.08))
    figure.tight_layout()
    return figure


def plot_layer_selection(selection: pd.DataFrame):
    """Validation score of each layer's probe or CTC head (mean over seeds), one panel per task, one line per
    variant.

    Parameters
    ----------
    selection : pandas.DataFrame
        :attr:`bt_utils.downstream.probes.DownstreamResults.selection`.

    Returns
    -------
    matplotlib.figure.Figure
        Chosen layers are marked with a dot per seed.
    """
    tasks = list(selection.task.unique())
    if not tasks:
        raise ValueError("selection is empty: no task was evaluated")
    figure, axes = plt.subplots(1, len(tasks), figsize=(1.5 + 3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = selection[selection.task == task]
        asr = rows.wer.notna().all()
        rows = rows.assign(score=1 - rows.wer if asr else rows.macro_f1)
        for (model, variant, subject), group in rows.groupby(["model", "variant", "subject"], sort=False):
            label = " ".join(part for part in (model, variant, subject) if part)
            mean = group.groupby("layer").score.mean()
            line, = ax.plot(mean.index, mean.to_numpy(), marker="", label=label)
            chosen = group[group.chosen]
            ax.scatter(chosen.layer, chosen.score, color=line.get_color(), s=18, zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("layer (0 = input of layer 1)")
        ax.set_ylabel("validation 1 - WER" if asr else "validation macro-F1")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure
